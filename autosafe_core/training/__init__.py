"""Fine-tuning on D_safe: `sft_export` turns accepted safe samples into SFT rows."""

from autosafe_core.training.sft_export import agent_reply, export_rows, to_dataset_row

__all__ = ["agent_reply", "export_rows", "to_dataset_row"]
