"""The evaluation as a Prefect task: one shard of benchmark cases run and judged for one
model label, committed as shard `shard_id` of the eval table's stage `stage`.

Cases travel by value (a shard is tens of cases, a few kilobytes each), so a worker on
another node needs no access to the benchmark's files. A shard already committed is
returned as it is and calls no model.
"""

from __future__ import annotations

from autosafe_core.evaluation.benchmarks import BenchmarkCase, benchmark
from autosafe_core.evaluation.run_cases import CaseModels, EvalConfig, run_cases
from autosafe_core.store import Run, ShardRef
from tasks.common import already, catalog, commit_result, role_models, shard_task
from tasks.engines import EngineRef

TABLE = "eval"
AGENT_ROLES = ("agent", "simulator", "evaluator")


@shard_task("eval")
async def eval_shard(
    run: Run,
    stage: str,
    shard_id: str,
    cases: list[BenchmarkCase],
    label: str,
    cfg: EvalConfig,
    engines: dict[str, EngineRef],
) -> ShardRef:
    """The rows of `cases` for model `label`; `engines` has an evaluator, and agent and simulator
    for benchmarks that roll the agent out."""
    done = already(run, TABLE, stage, shard_id)
    if done is not None:
        return done
    models = role_models(engines, tuple(r for r in AGENT_ROLES if r in engines))
    # A benchmark not run in the simulated environment (the sandboxed terminal) brings its own runner.
    runner = (benchmark(cases[0].benchmark).run_cases if cases else None) or run_cases
    result = await runner(
        cases,
        CaseModels(evaluator=models["evaluator"], agent=models.get("agent"), simulator=models.get("simulator")),
        cfg,
        catalog(),
        stage=stage,
        label=label,
    )
    counters = {f"{stage}.{name}": value for name, value in result.counters.items()}
    return commit_result(run, TABLE, stage, shard_id, result, models, counters)


eval_shard = eval_shard.with_options(task_run_name="eval-{stage}-{shard_id}")
