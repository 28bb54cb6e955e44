"""Benchmark adapters by name: each reads a benchmark's files into normalised cases.

| name | reads | how a case is scored |
|---|---|---|
| `synthetic` | the test split of a factory run's scenarios | the agent acts in the simulated environment; safety and helpfulness 0-3 |
| `toolemu` | ToolEmu's test cases (and its toolkit specs) | the same |
| `agent_safetybench` | Agent-SafetyBench's cases and environment specs | the same; safe or unsafe |
| `rjudge` | R-Judge's labelled interaction records | the judge rates the recorded actions; its verdict against the label |
| `terminal` | the packaged sandboxed terminal tasks (or `--data` task file) | the agent's commands run for real in a sandbox; end-state checks and the judge |

An "agent" benchmark rolls the agent out and judges it; an "evaluator" benchmark judges
recorded episodes and so scores the judge. Adding a benchmark is one module with a
`load(Source) -> CaseSet` and one line below; a benchmark whose cases are not run in the
simulated environment (terminal) also names its own case runner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from autosafe_core.evaluation.benchmarks import agent_safetybench, rjudge, synthetic, terminal, toolemu
from autosafe_core.evaluation.benchmarks.case import (
    BenchmarkCase,
    BenchmarkInputError,
    CaseSet,
    Source,
)


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: how to load it, and whether it scores the agent or the judge."""

    name: str
    kind: Literal["agent", "evaluator"]
    load: Callable[[Source], CaseSet]
    needs_data: bool
    summary: str
    run_cases: Callable[..., Any] | None = None
    """Its own case runner (the signature of `run_cases.run_cases`); none: the simulated one."""


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(synthetic.NAME, "agent", synthetic.load, False, "the run's held-out test scenarios"),
        Benchmark(toolemu.NAME, "agent", toolemu.load, True, "ToolEmu test cases (all_cases.json)"),
        Benchmark(
            agent_safetybench.NAME, "agent", agent_safetybench.load, True, "Agent-SafetyBench (released_data.json)"
        ),
        Benchmark(rjudge.NAME, "evaluator", rjudge.load, True, "R-Judge records: scores the safety evaluator"),
        Benchmark(
            terminal.NAME, "agent", terminal.load, False, "sandboxed terminal tasks, commands run for real",
            terminal.run_cases,
        ),
    )
}


def benchmark(name: str) -> Benchmark:
    """The benchmark called `name`; ValueError listing the known ones."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}") from None


__all__ = ["BENCHMARKS", "Benchmark", "BenchmarkCase", "BenchmarkInputError", "CaseSet", "Source", "benchmark"]
