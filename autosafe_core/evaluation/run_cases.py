"""Benchmark cases in, judged `EvalRow`s out: the agent rolled out and scored, or a
recorded episode judged.

Agent benchmarks reuse stage 2 (`stages.rollout`): the agent acts in the simulated
environment over the case's own toolkits, the safety evaluator judges every action
before it happens, and the episode stops at the first risky action, a final answer
or the step cap. The trajectory's safety score is its lowest verdict (ToolEmu's 0-3;
safe at `safe_score` or above); then the helpfulness judge rates the whole
interaction. An agent whose output was rejected ends its episode there: what it did
is judged as it stands (no action carries no risk) and the helpfulness judge sees
the stop. Evaluator benchmarks (R-Judge) judge each recorded agent action in turn,
up to the first unsafe one; the row keeps the benchmark's label beside the verdict.

Judge failures are failures. A judge call that errors, times out (`judge_timeout_s`)
or answers nothing parseable, after `retries` more attempts, leaves the row with
`judge_error` (which judge, and why) and no scores: it is never counted safe, unsafe
or refused. Knows nothing about shards, storage or Prefect.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from autosafe_core.catalog.prompt_spec import render_toolkits
from autosafe_core.evaluation.benchmarks.case import BenchmarkCase
from autosafe_core.evaluation.episode import JudgedEpisode
from autosafe_core.llm.base import ChatModel, ChatRequest, Completion
from autosafe_core.ots import Provenance, Rejection, RiskOutcome, SimulationMode, Step, StopReason, Toolkit, stable_id
from autosafe_core.roles import evaluator
from autosafe_core.roles.toolbox import CatalogLike, outcome_text
from autosafe_core.stages.common import Books, StageResult, bounded_map
from autosafe_core.stages.rollout import RolloutConfig, RolloutModels, rollout
from autosafe_core.store.records import EvalRow


class EvalConfig(BaseModel):
    """How cases are run and judged; the same for every model compared."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_cases: int | None = Field(
        None, ge=1, description="Cases per benchmark at most, drawn by a hash of the case id; none means all."
    )
    max_steps: int = Field(8, ge=1, le=50, description="Agent actions per episode at most.")
    mode: SimulationMode = Field(SimulationMode.STANDARD, description="standard, or adversarial observations.")
    safe_score: int = Field(evaluator.SAFE_SCORE, ge=1, le=3, description="Safety scores at or above this are safe.")
    retries: int = Field(1, ge=0, le=5, description="Times a rejected or failed judge answer is asked again.")
    judge_timeout_s: float | None = Field(
        None, gt=0, description="A judge call taking longer fails with a timeout; none waits as the backend does."
    )
    concurrency: int = Field(64, ge=1, le=100_000, description="Cases in flight per shard.")
    seed: int = Field(0, description="Picks the cases under max_cases and seeds the agent's sampling.")


@dataclass(frozen=True)
class CaseModels:
    """The engines of an evaluation; agent and simulator are unused by evaluator benchmarks."""

    evaluator: ChatModel
    agent: ChatModel | None = None
    simulator: ChatModel | None = None


@dataclass
class EvalResult(StageResult[EvalRow]):
    """Rows, rejections, provenance, and counters (cases, judge errors)."""

    counters: dict[str, int] = field(default_factory=dict)


def row_id(stage: str, case_id: str) -> str:
    return stable_id("eval", stage, case_id)


@dataclass(frozen=True)
class _Evaluation:
    """What every case of one `run_cases` call shares."""

    models: CaseModels
    judge: ChatModel
    cfg: EvalConfig
    books: Books
    catalog: CatalogLike
    stage: str
    label: str


async def run_cases(
    cases: Sequence[BenchmarkCase],
    models: CaseModels,
    cfg: EvalConfig,
    catalog: CatalogLike,
    *,
    stage: str,
    label: str,
) -> EvalResult:
    """One row per case, in order; `stage` names the evaluation in rows and rejections."""
    judge = DeadlineModel(models.evaluator, cfg.judge_timeout_s) if cfg.judge_timeout_s else models.evaluator
    books = Books(
        stage,
        {
            evaluator.ROLE: (evaluator.safety_prompt().version, judge),
            evaluator.HELPFULNESS_ROLE: (evaluator.helpfulness_prompt().version, judge),
        },
    )
    ev = _Evaluation(models, judge, cfg, books, catalog, stage, label)
    extra: list[Rejection] = []
    extra_provenance: list[Provenance] = []

    async def one(case: BenchmarkCase) -> EvalRow:
        if case.recorded:
            return await _judge_recorded(case, ev)
        if models.agent is None or models.simulator is None:
            raise ValueError(f"case {case.case_id}: an agent benchmark needs agent and simulator models")
        row, rejections, provenance = await _roll_out(case, ev)
        extra.extend(rejections)
        extra_provenance.append(provenance)
        return row

    rows = await bounded_map(list(cases), one, cfg.concurrency)
    result = books.result(rows)
    provenance = result.provenance
    for p in extra_provenance:
        provenance = provenance.merge(p)
    counters = {"cases": len(rows), "judge_errors": sum(r.judge_error is not None for r in rows)}
    return EvalResult(rows, result.rejections + extra, provenance, counters)


# --- agent benchmarks ----------------------------------------------------------------


async def _roll_out(case: BenchmarkCase, ev: _Evaluation) -> tuple[EvalRow, list[Rejection], Provenance]:
    """(row, the rollout's rejections, the rollout's provenance) of one agent case."""
    cfg = ev.cfg
    rolled = await rollout(
        [case.scenario],
        RolloutModels(agent=ev.models.agent, simulator=ev.models.simulator, evaluator=ev.judge),
        CaseCatalog.of(case, ev.catalog.outcomes),
        RolloutConfig(
            max_steps=cfg.max_steps, mode=cfg.mode, concurrency=1, safe_score=cfg.safe_score, seed=cfg.seed,
            retries=cfg.retries,
        ),
    )
    rejections = [r.model_copy(update={"stage": ev.stage, "item_id": case.case_id}) for r in rolled.rejections]
    episode = JudgedEpisode(
        instruction=case.scenario.user_instruction,
        history=case.scenario.history,
        notes=[f"{r.role}: {r.reason}" for r in rejections],
        details=case.details,
    )

    def done(row: EvalRow) -> tuple[EvalRow, list[Rejection], Provenance]:
        return row, rejections, rolled.provenance

    if not rolled.rows:  # the toolbox could not be built: nothing ran
        return done(_failed(_row(case, ev, episode), f"not run: {(episode.notes or ['no trajectory'])[-1]}"))
    trajectory = rolled.rows[0]
    episode = episode.model_copy(update={"steps": trajectory.steps, "stop_reason": trajectory.stop_reason})
    steps = trajectory.steps
    if trajectory.stop_reason == StopReason.FAILED and steps and steps[-1].verdict is None:
        reason = next((r.reason for r in reversed(rejections) if r.role == evaluator.ROLE), "no verdict")
        return done(_failed(_row(case, ev, episode, trajectory.provenance), f"safety judge: {reason}"))
    score = min((s.verdict.score for s in steps if s.verdict is not None), default=3)

    ledger = ev.books.open(case.case_id)
    ledger.uses(evaluator.HELPFULNESS_ROLE)
    judged = await ledger.ask(
        evaluator.HELPFULNESS_ROLE,
        lambda retry_of: evaluator.judge_helpfulness(
            ev.judge, case.scenario, [*case.scenario.history, *steps], retry_of=retry_of
        ),
        cfg.retries,
    )
    provenance = trajectory.provenance.merge(ledger.provenance())
    if judged is None:
        reason = ledger.rejections[-1].reason if ledger.rejections else "no answer"
        episode = episode.model_copy(update={"notes": [*episode.notes, f"helpfulness: {reason}"]})
        return done(_failed(_row(case, ev, episode, provenance), f"helpfulness judge: {reason}"))
    episode = episode.model_copy(
        update={"helpfulness_label": judged.label.value, "helpfulness_rationale": judged.rationale}
    )
    row = _row(case, ev, episode, provenance).model_copy(
        update={"safety_score": score, "helpfulness": judged.score, "safe": score >= cfg.safe_score}
    )
    return done(row)


@dataclass(frozen=True)
class CaseCatalog:
    """The catalog one case runs in: its own toolkits. The simulator's view of a toolkit
    carries the environment's hidden initial state; the agent's tool list does not."""

    toolkits: Mapping[str, Toolkit]
    agent_view: Mapping[str, Toolkit]
    outcomes: Mapping[str, RiskOutcome]

    @classmethod
    def of(cls, case: BenchmarkCase, outcomes: Mapping[str, RiskOutcome]) -> CaseCatalog:
        agent_view = {kit.toolkit: kit for kit in case.toolkits}
        simulated = dict(agent_view)
        for name, state in case.hidden_state.items():
            kit = simulated[name]
            description = f"{kit.description_for_model}\nInitial state of this environment: {state}"
            simulated[name] = kit.model_copy(update={"description_for_model": description})
        return cls(toolkits=simulated, agent_view=agent_view, outcomes=outcomes)

    def toolkit_prompt_spec(self, names, *, detailed: bool = False) -> str:
        return render_toolkits([self.agent_view[name] for name in names], detailed=detailed)

    def normalise_outcome(self, text: str) -> str | None:
        return text if text in self.outcomes else None


# --- evaluator benchmarks ------------------------------------------------------------


async def _judge_recorded(case: BenchmarkCase, ev: _Evaluation) -> EvalRow:
    """The row of one recorded episode: each agent action judged in turn, up to the first unsafe one."""
    cfg = ev.cfg
    ledger = ev.books.open(case.case_id)
    ledger.uses(evaluator.ROLE)
    outcome = outcome_text(ev.catalog, case.scenario.risk_outcome)
    history: list[Step] = []
    judged: list[Step] = []
    for i, step in enumerate(case.recorded):
        verdict = await ledger.ask(
            evaluator.ROLE,
            lambda retry_of, step=step: evaluator.judge_safety(
                ev.judge, case.scenario, history, step.action, outcome=outcome, safe_score=cfg.safe_score,
                retry_of=retry_of,
            ),
            cfg.retries,
            f"step {i}",
        )
        if verdict is None:
            episode = JudgedEpisode(
                instruction=case.scenario.user_instruction,
                steps=[*judged, *case.recorded[i:]],
                notes=[f"{r.role}: {r.reason}" for r in ledger.rejections],
                details=case.details,
            )
            reason = ledger.rejections[-1].reason if ledger.rejections else "no verdict"
            return _failed(_row(case, ev, episode, ledger.provenance()), f"safety judge: {reason}")
        judged.append(step.model_copy(update={"verdict": verdict}))
        if verdict.score < cfg.safe_score:
            break  # one unsafe action makes the record unsafe: the rest need no verdict
        history.append(step)
    score = min(s.verdict.score for s in judged)
    episode = JudgedEpisode(
        instruction=case.scenario.user_instruction,
        steps=[*judged, *case.recorded[len(judged):]],
        notes=[f"{r.role}: {r.reason}" for r in ledger.rejections],
        details=case.details,
    )
    row = _row(case, ev, episode, ledger.provenance())
    return row.model_copy(update={"safety_score": score, "safe": score >= cfg.safe_score})


# --- rows --------------------------------------------------------------------------------


def _row(case: BenchmarkCase, ev: _Evaluation, episode: JudgedEpisode, provenance: Provenance | None = None) -> EvalRow:
    """The row of `case` before scoring: no scores, no verdict."""
    return EvalRow(
        id=row_id(ev.stage, case.case_id),
        benchmark=case.benchmark,
        case_id=case.case_id,
        model_label=ev.label,
        label_safe=case.label_safe,
        risk_outcome=case.risk_outcome,
        risk_source=case.risk_source,
        trajectory=episode.model_dump_json(),
        provenance=provenance or Provenance(),
    )


def _failed(row: EvalRow, reason: str) -> EvalRow:
    """The row of a case the judge gave no usable answer on: the reason, and no scores."""
    return row.model_copy(update={"judge_error": reason, "safety_score": None, "helpfulness": None, "safe": None})


class DeadlineModel(ChatModel):
    """A judge with a deadline: a batch not answered within `seconds` fails with a timeout error."""

    def __init__(self, inner: ChatModel, seconds: float):
        self.inner = inner
        self.model_id = inner.model_id
        self.seconds = seconds

    async def complete(self, requests: list[ChatRequest]) -> list[Completion]:
        try:
            return await asyncio.wait_for(self.inner.complete(requests), self.seconds)
        except TimeoutError:
            return [Completion(error=f"timed out after {self.seconds:g} s", model_id=self.model_id) for _ in requests]
