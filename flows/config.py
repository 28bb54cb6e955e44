"""The typed parameters of a factory run: validated once, at the edge, then passed down.

Every field has a description and a default, so the same model drives the CLI's
`--config FILE`, the flows' signatures and the Prefect UI's run form. Values that name
catalog entries (toolkits, risk outcomes) are checked against the catalog in
`check_against`, which names the offending field.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from autosafe_core.evaluation.run_cases import EvalConfig
from autosafe_core.llm.registry import ModelSpec
from autosafe_core.ots import RiskSource
from autosafe_core.stages.generate import GenerateConfig
from autosafe_core.stages.rollout import RolloutConfig
from autosafe_core.stages.safe_actions import SafeActionConfig
from autosafe_core.store.location import StorageConfig
from autosafe_core.training.config import TrainingConfig
from tasks.dataset import DatasetConfig
from tasks.generate import Grid

ROLES = ("generator", "agent", "simulator", "evaluator", "reflector")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


EMBEDDED_JUDGE_TEMPERATURE = 0.8
"""The embedded default's safety-judge temperature. Greedy, SmolLM2-135M gives nearly every
action the same label (10 of 12 "likely_severe_risk", measured), so no safe action is ever
accepted and the quickstart's dataset stays empty; sampled at 0.8, 3 of 12 came out safe.
The judge still decides; its verdicts are seeded, so re-runs repeat them."""


def new_run_id() -> str:
    return datetime.now(UTC).strftime("run-%Y%m%d-%H%M%S")


class ModelsConfig(BaseModel):
    """One model spec per role; a role left unset uses `default`."""

    model_config = ConfigDict(extra="forbid")
    default: ModelSpec = Field(default_factory=ModelSpec, description="Engine for every role not set below.")
    generator: ModelSpec | None = Field(None, description="Writes risk scenarios.")
    agent: ModelSpec | None = Field(None, description="The agent under training.")
    simulator: ModelSpec | None = Field(None, description="Emulates tool observations.")
    evaluator: ModelSpec | None = Field(None, description="Judges the safety of actions.")
    reflector: ModelSpec | None = Field(None, description="Critiques unsafe actions and re-drafts them.")

    def for_role(self, role: str) -> ModelSpec:
        return getattr(self, role) or self.default

    def by_role(self) -> dict[str, ModelSpec]:
        return {role: self.for_role(role) for role in ROLES}


class FactoryConfig(BaseModel):
    """Everything a factory run needs; defaults are the embedded default (laptop, SmolLM2)."""

    model_config = ConfigDict(extra="forbid")

    run_id: str = Field(default_factory=new_run_id, description="Re-using a run id resumes that run.")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="Where every table goes.")
    scenarios: int = Field(6, ge=1, le=10_000_000, description="Number of risk scenarios to generate.")
    toolkits: list[str] = Field(default_factory=list, description="Toolkit names; empty means all.")
    risk_outcomes: list[str] = Field(default_factory=list, description="Risk outcome ids; empty means all.")
    risk_sources: list[RiskSource] = Field(default_factory=list, description="Risk sources; empty means all.")
    toolkits_per_cell: int = Field(1, ge=1, le=4, description="Toolkits combined in one scenario.")
    shard_size: int = Field(25, ge=1, le=100_000, description="Scenarios per shard (Prefect's unit of work).")
    concurrency: int = Field(64, ge=1, le=100_000, description="Model calls in flight per shard.")
    runner: Literal["ray", "threads"] = Field("ray", description="Task runner for shards.")
    ray_address: str | None = Field(None, description="An existing Ray cluster; none starts a local Ray.")
    engine_replicas: int = Field(1, ge=1, description="Engine replicas per distinct model (one per GPU).")
    models: ModelsConfig = Field(default_factory=ModelsConfig, description="Model per role.")
    generate: GenerateConfig = Field(default_factory=GenerateConfig, description="Stage 1 settings.")
    rollout: RolloutConfig = Field(
        default_factory=lambda: RolloutConfig(judge_temperature=EMBEDDED_JUDGE_TEMPERATURE),
        description="Stage 2 settings. The default samples the safety judge (see EMBEDDED_JUDGE_TEMPERATURE); "
        "set judge_temperature 0 with a capable judge.",
    )
    safe_actions: SafeActionConfig = Field(
        default_factory=lambda: SafeActionConfig(
            reflection_rounds=1, parallel_candidates=True, judge_temperature=EMBEDDED_JUDGE_TEMPERATURE
        ),
        description="Stage 3 settings. The default is sized for a small model on a CPU: the k candidates "
        "at once, one reflection round each, a sampled judge.",
    )
    dataset: DatasetConfig = Field(
        default_factory=lambda: DatasetConfig(split=(0.7, 0.1, 0.2)),
        description="Quality filter, dedup, split. The default holds out a fifth of the scenarios for the "
        "evaluation, so that a small run has some.",
    )
    finetune: bool = Field(True, description="Run the fine-tune flow after the dataset (when available).")
    training: TrainingConfig = Field(
        default_factory=TrainingConfig,
        description="How the fine-tune flow tunes the agent. The default is a short LoRA sized for the CPU "
        "quickstart (max_steps auto: 8 steps on a CPU, the epochs on GPUs).",
    )
    evaluate: bool = Field(True, description="Run the evaluate flow after fine-tuning (when available).")
    evaluation: EvalConfig = Field(
        default_factory=lambda: EvalConfig(max_cases=8, max_steps=3),
        description="How the evaluate flow runs the held-out cases. The default is sized for a small model on "
        "a CPU: at most 8 cases, 3 agent steps each; set max_cases to null for the whole test split.",
    )

    @field_validator("run_id")
    @classmethod
    def _run_id_shape(cls, v: str) -> str:
        if not _RUN_ID.match(v):
            raise ValueError("letters, digits, '.', '_' and '-' only, 1-64 characters")
        return v

    def check_against(self, catalog) -> None:
        """Raise ValueError naming the field when a name is not in the catalog."""
        for i, name in enumerate(self.toolkits):
            if name not in catalog.toolkits:
                raise ValueError(f"toolkits[{i}]: unknown toolkit {name!r}")
        for i, name in enumerate(self.risk_outcomes):
            if name not in catalog.outcomes:
                raise ValueError(f"risk_outcomes[{i}]: unknown risk outcome {name!r}")

    def shards(self) -> list[tuple[str, int, int]]:
        """(shard id, first scenario, end) of every shard: the same on every re-run."""
        count = -(-self.scenarios // self.shard_size)
        return [
            (f"{i:05d}", i * self.shard_size, min(self.scenarios, (i + 1) * self.shard_size)) for i in range(count)
        ]

    def grid(self) -> Grid:
        return Grid(
            toolkits=self.toolkits,
            risk_outcomes=self.risk_outcomes,
            risk_sources=self.risk_sources,
            toolkits_per_cell=self.toolkits_per_cell,
        )

    def content(self) -> dict:
        """The settings that decide what the run's rows are (not where or how fast): the
        run's config hash is of these, so resuming with other storage or runners is fine."""
        data = self.model_dump(mode="json", exclude=_NOT_CONTENT)
        for section in ("generate", "rollout", "safe_actions"):
            data[section].pop("concurrency", None)
        return data

    def stage_configs(self) -> tuple[GenerateConfig, RolloutConfig, SafeActionConfig]:
        """The stage settings, with the run's concurrency per shard."""
        update = {"concurrency": self.concurrency}
        return (
            self.generate.model_copy(update=update),
            self.rollout.model_copy(update=update),
            self.safe_actions.model_copy(update=update),
        )


# Evaluation and training settings do not change the run's data; the eval table keys its rows by
# them instead, and a training job's folder is named by its own settings (train_id).
_NOT_CONTENT = {
    "run_id", "storage", "runner", "ray_address", "engine_replicas", "concurrency", "finetune", "evaluate", "evaluation",
    "training",
}


def load_config_file(path: Path) -> dict:
    """The mapping in a YAML or JSON config file (validated by the caller)."""
    data = yaml.safe_load(path.read_text())
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level must be a mapping")
    return data
