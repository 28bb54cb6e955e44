"""The factory flows end to end on the scripted model: local Ray and threads, re-runs,
a run killed mid-way and resumed, and a faulty OpenAI-compatible server.

Each run goes through a real Prefect API (one local server per session) and real
storage; the model is the instant schema responder, so these tests are about the
factory, not the model.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from autosafe_core.llm.base import ChatRequest, Message
from autosafe_core.llm.registry import ModelSpec
from autosafe_core.store import committed, read_manifest, read_records
from flows.data_flows import launch
from flows.pipeline import MissingInput
from tests.support.factory import CRASHING, ids, run_of, scripted_config
from tests.support.openai_server import openai_server
from tests.support.prefect import prefect_server  # noqa: F401 - fixture
from tests.support.schema_responder import respond

REPO = Path(__file__).resolve().parent.parent
TABLES = ("scenarios", "trajectories", "safe_samples", "dataset")


def commits(config) -> dict[tuple[str, str, str], tuple[str, str]]:
    """(table, stage, shard) -> (committed_at, content hash) of every commit of the run."""
    run = run_of(config)
    return {
        (ref.table, ref.stage, ref.shard_id): (ref.committed_at.isoformat(), ref.content_hash)
        for table in (*TABLES, "rejections")
        for ref in committed(run, table)
    }


def assert_complete(config) -> None:
    """Every scenario made, rolled out once, every record unique."""
    scenarios = ids(config, "scenarios")
    trajectories = read_records(run_of(config), "trajectories")
    assert len(scenarios) == config.scenarios == len(set(scenarios))
    assert sorted(t.scenario_id for t in trajectories) == sorted(scenarios)
    for table in ("safe_samples", "dataset"):
        found = ids(config, table)
        assert len(found) == len(set(found)), f"{table} has duplicate ids"
    assert ids(config, "dataset"), "the dataset is empty"


def test_the_factory_on_local_ray_makes_every_table_and_a_rerun_commits_nothing(prefect_server, tmp_path):
    config = scripted_config(tmp_path / "data", runner="ray", scenarios=16, shard_size=4)
    first = launch("run", config)
    assert_complete(config)
    assert {name: first.tables[name].shards for name in ("scenarios", "trajectories", "safe_samples")} == {
        "scenarios": 4,
        "trajectories": 4,
        "safe_samples": 4,
    }
    assert first.usage_by_role["agent"].calls > 0 and first.usage_by_role["generator"].calls == 16
    before = commits(config)

    second = launch("run", config)

    assert commits(config) == before
    assert {k: v.rows for k, v in second.tables.items()} == {k: v.rows for k, v in first.tables.items()}


def test_the_stage_flows_run_in_order_and_refuse_a_stage_without_its_input(prefect_server, tmp_path):
    config = scripted_config(tmp_path / "data", scenarios=6, shard_size=3)
    with pytest.raises(MissingInput, match="run the generate stage first"):
        launch("rollout", config)
    launch("generate", config)
    assert len(ids(config, "scenarios")) == 6 and not ids(config, "trajectories")
    launch("rollout", config)
    launch("safe-dataset", config)
    assert_complete(config)


def test_a_killed_run_resumes_without_losing_or_duplicating_a_row(prefect_server, tmp_path):
    config = scripted_config(tmp_path / "data", scenarios=12, shard_size=2, concurrency=2, responder=CRASHING)
    config_file = tmp_path / "factory.json"
    config_file.write_text(config.model_dump_json())
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PYTHONPATH": str(REPO), "AUTOSAFE_TEST_CRASH_AFTER": "60"}
    command = [sys.executable, "-m", "flows.cli", "run", "--config", str(config_file)]

    killed = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)

    assert killed.returncode == 137, killed.stderr[-2000:]
    survived = commits(config)
    assert survived, "nothing was committed before the crash"
    assert ("dataset", "dataset", "train") not in survived, "the run finished before the crash"

    env.pop("AUTOSAFE_TEST_CRASH_AFTER")
    resumed = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)

    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = commits(config)
    assert {k: after[k] for k in survived} == survived, "a committed shard was rewritten"
    assert_complete(config)


def _as_chat_request(body: dict) -> ChatRequest:
    schema = body["response_format"]["json_schema"]["schema"]
    messages = tuple(Message(role=m["role"], content=m["content"]) for m in body["messages"])
    return ChatRequest(messages=messages, json_schema=schema)


def test_a_server_failing_a_fifth_of_calls_still_yields_a_complete_valid_run(prefect_server, tmp_path):
    with openai_server(lambda body: respond(_as_chat_request(body)), fault_rate=0.2, seed=3) as server:
        spec = ModelSpec(
            backend="openai",
            model="scripted-server",
            base_url=server.base_url,
            api_key_env="AUTOSAFE_TEST_KEY",
            timeout_s=0.5,
            max_retries=8,
            options={"backoff_s": 0.01, "max_backoff_s": 0.05},
        )
        os.environ["AUTOSAFE_TEST_KEY"] = "sk-test-not-a-secret"
        config = scripted_config(tmp_path / "data", scenarios=8, shard_size=4, models={"default": spec.model_dump()})
        manifest = launch("run", config)
        injected = Counter(server.faults_injected)

    assert_complete(config)
    engine = next(iter(manifest.extra["engines"].values()))
    assert engine["retries"] > 0 and engine["calls"] > 0
    assert "rollout.rejections" in manifest.counters and "generate.model_errors" in manifest.counters
    stored = read_manifest(run_of(config)).model_dump_json()
    assert "sk-test-not-a-secret" not in stored
    assert sum(injected.values()) > 0


def test_a_run_publishes_its_summary_as_a_prefect_artifact(prefect_server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.summary_artifact import artifact_key

    config = scripted_config(tmp_path / "data", run_id="Art_1", scenarios=6, shard_size=3)
    manifest = launch("run", config)

    async def artifacts():
        async with get_client() as client:
            only = ArtifactFilter(key=ArtifactFilterKey(any_=["autosafe-run-art-1"]))
            return await client.read_artifacts(artifact_filter=only)

    (artifact,) = asyncio.run(artifacts())
    assert artifact_key("Art_1") == "autosafe-run-art-1" and artifact.type == "markdown"
    text = artifact.data
    assert "| scenarios | 6 | 2 |" in text and f"| safe_samples | {manifest.tables['safe_samples'].rows} |" in text
    assert f"| generator | {manifest.usage_by_role['generator'].calls} |" in text
    assert "| trajectories | 6 |" in text and "risk-triggered" in text
    assert all(f"| {stage} | " in text for stage in ("generate", "rollout", "safe_actions", "dataset"))
