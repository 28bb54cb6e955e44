"""Where a run's evaluation report lives in the run's storage, and writing it there.

A run's page is `runs/<run_id>/reports/eval.html` when it covers every benchmark the
run evaluated, `eval-<names>.html` (names sorted, joined by '-') when it covers some:
the evaluate flow writes `eval-<benchmark>.html` after each evaluation, and
`autosafe report --benchmark NAME` rewrites the same file. A page is written in one
atomic write (readers see the old page or the new one). Knows nothing about how the
page is rendered, Prefect or the CLI.
"""

from __future__ import annotations

from collections.abc import Collection

from fsspec import AbstractFileSystem

from autosafe_core.store import Run
from autosafe_core.store.location import join, put_whole
from autosafe_core.store.shards import run_dir

REPORTS = "reports"


def page_name(benchmarks: Collection[str] | None = None) -> str:
    """`eval.html` for all of a run's benchmarks, `eval-<names>.html` for the named ones."""
    return "eval.html" if not benchmarks else f"eval-{'-'.join(sorted(set(benchmarks)))}.html"


def page_uri(fs: AbstractFileSystem, path: str, is_s3: bool) -> str:
    """How a written page is shown and recorded: an s3:// URI, or the local path."""
    return fs.unstrip_protocol(path) if is_s3 else path


def write_run_page(run: Run, name: str, html: str) -> str:
    """Write the page `name` into the run's reports folder; returns its URI."""
    fs, run_path = run_dir(run)
    path = join(run_path, REPORTS, name)
    put_whole(fs, path, html.encode("utf-8"))
    return page_uri(fs, path, run.storage.is_s3)
