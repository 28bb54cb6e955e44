"""Long-lived engines on a real Ray cluster (`ray start --head` on loopback): `up` starts
them, a run attaches to them and leaves them running, `down` stops them."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import ray
import yaml
from typer.testing import CliRunner

from flows.cli import app
from flows.data_flows import launch
from tests.support.factory import RESPONDER, ids, scripted_config
from tests.support.prefect import prefect_server  # noqa: F401 - fixture

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_cluster(prefect_server, monkeypatch):
    """A one-node cluster on loopback in its own process tree; its workers report to the
    test's Prefect. Token authentication is off: nothing but this machine can reach it."""
    port = free_port()
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PYTHONPATH": str(REPO)}
    ray_cli = str(Path(sys.executable).parent / "ray")
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false",
         "--disable-usage-stats", f"--temp-dir={temp}"],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        yield f"127.0.0.1:{port}"
    finally:
        if ray.is_initialized():
            ray.shutdown()
        head.terminate()
        head.wait(timeout=60)
        shutil.rmtree(temp, ignore_errors=True)


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_a_run_attaches_to_long_lived_engines_and_leaves_them_running(ray_cluster, tmp_path):
    config_file = tmp_path / "engines.yaml"
    config_file.write_text(yaml.safe_dump({"models": {"default": {"backend": "scripted", "model": RESPONDER, "options": {"keep_calls": False}}}}))

    up = invoke("engines", "up", "--config", str(config_file), "--ray-address", ray_cluster)
    assert up.exit_code == 0, up.output
    (line,) = up.output.strip().splitlines()
    name = line.split()[0]
    assert name.startswith("engine-") and line.endswith("serves generator, agent, simulator, evaluator, reflector")

    config = scripted_config(tmp_path / "data", runner="ray", ray_address=ray_cluster, scenarios=6, shard_size=3)
    launch("run", config)
    assert len(ids(config, "scenarios")) == 6

    engine = ray.get_actor(name, namespace="autosafe")
    assert ray.get(engine.stats.remote())["call_count"] > 6, "the run used the long-lived engine"
    assert name in invoke("engines", "list", "--ray-address", ray_cluster).output

    down = invoke("engines", "down", "--config", str(config_file), "--ray-address", ray_cluster)
    assert down.exit_code == 0 and down.output.strip() == f"stopped {name}", down.output
    assert invoke("engines", "list", "--ray-address", ray_cluster).output.strip() == ""


def test_down_needs_a_config_or_all():
    result = invoke("engines", "down")
    assert result.exit_code == 2 and result.output.strip() == "autosafe: engines down: give --config FILE or --all"
