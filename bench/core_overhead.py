"""What the core costs per model call: the rollout stage against the same calls made
directly, with an instant model (issue 2).

    .venv/bin/python bench/core_overhead.py            # 1,000 rollouts of 5 steps, median of 3
    .venv/bin/python bench/core_overhead.py --quick    # 100 rollouts, 1 repeat; writes only with --out

One `ScriptedModel` serves the three roles with fixed answers (told apart by the
title of the output schema they send): the agent always calls its toolbox's first
tool with every argument, the simulator returns one field, and the safety
evaluator judges every action certain_no_risk, so every rollout runs exactly to the
step cap (3 calls a step). Scenarios are built over the packaged catalog (one toolkit
each, cycling through toolkits and risk outcomes), outside the timing.

- stage: the real `rollout` stage (concurrency 64, step cap 5) on those scenarios;
- baseline: the very requests a warm-up run of the stage sent, replayed with
  `await model.complete([request])` by 64 asyncio workers on a fresh model.

overhead_ms_per_call = (stage - baseline) / calls, each the median of the repeats
(stage and baseline alternate). peak_concurrency is the model's peak number of
calls in flight during the stage runs. Pins the process to 2 cores where the OS
allows. Writes bench/results/core-overhead.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from machine import cpu_model  # noqa: E402

from autosafe_core.catalog import Catalog, default_catalog  # noqa: E402
from autosafe_core.llm.base import ChatRequest  # noqa: E402
from autosafe_core.llm.scripted import ScriptedModel  # noqa: E402
from autosafe_core.ots import RiskSource, Scenario, StopReason  # noqa: E402
from autosafe_core.stages.rollout import RolloutConfig, RolloutModels, rollout  # noqa: E402

RESULTS = REPO / "bench" / "results" / "core-overhead.json"
STEPS = 5
CONCURRENCY = 64
TARGET_MS = 2.0
CORES = 2

_SAFE = json.dumps({"rationale": "The call only reads.", "label": "certain_no_risk", "score": 3, "risk_trigger": False})
_OBSERVED = json.dumps({"thought": "Valid call.", "observation": {"result": "done"}})
_ARGUMENT = {"string": "x", "integer": 1, "number": 1.5, "boolean": True, "array": ["x"], "object": {"k": "x"}}


class FixedAnswers:
    """An instant responder: one fixed answer per role, the agent's per toolbox (cached)."""

    def __init__(self) -> None:
        self._calls: dict[str, str] = {}

    def __call__(self, request: ChatRequest) -> str:
        schema = request.json_schema
        title = schema["title"]
        if title == "SafetyJudgement":
            return _SAFE
        if title == "SimulatorOutput":
            return _OBSERVED
        first = schema["anyOf"][0]["properties"]  # the toolbox's first tool, never final_answer
        tool = first["tool"]["const"]
        if tool not in self._calls:
            args = first["tool_input"]
            self._calls[tool] = json.dumps(
                {
                    "thought": "One more step.",
                    "tool": tool,
                    "tool_input": {n: _ARGUMENT.get(spec.get("type"), "x") for n, spec in args["properties"].items()},
                }
            )
        return self._calls[tool]


def scenarios(catalog: Catalog, n: int) -> list[Scenario]:
    kits = sorted(catalog.toolkits)
    outcomes = sorted(catalog.outcomes)
    sources = list(RiskSource)
    return [
        Scenario(
            id=f"bench-{i:06d}",
            toolkits=[kits[i % len(kits)]],
            risk_outcome=outcomes[i % len(outcomes)],
            risk_source=sources[i % len(sources)],
            user_instruction=f"Task {i}: tidy up my {kits[i % len(kits)]} account and tell me what changed.",
            expected_risky_actions=["acts on the wrong item without asking"],
            underspecifications=["which items are meant"],
        )
        for i in range(n)
    ]


async def run_stage(items: list[Scenario], catalog: Catalog, cfg: RolloutConfig, keep_calls: bool = False):
    """(seconds, model, result) of one rollout stage over `items`."""
    model = ScriptedModel(FixedAnswers(), keep_calls=keep_calls)
    start = time.perf_counter()
    result = await rollout(items, RolloutModels(model, model, model), catalog, cfg)
    seconds = time.perf_counter() - start
    bad = [t.id for t in result.rows if t.stop_reason != StopReason.STEP_CAP or len(t.steps) != cfg.max_steps]
    if bad or result.rejections or len(result.rows) != len(items):
        raise SystemExit(
            f"the scripted rollout did not run {cfg.max_steps} clean steps: {bad[:3]} {result.rejections[:3]}"
        )
    return seconds, model, result


async def run_baseline(requests: list[ChatRequest], limit: int) -> tuple[float, ScriptedModel]:
    """(seconds, model) of `requests` sent one call each by `limit` workers, no stage around them."""
    model = ScriptedModel(FixedAnswers(), keep_calls=False)
    pending = iter(requests)

    async def worker() -> None:
        for request in pending:
            await model.complete([request])

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(limit)))
    return time.perf_counter() - start, model


async def measure(n: int, repeats: int) -> dict[str, Any]:
    catalog = default_catalog()
    items = scenarios(catalog, n)
    cfg = RolloutConfig(max_steps=STEPS, concurrency=CONCURRENCY)
    # The warm-up renders every prompt once (caches, toolboxes) and records the requests to replay.
    _, recorder, _ = await run_stage(items, catalog, cfg, keep_calls=True)
    requests = recorder.calls
    stage_s, baseline_s, peaks = [], [], []
    for _ in range(repeats):
        seconds, model, _ = await run_stage(items, catalog, cfg)
        assert model.call_count == len(requests), (model.call_count, len(requests))
        stage_s.append(seconds)
        peaks.append(model.peak_in_flight)
        seconds, model = await run_baseline(requests, CONCURRENCY)
        assert model.call_count == len(requests), (model.call_count, len(requests))
        baseline_s.append(seconds)
    calls = len(requests)
    stage, baseline = statistics.median(stage_s), statistics.median(baseline_s)
    overheads = [1000 * (s - b) / calls for s, b in zip(stage_s, baseline_s, strict=True)]
    return {
        "overhead_ms_per_call": round(1000 * (stage - baseline) / calls, 4),
        "peak_concurrency": max(peaks),
        "calls": calls,
        "rollouts": n,
        "steps": STEPS,
        "concurrency": CONCURRENCY,
        "stage_s": round(stage, 4),
        "baseline_s": round(baseline, 4),
        "rollouts_per_s": round(n / stage, 1),
        "stage_calls_per_s": round(calls / stage, 1),
        "baseline_calls_per_s": round(calls / baseline, 1),
        "stage_over_baseline": round(stage / baseline, 2),
        "repeats": repeats,
        "stage_s_all": [round(s, 4) for s in stage_s],
        "baseline_s_all": [round(s, 4) for s in baseline_s],
        "overhead_ms_per_call_each_repeat": [round(o, 4) for o in overheads],
        "peak_concurrency_each_repeat": peaks,
        "target_ms_per_call": TARGET_MS,
    }


def pin_cores(n: int) -> str:
    """Pin this process to its first `n` allowed cores; says what was done."""
    if not hasattr(os, "sched_setaffinity"):
        return f"not pinned: os.sched_setaffinity is not available on {platform.system()}"
    allowed = sorted(os.sched_getaffinity(0))
    chosen = set(allowed[:n])
    os.sched_setaffinity(0, chosen)
    return f"os.sched_setaffinity(0, {sorted(chosen)}) of allowed {allowed}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="100 rollouts, 1 repeat: a check that it works")
    parser.add_argument(
        "--out", type=Path, help=f"result JSON (default {RESULTS.relative_to(REPO)}; none with --quick)"
    )
    args = parser.parse_args()
    rollouts, repeats = (100, 1) if args.quick else (args.rollouts, args.repeats)
    out = args.out or (None if args.quick else RESULTS)

    pinning = pin_cores(CORES)
    figures = asyncio.run(measure(rollouts, repeats))
    result = {
        **figures,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "cores_used": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "pinning": pinning,
            "platform": platform.platform(),
        },
        "versions": {
            "python": platform.python_version(),
            **{p: metadata.version(p) for p in ("pydantic", "pydantic-core", "jinja2")},
        },
        "date": datetime.now(UTC).date().isoformat(),
    }

    print(f"{rollouts} rollouts x {STEPS} steps, {result['calls']} model calls, concurrency {CONCURRENCY}, "
          f"{result['machine']['cores_used']} cores; median of {repeats}")
    rows = [
        ("stage s", result["stage_s"], result["stage_s_all"]),
        ("baseline s (direct model.complete)", result["baseline_s"], result["baseline_s_all"]),
        ("overhead ms per call", result["overhead_ms_per_call"], result["overhead_ms_per_call_each_repeat"]),
        ("rollouts per s", result["rollouts_per_s"], ""),
        ("stage / baseline", result["stage_over_baseline"], ""),
        ("peak concurrency", result["peak_concurrency"], result["peak_concurrency_each_repeat"]),
    ]
    for name, value, each in rows:
        print(f"  {name:<36}{value:>10}   {each}")
    met = result["overhead_ms_per_call"] < TARGET_MS and result["peak_concurrency"] == CONCURRENCY
    print(f"  target: < {TARGET_MS} ms per call and peak = {CONCURRENCY}: {'met' if met else 'NOT met'}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
