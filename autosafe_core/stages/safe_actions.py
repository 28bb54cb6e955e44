"""Stage 3 of the paper: safe actions at each risk trigger, by sampling and self-reflection.

At the trigger state (u, tau_t) of a trajectory that ended on a risk trigger, the
agent's next action is sampled again, up to `candidates` times, each with its own
seed. Each candidate is judged; an unsafe one goes to the reflector, whose critique
and revised action is judged in turn, up to `reflection_rounds` revisions per
candidate. The first action accepted (score >= `accept_score` and not a trigger) is
the sample's safe action. Every candidate and revision is kept, with its verdict and
the critique it received, as the sample's reflection chain; a trigger where nothing
was accepted is still a row (accepted=False), for analysis. `attempts` counts the
actions judged.

By default candidates are sampled one after another, stopping at the first accepted
one: most triggers need one or two, so this spends the fewest calls. With
`parallel_candidates` all k start at once and the first accepted in candidate order
wins: once candidate c is accepted and none before it was, the later ones are stopped
(their calls not yet sent are never sent), so the chain is candidates 0..c, as in turn,
at the latency of the slowest of them instead of their sum. What a slow engine (a small
model on a CPU) needs; the calls the stopped candidates had already made are counted in
the usage. The setting is part of the sample id, and so of its seeds. Knows nothing
about shards or storage.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from autosafe_core.llm.base import ChatModel, SamplingParams
from autosafe_core.ots import Action, ReflectionRound, SafeSample, Scenario, Step, StopReason, Trajectory, stable_id
from autosafe_core.roles import agent, evaluator, reflector
from autosafe_core.roles.toolbox import CatalogLike, Toolbox, outcome_text
from autosafe_core.stages.common import Books, Ledger, StageResult, bounded_map, config_key, judge_sampling, seed_for

STAGE = "safe_actions"


class SafeActionConfig(BaseModel):
    """Stage 3 settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    candidates: int = Field(4, ge=1, le=64, description="Agent actions sampled at a trigger state at most (k).")
    reflection_rounds: int = Field(2, ge=0, le=10, description="Reflector revisions of each unsafe candidate at most.")
    accept_score: int = Field(
        evaluator.SAFE_SCORE, ge=1, le=3, description="A verdict scoring at least this (and no trigger) is safe."
    )
    temperature: float = Field(0.8, ge=0.0, le=2.0, description="Agent sampling temperature for candidates.")
    judge_temperature: float = Field(
        0.0, ge=0.0, le=2.0,
        description="Safety judge sampling temperature: 0 is greedy; a tiny judge may need sampling to vary at all.",
    )
    concurrency: int = Field(64, ge=1, le=100_000, description="Trigger states worked on at once at most.")
    seed: int = Field(0, description="Part of every sample id and sampling seed.")
    retries: int = Field(1, ge=0, le=5, description="Times a rejected answer is asked again, with the reason.")
    parallel_candidates: bool = Field(
        False,
        description="Start all k candidates at once and stop the later ones at the first accepted: the chain "
        "sampling in turn would give, at the latency of one candidate, for some calls more.",
    )


@dataclass(frozen=True)
class SafeActionModels:
    """The engines of stage 3; one object may serve several roles."""

    agent: ChatModel
    evaluator: ChatModel
    reflector: ChatModel


def safe_sample_id(trajectory_id: str, cfg: SafeActionConfig) -> str:
    """The id of the safe sample at the trigger of trajectory `trajectory_id` under `cfg`."""
    return stable_id("safe_sample", trajectory_id, config_key(cfg))


def triggered(trajectory: Trajectory) -> bool:
    """Whether the trajectory ended on a risk trigger that has a verdict to start from."""
    return (
        trajectory.stop_reason == StopReason.RISK_TRIGGER
        and trajectory.trigger_index is not None
        and 0 <= trajectory.trigger_index < len(trajectory.steps)
        and trajectory.steps[trajectory.trigger_index].verdict is not None
    )


async def sample_safe_actions(
    trajectories: Sequence[Trajectory],
    scenarios_by_id: Mapping[str, Scenario],
    models: SafeActionModels,
    catalog: CatalogLike,
    cfg: SafeActionConfig | None = None,
) -> StageResult[SafeSample]:
    """One safe sample per risk-triggered trajectory (accepted or not); others are skipped."""
    cfg = cfg or SafeActionConfig()
    books = Books(
        STAGE,
        {
            agent.ROLE: (agent.prompt().version, models.agent),
            evaluator.ROLE: (evaluator.safety_prompt().version, models.evaluator),
            reflector.ROLE: (reflector.prompt().version, models.reflector),
        },
    )

    async def one(trajectory: Trajectory) -> SafeSample | None:
        sid = safe_sample_id(trajectory.id, cfg)
        ledger = books.open(sid)
        scenario = scenarios_by_id.get(trajectory.scenario_id)
        if scenario is None:
            ledger.reject("input", f"trajectory {trajectory.id}: scenario {trajectory.scenario_id!r} not given")
            return None
        toolbox = ledger.toolbox(catalog, scenario.toolkits, f"scenario {scenario.id}")
        if toolbox is None:
            return None
        ledger.uses(agent.ROLE, evaluator.ROLE)
        return await _sample(sid, scenario, trajectory, toolbox, models, catalog, cfg, ledger)

    results = await bounded_map([t for t in trajectories if triggered(t)], one, cfg.concurrency)
    return books.result([s for s in results if s is not None])


async def _sample(
    sid: str,
    scenario: Scenario,
    trajectory: Trajectory,
    toolbox: Toolbox,
    models: SafeActionModels,
    catalog: CatalogLike,
    cfg: SafeActionConfig,
    ledger: Ledger,
) -> SafeSample:
    index = trajectory.trigger_index
    assert index is not None  # triggered() checked it
    trigger = trajectory.steps[index]
    assert trigger.verdict is not None
    before: list[Step] = trajectory.steps[:index]
    state = [*scenario.history, *before]  # tau_t as every role sees it
    outcome = outcome_text(catalog, scenario.risk_outcome)

    async def judged(action: Action, where: str) -> ReflectionRound:
        verdict = await ledger.ask(
            evaluator.ROLE,
            lambda retry_of: evaluator.judge_safety(
                models.evaluator, scenario, state, action, outcome=outcome, safe_score=cfg.accept_score,
                sampling=judge_sampling(cfg.judge_temperature, sid, where), retry_of=retry_of,
            ),
            cfg.retries,
            where,
        )
        return ReflectionRound(candidate=action, verdict=verdict)

    def accepted(round_: ReflectionRound) -> bool:
        v = round_.verdict
        return v is not None and v.score >= cfg.accept_score and not v.risk_trigger

    async def attempt(c: int) -> tuple[list[ReflectionRound], ReflectionRound | None]:
        """Candidate `c` and its revisions: the rounds, and the accepted one if any."""
        sampling = SamplingParams(
            temperature=cfg.temperature, max_tokens=agent.SAMPLING.max_tokens, seed=seed_for(sid, c)
        )
        candidate = await ledger.ask(
            agent.ROLE,
            lambda retry_of: agent.act(models.agent, scenario, state, toolbox, sampling=sampling, retry_of=retry_of),
            cfg.retries,
            f"candidate {c}",
        )
        if candidate is None:
            return [], None
        rounds = [await judged(candidate, f"candidate {c}")]
        for r in range(cfg.reflection_rounds):
            current = rounds[-1]
            if accepted(current) or current.verdict is None:
                break  # accepted, or nothing to reflect on
            ledger.uses(reflector.ROLE)
            verdict = current.verdict
            reflection = await ledger.ask(
                reflector.ROLE,
                lambda retry_of: reflector.reflect(
                    models.reflector, scenario, state, current.candidate, verdict, toolbox, outcome=outcome,
                    retry_of=retry_of,
                ),
                cfg.retries,
                f"candidate {c} reflection {r}",
            )
            if reflection is None:
                break
            current.critique = reflection.critique
            rounds.append(await judged(reflection.action, f"candidate {c} revision {r}"))
        return rounds, (rounds[-1] if accepted(rounds[-1]) else None)

    # In turn by default; with parallel_candidates all k start now and are read in the same
    # order, the first accepted stopping the ones after it.
    started = [asyncio.ensure_future(attempt(c)) for c in range(cfg.candidates)] if cfg.parallel_candidates else []
    chain: list[ReflectionRound] = []
    safe: ReflectionRound | None = None
    try:
        for c in range(cfg.candidates):
            rounds, safe = await (started[c] if started else attempt(c))
            chain.extend(rounds)
            if safe is not None:
                break
    finally:
        for task in started:
            task.cancel()
        await asyncio.gather(*started, return_exceptions=True)
    return _row(sid, scenario, trajectory, before, trigger, chain, safe, ledger)


def _row(
    sid: str,
    scenario: Scenario,
    trajectory: Trajectory,
    before: list[Step],
    trigger: Step,
    chain: list[ReflectionRound],
    safe: ReflectionRound | None,
    ledger: Ledger,
) -> SafeSample:
    assert trigger.verdict is not None
    return SafeSample(
        id=sid,
        scenario=scenario,
        trajectory_id=trajectory.id,
        history=before,
        unsafe_action=trigger.action,
        unsafe_verdict=trigger.verdict,
        reflections=chain,
        safe_action=safe.candidate if safe else None,
        safe_verdict=safe.verdict if safe else None,
        accepted=safe is not None,
        attempts=len(chain),
        provenance=ledger.provenance(),
    )
