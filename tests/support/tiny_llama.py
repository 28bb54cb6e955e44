"""A tiny random llama saved as a model directory: SmolLM2's tokenizer and chat template on a
two-layer, 64-wide model, so training and loading run in seconds on a CPU."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from autosafe_core.llm.smollm2 import default_cache_dir, ensure_smollm2


def tiny_config(vocab_size: int, **fields) -> LlamaConfig:
    """The tests' tiny llama: two layers, 64 wide, 4 heads sharing 2 key-value heads."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        **fields,
    )


def tiny_llama_dir(target: Path, seed: int = 0) -> Path:
    """`target` holding config, random weights and tokenizer of a tiny llama; returns it."""
    tokenizer = AutoTokenizer.from_pretrained(ensure_smollm2(default_cache_dir()))
    config = tiny_config(
        len(tokenizer),
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        # Wider than the default 0.02: LoRA leaves the (tied) head frozen, and a head that small
        # could not raise a learned token's logit far enough for a loss curve to show it.
        initializer_range=0.3,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
