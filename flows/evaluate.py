"""The evaluate flow: a benchmark's cases run and judged for the base agent and, when a
fine-tuned adapter is known, for the tuned agent: the same cases, simulator and judge.

The factory calls `evaluate_flow(config)` after fine-tuning: the run's held-out
synthetic scenarios, with the adapter the run's fine-tuning registered in its manifest
(`extra["training"]["adapter"]`), if any. `autosafe eval` runs the same flow on any
benchmark, with `--data` and `--adapter`. Each label's cases are cut into shards of
`shard_size`, one task each, committed to the run's `eval` table under a stage named
by what decides the rows (`evaluation.evaluations`), so a re-run skips what is
committed and a crashed run redoes only its missing shards. The evaluation is then
recorded in the manifest and summarised (`eval_summary`): headline figures and the HTML
report (`runs/<run_id>/reports/eval-<benchmark>.html`) recorded with it, and a markdown
artifact in the Prefect UI. A report that fails is recorded as `report_error`; the rows
stay.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture

from autosafe_core.evaluation.benchmarks import Benchmark, CaseSet, Source, benchmark
from autosafe_core.evaluation.evaluations import Evaluation, LabelRun, record_evaluation
from autosafe_core.evaluation.run_cases import EvalConfig
from autosafe_core.llm.registry import ModelSpec
from autosafe_core.roles import prompt_versions
from autosafe_core.store import (
    Run,
    RunManifest,
    committed,
    committed_shards,
    config_hash,
    read_manifest,
    update_manifest,
)
from autosafe_core.store.location import join
from flows.config import FactoryConfig
from flows.eval_summary import publish_evaluation, summarise
from flows.pipeline import ShardsFailed, make_run
from tasks.common import catalog
from tasks.engines import EngineRef, engines
from tasks.evaluate import TABLE, eval_shard

BASE = "base"
TUNED = "tuned"
EVALUATOR = "evaluator"
"""The label of an evaluator benchmark's rows: the judge is what is scored."""


@flow(name="evaluate", flow_run_name="evaluate-{benchmark_name}-{config.run_id}")
def evaluate_flow(
    config: FactoryConfig,
    benchmark_name: str = "synthetic",
    data: str | None = None,
    adapter: str | None = None,
    settings: EvalConfig | None = None,
) -> RunManifest:
    """Evaluate the run's agent on a benchmark: base, and tuned when an adapter is given or registered.

    data: the benchmark's file or folder (public benchmarks). adapter: the tuned agent's LoRA
    adapter (path or URI); default: the one the run's fine-tuning registered.
    settings: how cases are run; default: the run's `evaluation` settings.
    """
    settings = settings or config.evaluation
    bench = benchmark(benchmark_name)
    run = make_run(config)
    started = time.monotonic()
    loaded = load_cases(bench, config, run, data).sample(settings.max_cases, settings.seed)
    if read_manifest(run) is None:
        update_manifest(run, config=config.content())  # a run evaluated before any data: keep its models
    adapter = adapter or registered_adapter(read_manifest(run), config)
    specs = label_specs(bench, config, adapter)
    stages = {label: stage_name(bench, label, loaded, settings, config, spec) for label, spec in specs.items()}
    shards = case_shards(loaded, config.shard_size)
    log = get_run_logger()
    log.info("evaluate %s on run %s: %d cases (%s), labels %s", bench.name, run.run_id, len(loaded.cases),
             loaded.origin, ", ".join(specs))
    if not loaded.cases:
        log.warning("evaluate %s on run %s: no cases to evaluate (%s)", bench.name, run.run_id, loaded.origin)
    failed: dict[str, list[str]] = {}
    todo = {label: [s for s in shards if s[0] not in committed_shards(run, TABLE, stages[label])] for label in specs}
    if any(todo.values()):
        with engines(_engine_specs(config, specs, bench), _placement(config), config.engine_replicas) as started_refs:
            futures = {
                (label, shard_id): eval_shard.submit(
                    run, stages[label], shard_id, cases, label, settings, _role_refs(started_refs, label, bench)
                )
                for label in specs
                for shard_id, cases in todo[label]
            }
            for key, future in futures.items():
                _wait(future, key, failed)
    evaluation = Evaluation(
        benchmark=bench.name,
        kind=bench.kind,
        origin=loaded.origin,
        cases=len(loaded.cases),
        fingerprint=loaded.fingerprint(),
        settings=settings.model_dump(mode="json"),
        skipped=dict(loaded.skipped),
        unmapped_outcomes=dict(loaded.unmapped_outcomes),
        labels={label: _label_run(run, label, stages[label], spec, config, failed) for label, spec in specs.items()},
        finished_at=datetime.now(UTC),
    )
    record_evaluation(run, evaluation)  # the rows are on record before anything reads them
    evaluation = summarise(run, evaluation, log)
    manifest = record_evaluation(run, evaluation)
    publish_evaluation(run.run_id, evaluation, log)
    log.info("evaluate %s on run %s: %.1f s, %s", bench.name, run.run_id, time.monotonic() - started,
             ", ".join(f"{k} {v.rows} rows ({v.judge_errors} judge errors)" for k, v in evaluation.labels.items()))
    if failed:
        count = sum(len(v) for v in failed.values())
        raise ShardsFailed(
            f"run {run.run_id}: {count} eval shard(s) of {bench.name} failed (first: {next(iter(failed.values()))[0]}); "
            "committed shards are kept: run the evaluation again to redo the rest"
        )
    return manifest


def launch(
    config: FactoryConfig, benchmark_name: str, data: str | None, adapter: str | None, settings: EvalConfig
) -> RunManifest:
    """Run the evaluate flow on the task runner the config names (needs a Prefect API: see runtime)."""
    from flows.runtime import task_runner

    runner = task_runner(config.runner, config.ray_address)
    return evaluate_flow.with_options(task_runner=runner)(config, benchmark_name, data, adapter, settings)


def load_cases(bench: Benchmark, config: FactoryConfig, run: Run, data: str | None) -> CaseSet:
    """The benchmark's cases: from `data`, or (synthetic) the run's test split."""
    source = Source(
        catalog=catalog(),
        data=Path(data).expanduser() if data else None,
        run=run,
        split=config.dataset.split,
        split_seed=config.dataset.split_seed,
    )
    return bench.load(source)


def registered_adapter(manifest: RunManifest | None, config: FactoryConfig) -> str | None:
    """The adapter the run's fine-tuning registered (`extra["training"]["adapter"]`), as a URI.

    A relative path is read as relative to the run's storage root. A full fine-tune
    (`model` instead of `adapter`) is not picked up: evaluate it as the agent's model.
    """
    if manifest is None:
        return None
    training = manifest.extra.get("training") or {}
    adapter = training.get("adapter") if isinstance(training, dict) else None
    if not isinstance(adapter, str) or not adapter.strip():
        return None
    if "://" in adapter or adapter.startswith(("/", "~")):
        return adapter
    return join(config.storage.uri, adapter)


def label_specs(bench: Benchmark, config: FactoryConfig, adapter: str | None) -> dict[str, ModelSpec | None]:
    """The agent of each model label: base, and tuned with the adapter; None for an evaluator benchmark."""
    if bench.kind == "evaluator":
        return {EVALUATOR: None}
    base = config.models.for_role("agent")
    specs: dict[str, ModelSpec | None] = {BASE: base}
    if adapter:
        specs[TUNED] = base.model_copy(update={"adapter": adapter})
    return specs


def stage_name(
    bench: Benchmark, label: str, cases: CaseSet, settings: EvalConfig, config: FactoryConfig, agent: ModelSpec | None
) -> str:
    """`<benchmark>.<label>.<key>`: the key hashes the cases, settings, prompts and models that decide the rows."""
    key = config_hash(
        {
            "cases": cases.fingerprint(),
            # The cases stand for max_cases; concurrency changes nothing but speed.
            "settings": settings.model_dump(mode="json", exclude={"concurrency", "max_cases"}),
            "prompts": prompt_versions(),
            "agent": agent.key if agent is not None else None,
            "simulator": config.models.for_role("simulator").key if agent is not None else None,
            "evaluator": config.models.for_role("evaluator").key,
        }
    )
    return f"{bench.name}.{label}.{key[:12]}"


def case_shards(cases: CaseSet, size: int) -> list[tuple[str, list]]:
    """(shard id, cases) in order, `size` cases a shard."""
    return [(f"{i // size:05d}", cases.cases[i : i + size]) for i in range(0, len(cases.cases), size)]


def _engine_specs(config: FactoryConfig, specs: dict[str, ModelSpec | None], bench: Benchmark) -> dict[str, ModelSpec]:
    out = {"evaluator": config.models.for_role("evaluator")}
    if bench.kind == "agent":
        out["simulator"] = config.models.for_role("simulator")
        out.update({f"agent.{label}": spec for label, spec in specs.items() if spec is not None})
    return out


def _role_refs(refs: dict[str, EngineRef], label: str, bench: Benchmark) -> dict[str, EngineRef]:
    if bench.kind == "evaluator":
        return {"evaluator": refs["evaluator"]}
    return {"agent": refs[f"agent.{label}"], "simulator": refs["simulator"], "evaluator": refs["evaluator"]}


def _placement(config: FactoryConfig) -> str:
    """Engines in Ray actors when the run is on a started Ray (the CLI's runner, or the factory's); else here."""
    if config.runner != "ray":
        return "local"
    import ray

    return "ray" if ray.is_initialized() else "local"


def _wait(future: PrefectFuture, key: tuple[str, str], failed: dict[str, list[str]]) -> None:
    """Wait for one (label, shard) task; a failure is noted in `failed` by label."""
    try:
        future.result()
    except Exception as exc:  # the task failed after its retries; the others go on
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        failed.setdefault(key[0], []).append(f"{key[1]}: {reason}")


def _label_run(
    run: Run, label: str, stage: str, spec: ModelSpec | None, config: FactoryConfig, failed: dict[str, list[str]]
) -> LabelRun:
    refs = committed(run, TABLE, stages=[stage])
    agent = "" if spec is None else spec.model + (f"+{Path(spec.adapter.rstrip('/')).name}" if spec.adapter else "")
    return LabelRun(
        stage=stage,
        agent=agent,
        adapter=spec.adapter if spec is not None else None,
        evaluator=config.models.for_role("evaluator").model,
        shards=len(refs),
        rows=sum(r.rows for r in refs),
        judge_errors=sum(r.counters.get(f"{stage}.judge_errors", 0) for r in refs),
        failed_shards=failed.get(label, []),
    )
