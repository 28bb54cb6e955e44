"""`autosafe report`: a run's evaluation as one self-contained HTML page.

Reads the rows of each benchmark's latest evaluation (`evaluations.current_rows`: a
benchmark evaluated twice, with other settings or another adapter, is reported once, as
its latest evaluation), of every benchmark or those named with `--benchmark`, computes
the metrics and writes the page in one atomic write: by default into the run's own
folder, `runs/<run_id>/reports/eval.html` (`eval-<names>.html` for named benchmarks, the
file the evaluate flow writes after each evaluation), on the run's storage (local folder
or S3); `--out` takes a local path, a folder, or an s3:// URI instead. The page's path is the last line printed. A run that
is not there, has no eval rows, or has none of a named benchmark ends in one line on
stderr and exit status 2, with nothing written. This module reads the store and writes
only the page.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer
from pydantic import ValidationError

from autosafe_core.evaluation.evaluations import current_rows
from autosafe_core.evaluation.metrics import Bootstrap
from autosafe_core.evaluation.report import render_report
from autosafe_core.evaluation.report_file import page_name, page_uri, write_run_page
from autosafe_core.store import EvalRow, Run, StorageConfig
from autosafe_core.store.location import join, put_whole
from flows.inspect_cli import STORE_ERRORS, RunIdArg, open_run, unreadable
from flows.run_cli import EndpointOpt, StorageOpt, fail


def report(
    run_id: RunIdArg,
    storage: StorageOpt = None,
    endpoint_url: EndpointOpt = None,
    out: Annotated[
        str | None,
        typer.Option(
            "--out",
            help="File, folder or s3:// URI to write the page to.",
            show_default="runs/<run_id>/reports/eval.html in the run's storage",
        ),
    ] = None,
    benchmarks: Annotated[
        list[str] | None, typer.Option("--benchmark", help="Report only this benchmark (repeatable).")
    ] = None,
    examples: Annotated[int, typer.Option("--examples", min=0, help="Cases shown turn by turn per benchmark.")] = 3,
    resamples: Annotated[int, typer.Option("--resamples", min=100, help="Bootstrap resamples per interval.")] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap.")] = 0,
) -> None:
    """Write the HTML report of a run's evaluation; prints the page's path last."""
    run, _, _ = open_run(run_id, storage, endpoint_url)
    try:
        rows: list[EvalRow] = current_rows(run)
    except STORE_ERRORS as exc:
        raise unreadable(run, exc) from None
    if not rows:
        raise fail(f"run {run_id} in {run.storage.uri} has no eval rows: run `autosafe eval {run_id}` first")
    if benchmarks:
        present = sorted({r.benchmark for r in rows})
        for name in benchmarks:
            if name not in present:
                raise fail(f"run {run_id} has no eval rows of benchmark {name!r}; it has: {', '.join(present)}")
        rows = [r for r in rows if r.benchmark in benchmarks]
    html = render_report(rows, run_id, Bootstrap(resamples=resamples, seed=seed), examples=examples)
    try:
        shown = write_page(run, out, page_name(benchmarks), endpoint_url, html)
    except STORE_ERRORS as exc:
        raise fail(f"{out or 'report'}: {_first_line(exc)}") from None
    typer.echo(shown)


def write_page(run: Run, out: str | None, name: str, endpoint_url: str | None, html: str) -> str:
    """Write the page where `--out` says (or into the run's folder) and return where it went."""
    if out is None:
        return write_run_page(run, name, html)
    try:
        target = StorageConfig(uri=out, endpoint_url=endpoint_url)
    except ValidationError as exc:
        raise ValueError(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None
    fs, path = target.filesystem()
    if not target.is_s3 and os.path.isdir(path):
        path = join(path, name)
    put_whole(fs, path, html.encode("utf-8"))
    return page_uri(fs, path, target.is_s3)


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def register(app: typer.Typer) -> None:
    """Add `report` to the `autosafe` app."""
    app.command("report")(report)
