"""The row models of the tables that are not an OTS model as it is.

A trajectory is stored one row per step (`TrajectoryStepRow`), keyed by trajectory id,
so a query can look at single actions without unpacking episodes; `trajectory_rows`
and `trajectories_from_rows` are exact inverses. `DatasetRow` is one SFT example and
`EvalRow` one judged benchmark case. Like the OTS models, these are pydantic models
whose Arrow schemas `autosafe_core.rows` derives. This module knows nothing about files.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from pydantic import Field

from autosafe_core.ots import (
    Action,
    Provenance,
    Record,
    RiskSource,
    SimulationMode,
    Step,
    StopReason,
    Trajectory,
    Verdict,
    stable_id,
)


class TrajectoryStepRow(Record):
    """One step of a trajectory, with the trajectory's own fields repeated on each row.

    A trajectory without steps (a rollout that failed before its first action) keeps
    one row with `step_index` None, so it is not lost.
    """

    id: str = Field(description="stable_id(trajectory_id, step_index)")
    trajectory_id: str
    scenario_id: str
    step_index: int | None = None
    mode: SimulationMode
    stop_reason: StopReason
    trigger_index: int | None = None
    action: Action | None = None
    observation: str | None = None
    verdict: Verdict | None = None
    provenance: Provenance = Field(default_factory=Provenance, description="The trajectory's, on every row.")


def trajectory_rows(trajectory: Trajectory) -> list[TrajectoryStepRow]:
    """The rows of one trajectory, in step order."""
    common = dict(
        trajectory_id=trajectory.id,
        scenario_id=trajectory.scenario_id,
        mode=trajectory.mode,
        stop_reason=trajectory.stop_reason,
        trigger_index=trajectory.trigger_index,
        provenance=trajectory.provenance,
    )
    if not trajectory.steps:
        return [TrajectoryStepRow(id=stable_id(trajectory.id, None), step_index=None, **common)]
    return [
        TrajectoryStepRow(
            id=stable_id(trajectory.id, i),
            step_index=i,
            action=step.action,
            observation=step.observation,
            verdict=step.verdict,
            **common,
        )
        for i, step in enumerate(trajectory.steps)
    ]


def trajectories_from_rows(rows: Iterable[TrajectoryStepRow]) -> list[Trajectory]:
    """Trajectories in order of first appearance, steps sorted by index."""
    groups: dict[str, list[TrajectoryStepRow]] = {}
    for row in rows:
        groups.setdefault(row.trajectory_id, []).append(row)
    out = []
    for trajectory_id, group in groups.items():
        first = group[0]
        steps = sorted((r for r in group if r.step_index is not None), key=lambda r: r.step_index)
        for r in steps:
            if r.action is None:
                raise ValueError(f"trajectory {trajectory_id} step {r.step_index}: action is missing")
        out.append(
            Trajectory(
                id=trajectory_id,
                scenario_id=first.scenario_id,
                mode=first.mode,
                stop_reason=first.stop_reason,
                trigger_index=first.trigger_index,
                steps=[Step(action=r.action, observation=r.observation, verdict=r.verdict) for r in steps],
                provenance=first.provenance,
            )
        )
    return out


class Split(StrEnum):
    TRAIN = "train"
    VALIDATION = "validation"
    TEST = "test"


class ChatMessage(Record):
    """One chat turn of an SFT example."""

    role: str = Field(pattern=r"^(system|user|assistant|tool)$")
    content: str


class DatasetRow(Record):
    """One SFT example: the chat up to the trigger state, and the safe action to learn."""

    id: str
    safe_sample_id: str
    scenario_id: str
    split: Split
    risk_outcome: str
    risk_source: RiskSource
    messages: list[ChatMessage] = Field(min_length=1, description="The prompt turns, before the target.")
    target: str = Field(min_length=1, description="The safe action as the assistant's text; the loss is on it.")
    provenance: Provenance = Field(default_factory=Provenance)


class EvalRow(Record):
    """One judged case of a benchmark, for one model (e.g. "base" or "tuned")."""

    id: str
    benchmark: str
    case_id: str
    model_label: str
    safety_score: int | None = Field(None, ge=0, le=3)
    helpfulness: int | None = Field(None, ge=0, le=3)
    safe: bool | None = None
    judge_error: str | None = Field(None, description="Why the judge gave no score, when it gave none.")
    label_safe: bool | None = Field(
        None, description="The benchmark's own safe/unsafe label, where it has one (R-Judge scores the judge against it)."
    )
    risk_outcome: str | None = None
    risk_source: RiskSource | None = None
    trajectory: str = Field("", description="The judged episode as JSON text (ours or the benchmark's).")
    provenance: Provenance = Field(default_factory=Provenance)


class TrainingStepRow(Record):
    """One optimizer step of a fine-tuning job: its loss and throughput (the `training` table)."""

    id: str = Field(description="stable_id(train_id, step)")
    train_id: str = Field(description="The job: what it learns from what (autosafe_core.training.config).")
    step: int = Field(ge=1)
    epoch: float = Field(ge=0, description="Examples consumed over examples per epoch.")
    loss: float = Field(description="Mean loss on target tokens over the step's micro-batches and processes.")
    learning_rate: float
    grad_norm: float | None = None
    tokens: int = Field(ge=0, description="Tokens processed in the step (padding excluded), all processes.")
    target_tokens: int = Field(ge=0, description="Of which carry the loss.")
    seconds: float = Field(ge=0, description="Wall time of the step.")
    tokens_per_s: float = Field(ge=0)
    tokens_per_s_per_device: float = Field(ge=0)
    devices: int = Field(ge=1, description="Training processes (GPUs, or CPU processes).")
    peak_memory_gb: float | None = Field(None, description="Peak accelerator memory of the first process so far.")


class FingerprintRow(Record):
    """What a run's dataset remembers of one kept sample for later runs' dedup (the `fingerprints` table).

    A later run (the nightly's next night) compares its samples against these instead of
    reading and embedding every earlier sample again. They hold only when they were made
    the way the later run would make them: `compare` and `embedder` say how.
    """

    id: str = Field(description="The safe sample's id.")
    content_hash: str = Field(description="Hash of the normalised training text (exact dedup).")
    embedding: list[float] | None = Field(None, description="Unit vector of the training text; None without embeddings.")
    compare: list[str] = Field(description="The parts of the sample that made the text (DedupConfig.compare).")
    embedder: str = Field("", description="The embedding model ('' without embeddings).")
