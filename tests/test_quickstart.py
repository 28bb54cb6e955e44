"""The README's quickstart, as a new user runs it: `autosafe run` on the embedded default
(SmolLM2 on the CPU, local Ray, local storage), then `autosafe show RUN_ID --json`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
QUICKSTART_LIMIT_S = 15 * 60


@pytest.mark.slow
@pytest.mark.timeout(QUICKSTART_LIMIT_S + 300)  # the run's own limit, then `show`: not the suite's 900 s
def test_the_quickstart_fills_every_table_of_the_dataset_path(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    storage = tmp_path / "autosafe-data"
    autosafe = [sys.executable, "-m", "flows.cli"]

    run = subprocess.run(
        [*autosafe, "run", "--run-id", "quickstart", "--storage", str(storage)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=QUICKSTART_LIMIT_S,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1].startswith("run quickstart done")

    show = subprocess.run(
        [*autosafe, "show", "quickstart", "--storage", str(storage), "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert show.returncode == 0, show.stderr[-3000:]
    summary = json.loads(show.stdout)
    print(f"quickstart tables: {summary['tables']}; safety: {summary['safety']}")
    for table in ("scenarios", "trajectories", "safe_samples", "dataset", "training", "eval"):
        assert summary["tables"][table] > 0, f"{table} is empty: {summary['tables']}"
    # The dataset stage committed its splits; what it kept passed the quality filter and dedup.
    commits = storage / "runs" / "quickstart" / "dataset" / "_commits" / "dataset"
    assert sorted(p.stem for p in commits.glob("*.json")) == ["test", "train", "validation"]
    assert summary["counters"]["dataset.quality_dropped"] + summary["counters"]["dataset.dedup_dropped"] + summary[
        "tables"
    ]["dataset"] <= summary["tables"]["safe_samples"]
    # A short LoRA trained on the train split, and the evaluation compared base and tuned agents.
    training = summary["training"]
    assert training["status"] == "done" and training["method"] == "lora", training
    assert (Path(training["adapter"]) / "adapter_config.json").is_file()
    evaluation = summary["evaluation"]["synthetic"]
    assert evaluation["cases"] > 0 and Path(evaluation["report"]).is_file(), evaluation
    labels = {row["model_label"] for row in _eval_rows(storage)}
    assert labels == {"base", "tuned"}


def _eval_rows(storage: Path) -> list[dict]:
    from autosafe_core.evaluation.evaluations import current_rows
    from autosafe_core.store import Run
    from autosafe_core.store.location import StorageConfig

    run = Run(run_id="quickstart", storage=StorageConfig(uri=str(storage)))
    return [row.model_dump() for row in current_rows(run)]
