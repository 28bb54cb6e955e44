"""How the factory scales: scenarios through generate and rollout on local Ray, against
the same work as one Prefect task per scenario.

    .venv/bin/python bench/factory_scale.py            # 1k and 10k scenarios, 200 for the baseline
    .venv/bin/python bench/factory_scale.py --quick    # 200 and 1k, 50 for the baseline

Every role is the instant schema responder (tests/support/schema_responder.py), so the
figures are the factory's own cost: Prefect, Ray, storage, the stages' Python. Each
measurement runs in a fresh process (so peak RSS is that run's), against one local
Prefect server that this command starts. The measured kinds:

- factory: the `generate` and `rollout` stages through the shard pipeline (Ray task
  runner, engines in a Ray actor, Parquet commits), shards of 1,000 scenarios
  (BENCH_SHARD_SIZE overrides), 256 model calls in flight per shard (BENCH_CONCURRENCY), on a
  local Ray started before the clock (a running cluster, as large runs have);
- factory-cold: the same, once, with the run starting Ray itself (a laptop's first
  run); the difference is Ray's start-up;
- core: the same two stages called directly in one process (no Prefect, Ray or
  storage): what the work costs without orchestration;
- per-scenario: one Prefect task per scenario, each generating and rolling out its
  scenario and committing its rows (threads, in-process model): the naive design.

Writes bench/results/factory-scale.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from machine import cpu_model  # noqa: E402

RESULTS = REPO / "bench" / "results" / "factory-scale.json"
SHARD_SIZE = int(os.environ.get("BENCH_SHARD_SIZE", "1000"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "256"))


def _config(storage: str, scenarios: int, runner: str = "ray"):
    from tests.support.factory import scripted_config

    return scripted_config(
        storage, run_id="bench", scenarios=scenarios, shard_size=SHARD_SIZE, concurrency=CONCURRENCY, runner=runner
    )


class RssWatch:
    """Peak resident memory of this process and every process it started (Ray's included)."""

    def __init__(self) -> None:
        import psutil

        self._me = psutil.Process()
        self.peak_total_mb = 0.0
        self.peak_by_process: dict[int, tuple[float, str]] = {}  # pid -> its peak and latest name
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        import psutil

        while not self._done.wait(0.25):
            total = 0
            for p in [self._me, *self._me.children(recursive=True)]:
                try:
                    rss = p.memory_info().rss
                    name = p.name()  # Ray renames a worker after the task it runs
                except psutil.Error:
                    continue
                total += rss
                peak = max(self.peak_by_process.get(p.pid, (0.0, ""))[0], rss / 2**20)
                self.peak_by_process[p.pid] = (peak, name)
            self.peak_total_mb = max(self.peak_total_mb, total / 2**20)

    @property
    def peak_process_mb(self) -> float:
        return max((peak for peak, _ in self.peak_by_process.values()), default=0.0)

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


def measure_factory(scenarios: int, cold: bool = False) -> dict:
    """Warm: local Ray is up before the clock starts (a running cluster, as at scale);
    cold: the run starts Ray itself, as `autosafe run` on a laptop does."""
    import ray
    from prefect import flow

    from flows.pipeline import run_pipeline
    from flows.runtime import task_runner

    storage = tempfile.mkdtemp(prefix="bench-factory-")
    config = _config(storage, scenarios)

    @flow(name="bench-generate-rollout")
    def generate_and_rollout(config):
        return run_pipeline(config, ["generate", "rollout"])

    if not cold:
        ray.init(num_cpus=os.cpu_count(), namespace="autosafe", include_dashboard=False, log_to_driver=False)
    with RssWatch() as watch:
        start = time.perf_counter()
        manifest = generate_and_rollout.with_options(task_runner=task_runner("ray"))(config)
        wall = time.perf_counter() - start
    assert manifest.tables["scenarios"].records == scenarios, manifest.tables
    assert manifest.tables["trajectories"].records == scenarios, manifest.tables
    return {
        "wall_s": wall,
        "calls": sum(u.calls for u in manifest.usage_by_role.values()),
        "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "all_processes_peak_rss_mb": watch.peak_total_mb,
        "largest_process_peak_rss_mb": watch.peak_process_mb,
        "processes_over_50mb": sorted([round(mb), name] for mb, name in watch.peak_by_process.values() if mb > 50),
    }


def measure_core(scenarios: int) -> dict:
    from autosafe_core.llm.registry import build_model
    from autosafe_core.stages.generate import generate_jobs, scenario_jobs
    from autosafe_core.stages.rollout import RolloutModels, rollout
    from tasks.common import catalog

    config = _config(tempfile.mkdtemp(prefix="bench-core-"), scenarios)
    model = build_model(config.models.default)
    gen_cfg, roll_cfg, _ = config.stage_configs()

    out = {}

    async def work() -> None:
        # Kept here, not returned: asyncio.run formats repr() of what its main task returns
        # (restoring the SIGINT handler), which for 10,000 rows costs seconds.
        out["made"] = await generate_jobs(scenario_jobs(config.grid().cells(), 0, scenarios), model, catalog(), gen_cfg)
        out["rolled"] = await rollout(out["made"].rows, RolloutModels(model, model, model), catalog(), roll_cfg)

    start = time.perf_counter()
    asyncio.run(work())
    wall = time.perf_counter() - start
    made, rolled = out["made"], out["rolled"]
    assert len(made.rows) == len(rolled.rows) == scenarios
    return {"wall_s": wall, "calls": model.call_count}


def measure_per_scenario(scenarios: int) -> dict:
    """The naive design: one Prefect task per scenario (generate it, roll it out, commit it)."""
    from prefect import flow, task
    from prefect.cache_policies import NONE
    from prefect.task_runners import ThreadPoolTaskRunner

    from autosafe_core.llm.registry import build_model
    from autosafe_core.stages.generate import generate_jobs, scenario_jobs
    from autosafe_core.stages.rollout import RolloutModels, rollout
    from autosafe_core.store import commit_shard
    from flows.pipeline import make_run
    from tasks.common import catalog

    config = _config(tempfile.mkdtemp(prefix="bench-naive-"), scenarios, runner="threads")
    run = make_run(config)
    model = build_model(config.models.default)
    cells = config.grid().cells()
    gen_cfg, roll_cfg, _ = config.stage_configs()

    @task(cache_policy=NONE, persist_result=False)
    def one_scenario(i: int) -> int:
        async def work():
            made = await generate_jobs(scenario_jobs(cells, i, i + 1), model, catalog(), gen_cfg)
            rolled = await rollout(made.rows, RolloutModels(model, model, model), catalog(), roll_cfg)
            return made, rolled

        made, rolled = asyncio.run(work())
        commit_shard(run, "scenarios", "generate", f"s{i:06d}", made.rows)
        commit_shard(run, "trajectories", "rollout", f"s{i:06d}", rolled.rows)
        return len(rolled.rows)

    @flow(name="bench-task-per-scenario", task_runner=ThreadPoolTaskRunner(max_workers=os.cpu_count()))
    def per_scenario(n: int) -> int:
        futures = [one_scenario.submit(i) for i in range(n)]
        return sum(f.result() for f in futures)

    start = time.perf_counter()
    done = per_scenario(scenarios)
    wall = time.perf_counter() - start
    assert done == scenarios
    return {"wall_s": wall}


KINDS = {"factory": measure_factory, "factory-cold": lambda n: measure_factory(n, cold=True), "core": measure_core, "per-scenario": measure_per_scenario}


def one(kind: str, scenarios: int, env: dict) -> dict:
    """One measurement in a fresh process."""
    out = subprocess.run(
        [sys.executable, __file__, "--one", kind, str(scenarios)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"{kind} at {scenarios} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_of(kind: str, scenarios: int, env: dict, repeats: int) -> dict:
    runs = [one(kind, scenarios, env) for _ in range(repeats)]
    walls = [r["wall_s"] for r in runs]
    best = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]
    return {**best, "wall_s": statistics.median(walls), "wall_s_all": walls, "scenarios": scenarios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts, for a check that it works")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", nargs=2, metavar=("KIND", "SCENARIOS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        kind, n = args.one
        print(json.dumps(KINDS[kind](int(n))))
        return

    small, large, naive = (200, 1000, 50) if args.quick else (1000, 10_000, 200)
    from flows.runtime import prefect_api

    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="bench-prefect-"))
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    with prefect_api() as url:
        env = {**os.environ, "PREFECT_API_URL": url, "PYTHONPATH": str(REPO)}
        factory_small = median_of("factory", small, env, args.repeats)
        factory_large = median_of("factory", large, env, args.repeats)
        factory_cold = median_of("factory-cold", large, env, 1)
        core_large = median_of("core", large, env, args.repeats)
        baseline = median_of("per-scenario", naive, env, args.repeats)

    per_s = large / factory_large["wall_s"]
    baseline_per_s = naive / baseline["wall_s"]
    result = {
        "scenarios_per_s": round(per_s, 1),
        "speedup_vs_task_per_scenario": round(per_s / baseline_per_s, 1),
        "peak_rss_mb_1k": round(factory_small["all_processes_peak_rss_mb"], 1),
        "peak_rss_mb_10k": round(factory_large["all_processes_peak_rss_mb"], 1),
        "driver_peak_rss_mb_1k": round(factory_small["driver_peak_rss_mb"], 1),
        "driver_peak_rss_mb_10k": round(factory_large["driver_peak_rss_mb"], 1),
        "largest_process_peak_rss_mb_1k": round(factory_small["largest_process_peak_rss_mb"], 1),
        "largest_process_peak_rss_mb_10k": round(factory_large["largest_process_peak_rss_mb"], 1),
        "orchestration_overhead_ms_per_scenario": round(
            1000 * (factory_large["wall_s"] - core_large["wall_s"]) / large, 3
        ),
        "core_only_scenarios_per_s": round(large / core_large["wall_s"], 1),
        "cold_scenarios_per_s": round(large / factory_cold["wall_s"], 1),
        "cold_start_s": round(factory_cold["wall_s"] - factory_large["wall_s"], 1),
        "task_per_scenario_ms": round(1000 * baseline["wall_s"] / naive, 2),
        "model_calls_per_scenario": round(factory_large["calls"] / large, 2),
        "runs": {"factory_small": factory_small, "factory_large": factory_large, "factory_cold": factory_cold,
                 "core": core_large,
                 "task_per_scenario": baseline},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
        "versions": {p: metadata.version(p) for p in ("prefect", "prefect-ray", "ray", "pyarrow")},
        "date": datetime.now(UTC).date().isoformat(),
        "shard_size": SHARD_SIZE,
        "concurrency": CONCURRENCY,
    }
    print(f"{'':<34}{'value':>12}")
    for key in ("scenarios_per_s", "cold_scenarios_per_s", "cold_start_s", "core_only_scenarios_per_s", "task_per_scenario_ms",
                "speedup_vs_task_per_scenario", "orchestration_overhead_ms_per_scenario",
                "peak_rss_mb_1k", "peak_rss_mb_10k", "driver_peak_rss_mb_1k", "driver_peak_rss_mb_10k",
                "largest_process_peak_rss_mb_1k", "largest_process_peak_rss_mb_10k"):
        print(f"{key:<40}{result[key]:>12}")
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
