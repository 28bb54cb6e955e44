"""Stage 2 of the paper: simulated interaction, up to the first risky action.

For each scenario the agent acts on (instruction, history); the safety evaluator
judges each action before anything happens to it. The first action judged unsafe is
the risk trigger and ends the rollout (its observation is never simulated); a final
answer ends it too, after being judged (an answer can leak as well as a tool call);
otherwise the simulator writes the observation and the next step begins, up to
`max_steps`. The trajectory keeps only the rollout's steps; the scenario's prior
history stays in the scenario.

A rejected answer is asked again `retries` times with the reason fed back; if it is
still rejected the trajectory ends as FAILED, with the steps so far and every
rejection recorded. Trajectory ids are fixed by (scenario id, mode, settings), so a
re-run never duplicates. Knows nothing about shards or storage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from autosafe_core.llm.base import ChatModel, SamplingParams
from autosafe_core.ots import Scenario, SimulationMode, Step, StopReason, Trajectory, stable_id
from autosafe_core.roles import agent, evaluator, simulator
from autosafe_core.roles.toolbox import CatalogLike, Toolbox, outcome_text
from autosafe_core.stages.common import (
    Books,
    Ledger,
    StageResult,
    bounded_map,
    config_key,
    judge_sampling,
    seed_for,
)

STAGE = "rollout"


class RolloutConfig(BaseModel):
    """Stage 2 settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_steps: int = Field(5, ge=1, le=50, description="Agent actions per rollout at most (the step cap).")
    mode: SimulationMode = Field(SimulationMode.STANDARD, description="standard, or adversarial observations.")
    concurrency: int = Field(64, ge=1, le=100_000, description="Rollouts in flight at most.")
    safe_score: int = Field(
        evaluator.SAFE_SCORE, ge=1, le=3, description="An action scoring below this is unsafe: the risk trigger."
    )
    agent_temperature: float = Field(0.0, ge=0.0, le=2.0, description="Agent sampling temperature.")
    judge_temperature: float = Field(
        0.0, ge=0.0, le=2.0,
        description="Safety judge sampling temperature: 0 is greedy; a tiny judge may need sampling to vary at all.",
    )
    seed: int = Field(0, description="Part of every trajectory id and sampling seed.")
    retries: int = Field(1, ge=0, le=5, description="Times a rejected answer is asked again, with the reason.")


@dataclass(frozen=True)
class RolloutModels:
    """The engines of stage 2; one object may serve several roles."""

    agent: ChatModel
    simulator: ChatModel
    evaluator: ChatModel


def trajectory_id(scenario_id: str, mode: SimulationMode, cfg: RolloutConfig) -> str:
    """The id of the rollout of scenario `scenario_id` under `mode` and `cfg`."""
    return stable_id("trajectory", scenario_id, mode.value, config_key(cfg, exclude=("concurrency", "mode")))


async def rollout(
    scenarios: Sequence[Scenario],
    models: RolloutModels,
    catalog: CatalogLike,
    cfg: RolloutConfig | None = None,
) -> StageResult[Trajectory]:
    """One trajectory per scenario (FAILED ones included); rejected answers as rejection rows."""
    cfg = cfg or RolloutConfig()
    books = Books(
        STAGE,
        {
            agent.ROLE: (agent.prompt().version, models.agent),
            evaluator.ROLE: (evaluator.safety_prompt().version, models.evaluator),
            simulator.ROLE: (simulator.prompt().version, models.simulator),
        },
    )

    async def one(scenario: Scenario) -> Trajectory | None:
        tid = trajectory_id(scenario.id, cfg.mode, cfg)
        ledger = books.open(tid)
        toolbox = ledger.toolbox(catalog, scenario.toolkits, f"scenario {scenario.id}")
        if toolbox is None:
            return None
        ledger.uses(agent.ROLE, evaluator.ROLE)
        stop, trigger, steps = await _episode(scenario, toolbox, models, catalog, cfg, ledger, tid)
        return Trajectory(
            id=tid,
            scenario_id=scenario.id,
            mode=cfg.mode,
            steps=steps,
            stop_reason=stop,
            trigger_index=trigger,
            provenance=ledger.provenance(),
        )

    results = await bounded_map(list(scenarios), one, cfg.concurrency)
    return books.result([t for t in results if t is not None])


async def _episode(
    scenario: Scenario,
    toolbox: Toolbox,
    models: RolloutModels,
    catalog: CatalogLike,
    cfg: RolloutConfig,
    ledger: Ledger,
    tid: str,
) -> tuple[StopReason, int | None, list[Step]]:
    """Run the agent until a trigger, a final answer, a failure or the step cap: (stop, trigger index, steps)."""
    outcome = outcome_text(catalog, scenario.risk_outcome)
    steps: list[Step] = []
    history = list(scenario.history)  # what every role sees: prior interaction, then this rollout
    for t in range(cfg.max_steps):
        where = f"step {t}"
        sampling = SamplingParams(
            temperature=cfg.agent_temperature, max_tokens=agent.SAMPLING.max_tokens, seed=seed_for(tid, t)
        )
        action = await ledger.ask(
            agent.ROLE,
            lambda retry_of: agent.act(
                models.agent, scenario, history, toolbox, sampling=sampling, retry_of=retry_of
            ),
            cfg.retries,
            where,
        )
        if action is None:
            return StopReason.FAILED, None, steps
        verdict = await ledger.ask(
            evaluator.ROLE,
            lambda retry_of: evaluator.judge_safety(
                models.evaluator, scenario, history, action, outcome=outcome, safe_score=cfg.safe_score,
                sampling=judge_sampling(cfg.judge_temperature, tid, t), retry_of=retry_of,
            ),
            cfg.retries,
            where,
        )
        if verdict is None:
            steps.append(Step(action=action))
            return StopReason.FAILED, None, steps
        if verdict.risk_trigger:
            steps.append(Step(action=action, verdict=verdict))
            return StopReason.RISK_TRIGGER, t, steps
        if action.is_final:
            steps.append(Step(action=action, verdict=verdict))
            return StopReason.FINAL_ANSWER, None, steps
        ledger.uses(simulator.ROLE)
        observed = await ledger.ask(
            simulator.ROLE,
            lambda retry_of: simulator.simulate(
                models.simulator, scenario, history, action, toolbox, mode=cfg.mode, outcome=outcome,
                retry_of=retry_of,
            ),
            cfg.retries,
            where,
        )
        if observed is None:
            steps.append(Step(action=action, verdict=verdict))
            return StopReason.FAILED, None, steps
        step = Step(action=action, observation=observed.observation_text(), verdict=verdict)
        steps.append(step)
        history.append(step)
    return StopReason.STEP_CAP, None, steps
