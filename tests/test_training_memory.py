"""The memory estimate behind `gradient_checkpointing: auto` (autosafe_core.training.memory)."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoConfig

from autosafe_core.training.memory import ModelShape, choose, fits, model_shape, peak_bytes
from tests.support.tiny_llama import tiny_llama_dir

LLAMA_7B = ModelShape(parameters=6_738_415_616, layers=32, hidden=4096, vocab=32_000)
GIB = 2**30
H200, H100 = int(139.8 * GIB), int(79.2 * GIB)
LORA = dict(seq=2048, processes=2, full=False)


@pytest.mark.parametrize(
    ("micro_batch", "stage", "measured_gib"),
    [(4, 2, 57.5), (8, 2, 102.0), (4, 3, 58.0), (8, 3, 102.5)],
)
def test_the_estimate_reproduces_the_peaks_measured_on_h200(micro_batch: int, stage: int, measured_gib: float) -> None:
    # bench/finetune_gpu.py on 2 H200s, 2026-11-23: torch's peak allocation, LoRA r=16, no checkpointing.
    estimate = peak_bytes(LLAMA_7B, micro_batch=micro_batch, zero_stage=stage, checkpointing=False, **LORA) / GIB
    assert estimate == pytest.approx(measured_gib, rel=0.03)


def test_a_job_fits_or_not_as_its_size_and_the_gpu_say() -> None:
    off = dict(checkpointing=False, **LORA)
    assert fits(LLAMA_7B, H200, micro_batch=8, zero_stage=2, **off)
    assert not fits(LLAMA_7B, H100, micro_batch=8, zero_stage=2, **off)
    assert fits(LLAMA_7B, H100, micro_batch=4, zero_stage=2, **off)
    # Full fine-tuning carries 16 bytes of optimizer state per parameter: ZeRO splits it.
    full = dict(seq=2048, full=True, micro_batch=1, checkpointing=False)
    assert not fits(LLAMA_7B, H100, processes=1, zero_stage=2, **full)
    assert fits(LLAMA_7B, H100, processes=8, zero_stage=3, **full)


def test_checkpointing_keeps_far_less_than_it_saves() -> None:
    job = dict(micro_batch=8, zero_stage=2, **LORA)
    on, off = (peak_bytes(LLAMA_7B, checkpointing=c, **job) for c in (True, False))
    assert on < 0.35 * off


def test_the_shape_is_read_from_the_config_without_loading_weights(tmp_path: Path) -> None:
    directory = tiny_llama_dir(tmp_path / "tiny")
    config = AutoConfig.from_pretrained(directory)
    shape = model_shape(str(directory))
    assert (shape.layers, shape.hidden, shape.vocab) == (
        config.num_hidden_layers, config.hidden_size, config.vocab_size)  # fmt: skip
    h, f, v, n = config.hidden_size, config.intermediate_size, config.vocab_size, config.num_hidden_layers
    kv = h * config.num_key_value_heads // config.num_attention_heads
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * f + 2 * h  # attention, MLP, two norms
    embeddings = v * h * (1 if config.tie_word_embeddings else 2)
    assert shape.parameters == n * per_layer + embeddings + h


def test_auto_takes_the_largest_micro_batch_that_fits_without_checkpointing() -> None:
    job = dict(seq=2048, processes=2, zero_stage=2, full=False)
    assert choose(LLAMA_7B, H200, None, None, **job) == (8, False)  # the fastest measured
    assert choose(LLAMA_7B, H100, None, None, **job) == (4, False)
    assert choose(LLAMA_7B, H100, 8, None, **job) == (8, True)  # a fixed micro-batch that needs it
    assert choose(LLAMA_7B, 16 * GIB, None, None, **job) == (1, True)  # nothing fits without it
    assert choose(LLAMA_7B, 16 * GIB, None, False, **job) == (1, False)  # the user's word stands
    assert choose(LLAMA_7B, H100, None, True, **job) == (8, True)


def test_a_micro_batch_below_one_is_refused_and_auto_is_the_default() -> None:
    from pydantic import ValidationError

    from autosafe_core.training.config import TrainingConfig

    assert TrainingConfig().micro_batch_size == "auto"
    with pytest.raises(ValidationError, match="micro_batch_size"):
        TrainingConfig(micro_batch_size=0)


def test_a_resumed_job_keeps_the_plan_its_first_start_resolved(tmp_path: Path) -> None:
    import torch

    from autosafe_core.store.location import StorageConfig
    from autosafe_core.training.checkpoints import PLAN, JobFolder
    from autosafe_core.training.config import TrainingConfig, TrainJob, deepspeed_config
    from autosafe_core.training.train import _plan

    def job(**training) -> TrainJob:
        return TrainJob(training=TrainingConfig(**training), base_model="unused", data_uri="unused.jsonl",
                        output=StorageConfig(uri=str(tmp_path / "job")), deepspeed_config=deepspeed_config("zero2"))  # fmt: skip

    folder = JobFolder(job().output, tmp_path / "scratch")
    cpu = torch.device("cpu")
    assert _plan(job(), cpu, 0, 1, folder) == (1, False)  # auto on a CPU, written for later starts
    assert folder.read_json(PLAN) == {"micro_batch_size": 1, "gradient_checkpointing": False}
    folder.write_json({"micro_batch_size": 8, "gradient_checkpointing": False}, PLAN)  # as a GPU start wrote it
    assert _plan(job(), cpu, 0, 1, folder) == (8, False)
    assert _plan(job(micro_batch_size=2, gradient_checkpointing=True), cpu, 0, 1, folder) == (2, True)  # explicit wins
