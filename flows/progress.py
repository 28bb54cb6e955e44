"""Where the data flows draw their progress bars: a terminal for the CLI, nowhere else.

Kept out of the flow functions' globals on purpose: Prefect's Ray runner pickles the
flow function by value, and a rich Console (it holds locks) cannot travel.
"""

from __future__ import annotations

from rich.console import Console

_console: Console | None = None


def set_console(console: Console | None) -> None:
    global _console
    _console = console


def console() -> Console | None:
    """The console of the CLI that started this process's flow, or None (worker, test)."""
    return _console
