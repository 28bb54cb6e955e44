"""The terminal benchmark for the eval flow: the sandboxed terminal tasks as cases, and a
runner of the case runner's shape.

A terminal case is not simulated: its agent acts in a real sandbox and is judged by
the end state as well as the evaluator (`evaluation.terminal_eval`). So besides
`load`, this module has `run_cases`, with the signature of
`evaluation.run_cases.run_cases`, for the flow to call on this benchmark's cases in
place of the simulated case runner. `--data` may name a task file in the packaged
format; without it the packaged tasks are used. Each case carries its whole task in
`details["task"]`, so a worker needs no file, and the case set's fingerprint changes
with any task's setup or checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from autosafe_core.evaluation.benchmarks.case import BenchmarkCase, BenchmarkInputError, CaseSet, Source
from autosafe_core.evaluation.terminal_tasks import PACKAGED, TerminalTask, TerminalTaskError, load_tasks
from autosafe_core.roles.toolbox import CatalogLike

if TYPE_CHECKING:  # the case runner imports the benchmark registry, which imports this module
    from autosafe_core.evaluation.run_cases import CaseModels, EvalConfig, EvalResult

TOOLKIT = "Terminal"  # terminal_eval.TOOLKIT (that module imports the case runner)

NAME = "terminal"


def load(source: Source) -> CaseSet:
    """The tasks of `source.data` (a task file), or the packaged ones, as cases."""
    try:
        tasks = load_tasks(source.data)
    except TerminalTaskError as exc:
        raise BenchmarkInputError(str(exc)) from None
    if TOOLKIT not in source.catalog.toolkits:
        raise BenchmarkInputError(f"benchmark terminal needs the {TOOLKIT!r} toolkit in the catalog")
    toolkit = source.catalog.toolkits[TOOLKIT]
    cases = [
        BenchmarkCase(
            benchmark=NAME,
            case_id=task.id,
            scenario=task.scenario(),
            toolkits=[toolkit],
            risk_outcome=task.risk_outcome if task.risk_outcome in source.catalog.outcomes else None,
            risk_source=task.risk_source,
            details={"task": task.model_dump(mode="json")},
        )
        for task in tasks
    ]
    origin = str(source.data) if source.data is not None else f"packaged {PACKAGED}"
    return CaseSet(benchmark=NAME, cases=cases, origin=f"{origin}: {len(cases)} tasks")


async def run_cases(
    cases: Sequence[BenchmarkCase],
    models: CaseModels,
    cfg: EvalConfig,
    catalog: CatalogLike,
    *,
    stage: str,
    label: str,
) -> EvalResult:
    """One row per case, each task run in a sandbox; ids and rejections named by `stage`, as the case runner's."""
    from autosafe_core.evaluation.run_cases import EvalResult, row_id
    from autosafe_core.evaluation.terminal_eval import TerminalEvalConfig, TerminalModels, evaluate_terminal

    if models.agent is None:
        raise ValueError("the terminal benchmark needs an agent model")
    tasks = [TerminalTask.model_validate(case.details["task"]) for case in cases]
    settings = TerminalEvalConfig(
        max_steps=cfg.max_steps,
        retries=cfg.retries,
        safe_score=cfg.safe_score,
        seed=cfg.seed,
        judge_timeout_s=cfg.judge_timeout_s,
        concurrency=cfg.concurrency,
    )
    result = await evaluate_terminal(
        tasks, TerminalModels(agent=models.agent, evaluator=models.evaluator), catalog, settings, model_label=label
    )
    case_of = {row.id: row.case_id for row in result.rows}
    rows = [row.model_copy(update={"id": row_id(stage, row.case_id)}) for row in result.rows]
    rejections = [
        r.model_copy(update={"stage": stage, "item_id": case_of.get(r.item_id, r.item_id)}) for r in result.rejections
    ]
    counters = {"cases": len(rows), "judge_errors": sum(r.judge_error is not None for r in rows)}
    return EvalResult(rows, rejections, result.provenance, counters)
