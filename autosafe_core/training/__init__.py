"""Fine-tuning on D_safe: SFT rows (`sft_export`), their tokens and loss mask (`encoding`), the
example stream (`examples`, `stream`), and the training entry point (`train`, run under torchrun,
the deepspeed launcher or Ray Train; `config` says what a job is, `checkpoints` where it writes).

Submodules are imported on use: the training entry point runs on GPU machines that have torch,
transformers, peft and DeepSpeed but not the roles' dependencies that `sft_export` needs.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"agent_reply": "sft_export", "export_rows": "sft_export", "to_dataset_row": "sft_export"}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"autosafe_core.training.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'autosafe_core.training' has no attribute {name!r}")
