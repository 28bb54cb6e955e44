"""Where a model spec's weights are on this machine: the embedded default's converted
copy, a local directory, or (for engines that resolve them) a model id; and a LoRA
adapter copied to local disk when it lives in object storage.

Backends call these at load time; nothing here knows about generation.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from autosafe_core.llm.registry import DEFAULT_MODEL


def model_source(model: str) -> str:
    """What a backend loads for `ModelSpec.model`: the converted default, else `model` as given."""
    if model == DEFAULT_MODEL:
        from autosafe_core.llm.smollm2 import default_cache_dir, ensure_smollm2

        return str(ensure_smollm2(default_cache_dir()))
    return model


@contextmanager
def local_adapter(adapter: str) -> Iterator[Path]:
    """A local directory holding the LoRA adapter at `adapter` (a path or an fsspec URI),
    for as long as the `with` block lasts: a copy fetched from object storage is removed
    at its end."""
    if "://" in adapter and not adapter.startswith("file://"):
        import fsspec

        fs, root = fsspec.core.url_to_fs(adapter)
        root = root.rstrip("/")
        with tempfile.TemporaryDirectory(prefix="autosafe-adapter-") as scratch:
            path = Path(scratch) / Path(root).name
            fs.get(root + "/", str(path), recursive=True)
            yield _checked(adapter, path)
    else:
        yield _checked(adapter, Path(adapter.removeprefix("file://")).expanduser())


def _checked(adapter: str, path: Path) -> Path:
    if not (path / "adapter_config.json").is_file():
        raise ValueError(f"adapter {adapter!r}: no adapter_config.json there")
    return path


def adapter_rank(adapter_dir: Path) -> int:
    """The LoRA rank `r` in the adapter's config."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    try:
        return int(config["r"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{adapter_dir / 'adapter_config.json'}: field 'r' (the LoRA rank) missing or not a number") from None
