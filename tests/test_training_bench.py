"""bench/finetune_gpu.py at its tiny size on the CPU (gloo), so the GPU benchmark keeps working."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_gpu_benchmark_runs_at_tiny_size_and_writes_every_figure(tmp_path):
    out = tmp_path / "finetune-gpu-tiny.json"
    done = subprocess.run(
        [sys.executable, "bench/finetune_gpu.py", "--tiny", "--variants", "zero2,zero3,peft", "--warmup", "1",
         "--steps", "2", "--out", str(out), "--work", str(tmp_path / "work")],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    for key in ("mfu", "mfu_zero3", "tokens_per_s_per_gpu", "peak_mem_gb", "speedup_vs_single_gpu_peft",
                "device", "versions", "date", "command"):  # fmt: skip
        assert key in result, key
    assert set(result["variants"]) == {"zero2", "zero3", "peft_1gpu"}
    assert result["variants"]["zero2"]["devices"] == 2 and result["variants"]["zero2"]["timed_steps"] == 2
    assert result["tokens_per_s_per_gpu"] > 0 and result["speedup_vs_single_gpu_peft"] > 0
    assert result["mfu"] is None, "no MFU on a CPU: it has no bf16 peak to divide by"
    assert done.stdout.strip().splitlines()[-1].startswith("speedup vs single-GPU peft")
