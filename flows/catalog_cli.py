"""`autosafe catalog`: validate and list toolkits and risk outcomes.

Both commands read the packaged catalog unless given a file or directory (ToolEmu's
files included). Bad catalog files are a user mistake: one line per error on stderr,
exit status 2, no traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from autosafe_core.catalog import CatalogFiles, packaged_root, read_catalog_files

catalog_app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

PathArg = Annotated[
    Path | None,
    typer.Argument(help="A catalog file or a directory of them; the packaged catalog if absent.", show_default=False),
]


def _read_or_exit(path: Path | None) -> CatalogFiles:
    files = read_catalog_files([path if path is not None else packaged_root()])
    if files.errors:
        for error in files.errors:
            typer.echo(error, err=True)
        raise typer.Exit(2)
    return files


@catalog_app.command()
def validate(path: PathArg = None) -> None:
    """Check catalog files: shapes, required fields, duplicate names, outcome spellings."""
    files = _read_or_exit(path)
    typer.echo(f"ok: {len(files.toolkits)} toolkits, {files.tool_count} tools, {len(files.outcomes)} risk outcomes")


@catalog_app.command("list")
def list_(
    path: PathArg = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
) -> None:
    """Show the toolkits (name, category, tools) and the risk outcomes."""
    files = _read_or_exit(path)
    if as_json:
        typer.echo(json.dumps(_as_json(files), ensure_ascii=False))
        return
    console = Console()
    toolkits = Table(title=f"{len(files.toolkits)} toolkits, {files.tool_count} tools")
    for column in ("Toolkit", "Category", "Tools", "Risks"):
        toolkits.add_column(column, justify="right" if column in ("Tools", "Risks") else "left")
    for kit in files.toolkits:
        toolkits.add_row(kit.toolkit, kit.category or "-", str(len(kit.tools)), str(len(kit.risks)))
    outcomes = Table(title=f"{len(files.outcomes)} risk outcomes")
    for column in ("Id", "Name", "Aliases"):
        outcomes.add_column(column, justify="right" if column == "Aliases" else "left")
    for outcome in files.outcomes:
        outcomes.add_row(outcome.id, outcome.name, str(len(outcome.aliases)))
    console.print(toolkits)
    console.print(outcomes)


def _as_json(files: CatalogFiles) -> dict:
    return {
        "toolkits": [
            {
                "name": kit.toolkit,
                "category": kit.category,
                "name_for_model": kit.name_for_model,
                "description": kit.description_for_model,
                "tools": kit.tool_names(),
                "risks": kit.risks,
            }
            for kit in files.toolkits
        ],
        "risk_outcomes": [outcome.model_dump(mode="json") for outcome in files.outcomes],
    }
