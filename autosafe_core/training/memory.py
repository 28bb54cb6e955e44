"""Whether a training job fits on its GPUs without gradient checkpointing.

Checkpointing recomputes every layer's forward pass in the backward pass: about a
third more compute for the same tokens. On 2 H200s (bench/finetune_gpu.py, LoRA r=16
on a 7B llama, sequence 2,048) turning it off took ZeRO-2 from MFU 0.28 (the plain
script's baseline, checkpointing on) to 0.37 at micro-batch 4 and 0.39 at 8. So on a GPU
`gradient_checkpointing: auto` keeps it off whenever the job's estimated peak fits, and
`micro_batch_size: auto` takes the largest of 8, 4, 2 and 1 examples that fits (8 was
the fastest measured; past it the matrix products are already large).

The estimate is per GPU, in bytes:

- weights: 2 per parameter (bf16); under ZeRO-3 split over the processes, plus the
  parameters it gathers at once (`stage3_max_live_parameters`, 2 bytes each);
- full fine-tuning: 16 more per parameter (fp32 master weights and Adam's two
  moments, bf16 gradients), split over the processes (ZeRO-2 and 3);
- activations kept for the backward pass: `ACTIVATION_BYTES` per token, layer and
  hidden unit, plus `LOGIT_BYTES` per token and vocabulary entry.

The two constants were measured on the H200 runs above: torch's peak allocation at
micro-batches 4 and 8 (57.5 and 102.0 GiB under ZeRO-2) is 13.5 GB of weights plus
43 bytes per token x layer x hidden and 8 per token x vocabulary entry, within 0.1 GiB;
under ZeRO-3 the peaks were 58.0 and 102.5 GiB, the estimate 56.8 and 101.8. A GPU is taken to hold `USABLE_SHARE` of its memory for this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ACTIVATION_BYTES = 43.0
"""Saved activations per token x layer x hidden unit, no checkpointing (llama, SDPA, bf16, LoRA on all linears)."""
LOGIT_BYTES = 8.0
"""Logits per token x vocabulary entry: bf16 output, float32 loss input and its gradient."""
USABLE_SHARE = 0.85
"""Of a GPU's memory: the rest is the allocator's fragmentation, NCCL buffers and the CUDA context."""


@dataclass(frozen=True)
class ModelShape:
    parameters: int
    layers: int
    hidden: int
    vocab: int


def peak_bytes(
    shape: ModelShape,
    *,
    micro_batch: int,
    seq: int,
    processes: int,
    zero_stage: int,
    full: bool,
    checkpointing: bool,
    live_parameters: float = 3e9,
) -> float:
    """Estimated peak GPU memory of one training process."""
    if zero_stage == 3:
        weights = 2.0 * (shape.parameters / processes + min(shape.parameters, live_parameters))
    else:
        weights = 2.0 * shape.parameters
    states = 16.0 * shape.parameters / (processes if zero_stage >= 2 else 1) if full else 0.0
    tokens = micro_batch * seq
    per_layer = ACTIVATION_BYTES * tokens * shape.hidden
    # With checkpointing only each layer's input stays (bf16), plus one layer's full activations.
    kept = (2.0 * tokens * shape.hidden * shape.layers + per_layer) if checkpointing else per_layer * shape.layers
    return weights + states + kept + LOGIT_BYTES * tokens * shape.vocab


MICRO_BATCHES = (8, 4, 2, 1)
"""What `micro_batch_size: auto` tries on a GPU, largest first."""


def fits(shape: ModelShape, gpu_bytes: int, **job: Any) -> bool:
    """Whether the job (`peak_bytes`'s arguments) fits on a GPU of `gpu_bytes`."""
    return peak_bytes(shape, **job) <= USABLE_SHARE * gpu_bytes


def choose(
    shape: ModelShape, gpu_bytes: int, micro_batch: int | None, checkpointing: bool | None, **job: Any
) -> tuple[int, bool]:
    """(micro-batch, checkpointing) on a GPU; None is auto. Checkpointing only when nothing fits without it."""
    candidates = MICRO_BATCHES if micro_batch is None else (micro_batch,)
    for ckpt in (False, True) if checkpointing is None else (checkpointing,):
        for micro in candidates:
            if fits(shape, gpu_bytes, micro_batch=micro, checkpointing=ckpt, **job):
                return micro, ckpt
    return candidates[-1], True if checkpointing is None else checkpointing


def model_shape(base_model: str) -> ModelShape:
    """The shape of `base_model` (a directory or id), counted on the meta device: nothing is loaded."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base_model)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    text = config.get_text_config()
    return ModelShape(
        parameters=sum(p.numel() for p in model.parameters()),
        layers=int(text.num_hidden_layers),
        hidden=int(text.hidden_size),
        vocab=int(text.vocab_size),
    )
