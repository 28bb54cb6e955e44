"""What a fine-tuning job is: the user's `TrainingConfig`, and the resolved `TrainJob` a launcher hands
to every process of the training entry point.

`TrainingConfig` is the typed section `training` of a factory run (defaults: a short LoRA that fits
the embedded default's CPU quickstart; the `auto` values switch to GPU settings where a GPU is
present). `TrainJob` adds what the launcher resolved: the base model's weights, where the examples
are, where checkpoints and the adapter go, and the DeepSpeed config as data, so that a worker on
another machine needs nothing but the job. `train_id` is the identity of a job: the same job
resumes its checkpoints, another one trains into its own folder.

This module knows nothing about flows, launchers or torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from autosafe_core.store.location import StorageConfig
from autosafe_core.store.run import Run, config_hash

DEEPSPEED_DIR = Path(__file__).resolve().parents[2] / "infra" / "deepspeed"
"""The shipped ZeRO configs: `zero2.json`, `zero3.json`."""

RESOLVED = "deepspeed_resolved"
"""Validation context key: the job is being read where its DeepSpeed config is already resolved."""

CPU_STEPS = 8
"""Optimizer steps of `max_steps="auto"` on a CPU: the quickstart's short LoRA."""


class TrainingConfig(BaseModel):
    """Supervised fine-tuning of the agent on the run's safe-action dataset (D_safe)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_model: str | None = Field(
        None,
        description="Weights to tune: a local directory or a model id. None: the run's agent model "
        "(its transformers or vllm spec).",
    )
    method: Literal["lora", "full"] = Field("lora", description="LoRA adapter, or full fine-tuning.")
    lora_rank: int = Field(16, ge=1, le=1024, description="LoRA rank r.")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha (the update is scaled by alpha / r).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input; 0 is fastest.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Modules that get LoRA: names like q_proj, or all-linear (every linear but the head)."
    )
    deepspeed: str = Field(
        "zero2",
        description="zero2 or zero3 (infra/deepspeed/<name>.json), or the path of a DeepSpeed JSON config. "
        "Batch sizes, clipping and bf16 left as 'auto' there are filled from this config.",
    )
    max_seq_length: int = Field(
        2048, ge=16, description="Tokens per example at most; longer prompts lose their oldest tokens, never the target."
    )
    micro_batch_size: int | Literal["auto"] = Field(
        "auto",
        description="Examples per device per forward pass. auto: 1 on a CPU; on a GPU the largest of 8, 4, 2, 1 "
        "that fits without gradient checkpointing (training/memory.py), kept for the job's resumes.",
    )
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    epochs: float = Field(1.0, gt=0, description="Passes over the mixed dataset (when max_steps is None).")
    max_steps: int | Literal["auto"] | None = Field(
        "auto",
        description=f"Optimizer steps to run. auto: {CPU_STEPS} on a CPU (a short LoRA for the quickstart), "
        "the epochs on GPUs; None: the epochs.",
    )
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate (AdamW).")
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="Decay after warm-up.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of the steps spent warming up linearly.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping by global norm; 0 turns it off.")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 on GPUs, fp32 on a CPU.")
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto",
        description="Recompute activations in the backward pass (a third more compute). auto: off on a CPU; "
        "on a GPU only when the job's estimated peak memory without it would not fit (training/memory.py).",
    )
    compile_layers: bool = Field(
        False,
        description="torch.compile each decoder layer (regional compilation: one compiled block serves every "
        "layer, its elementwise work fused into fewer kernels); the first step pays the compile. ZeRO-0 to 2.",
    )
    save_steps: int = Field(200, ge=1, description="Checkpoint every this many optimizer steps, and at the end.")
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept in storage (the newest).")
    general_data: str | None = Field(
        None,
        description="A general instruction set to mix in: a Parquet or JSONL file (local or fsspec URI) of "
        "chat `messages` (the last an assistant turn), or prompt/response or instruction/input/output columns.",
    )
    general_ratio: float = Field(
        0.0, ge=0, lt=1, description="Share of general examples in the mix (0.2: one in five); needs general_data."
    )
    shuffle_buffer: int = Field(10_000, ge=1, description="Examples held for the streaming shuffle.")
    seed: int = Field(0, description="Seed of the shuffle, the LoRA init and dropout.")
    processes: int | None = Field(
        None, ge=1, description="Training processes (one per GPU). None: every GPU here (or in the Ray cluster), 1 on a CPU."
    )
    launcher: Literal["torchrun", "deepspeed"] = Field(
        "torchrun", description="Local launcher of the processes (Ray Train is used when the run has a ray_address)."
    )

    @model_validator(mode="after")
    def _general_needs_data(self) -> TrainingConfig:
        if self.general_ratio > 0 and not self.general_data:
            raise ValueError("general_ratio > 0 needs general_data")
        return self

    @field_validator("max_steps")
    @classmethod
    def _positive_steps(cls, v: int | str | None) -> int | str | None:
        if isinstance(v, int) and v < 1:
            raise ValueError("must be at least 1 (or auto, or null for the epochs)")
        return v

    @field_validator("micro_batch_size")
    @classmethod
    def _positive_micro_batch(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("must be at least 1 (or auto)")
        return v

    @field_validator("deepspeed")
    @classmethod
    def _known_deepspeed(cls, v: str, info: ValidationInfo) -> str:
        # A job read by a worker carries its DeepSpeed config resolved; the name need not resolve there.
        if not (info.context or {}).get(RESOLVED):
            deepspeed_config(v)
        return v

    def content(self) -> dict[str, Any]:
        """The settings that decide what is learned (not how many processes learn it)."""
        return self.model_dump(mode="json", exclude={"processes", "launcher", "compile_layers"})


class TrainJob(BaseModel):
    """One fine-tuning job, fully resolved: every process of the entry point reads this and only this."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    training: TrainingConfig = Field(default_factory=TrainingConfig)
    base_model: str = Field(description="A local directory (config, weights, tokenizer) or a model id.")
    load_format: Literal["weights", "dummy"] = Field(
        "weights", description="dummy: random weights from the base model's config (benchmarks); nothing is loaded."
    )
    data_run: Run | None = Field(None, description="Train on this run's `dataset` table ...")
    split: str = Field("train", description="... this split of it.")
    data_uri: str | None = Field(None, description="Or on a Parquet or JSONL file of examples (messages and target).")
    output: StorageConfig = Field(description="The job's folder: checkpoints, metrics, the adapter.")
    deepspeed_config: dict[str, Any] = Field(description="The DeepSpeed config; 'auto' values are filled in.")

    @model_validator(mode="after")
    def _one_source(self) -> TrainJob:
        if (self.data_run is None) == (self.data_uri is None):
            raise ValueError("give exactly one of data_run and data_uri")
        return self

    @model_validator(mode="after")
    def _compile_not_with_zero3(self) -> TrainJob:
        if self.training.compile_layers and self.zero_stage == 3:
            raise ValueError("training.compile_layers: not with ZeRO-3 (it gathers each layer's weights in module hooks); use zero2")
        return self

    @field_validator("deepspeed_config")
    @classmethod
    def _has_zero(cls, v: dict[str, Any]) -> dict[str, Any]:
        stage = v.get("zero_optimization", {}).get("stage", 0)
        if stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_optimization.stage must be 0 to 3, not {stage!r}")
        return v

    @classmethod
    def read(cls, data: str | bytes) -> TrainJob:
        """A job from its JSON, as a worker reads it (the DeepSpeed config is in the job)."""
        return cls.model_validate_json(data, context={RESOLVED: True})

    @property
    def train_id(self) -> str:
        return train_id(self.training, self.base_model, self.load_format, self.data_run, self.split, self.data_uri, self.deepspeed_config)

    @property
    def zero_stage(self) -> int:
        return int(self.deepspeed_config.get("zero_optimization", {}).get("stage", 0))


def train_id(
    training: TrainingConfig,
    base_model: str,
    load_format: str,
    data_run: Run | None,
    split: str,
    data_uri: str | None,
    deepspeed_config: dict[str, Any],
) -> str:
    """16 hex digits naming what the job learns from what: its folder under the run."""
    source = {"run": data_run.run_id, "config_hash": data_run.config_hash} if data_run else {"uri": data_uri}
    return config_hash(
        {
            "training": training.content(),
            "base_model": base_model,
            "load_format": load_format,
            "data": source,
            "split": split,
            "deepspeed": deepspeed_config,
        }
    )[:16]


def deepspeed_config(name_or_path: str) -> dict[str, Any]:
    """The DeepSpeed config `zero2`/`zero3` (shipped) or at a path; ValueError naming what is missing."""
    path = Path(name_or_path)
    if not path.suffix:
        path = DEEPSPEED_DIR / f"{name_or_path}.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        shipped = ", ".join(sorted(p.stem for p in DEEPSPEED_DIR.glob("*.json")))
        raise ValueError(f"deepspeed config {name_or_path!r}: no file {path} (shipped: {shipped})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a DeepSpeed config is a JSON object")
    return data
