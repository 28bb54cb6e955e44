"""Write the benchmark model's directory: a 7B-class llama config (random weights come
from vLLM's `load_format="dummy"` or from `from_config`) and SmolLM2's tokenizer and chat
template from the embedded default's converted copy. Nothing is downloaded.

    .venv/bin/python bench/device/model_dir.py        # -> .bench-model/llama-7b (git-ignored)
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

LLAMA_7B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "head_dim": 128,
    "hidden_act": "silu",
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "attention_bias": False,
    "mlp_bias": False,
    "tie_word_embeddings": False,
    "vocab_size": 49152,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
    "torch_dtype": "bfloat16",
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


def main(out: Path = REPO / ".bench-model" / "llama-7b") -> Path:
    from autosafe_core.llm.smollm2 import default_cache_dir, ensure_smollm2

    source = ensure_smollm2(default_cache_dir())
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(LLAMA_7B, indent=1))
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy(source / name, out / name)
    print(out)
    return out


if __name__ == "__main__":
    main()
