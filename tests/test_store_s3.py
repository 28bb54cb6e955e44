"""The store on the S3 protocol: layout of keys, other writers, kills, and credentials.

Against moto's S3 server on loopback (tests/support/s3.py); the behaviour shared with a
local folder is specified in tests/test_store.py, which runs on both.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from autosafe_core.ots import RiskSource, Scenario
from autosafe_core.store import (
    Run,
    ShardRef,
    StorageConfig,
    commit_shard,
    committed_shards,
    garbage,
    read_records,
    read_table,
    update_manifest,
)
from tests.support.s3 import CREDENTIALS, MotoS3, moto_s3, s3_storage  # noqa: F401 - fixtures
from tests.support.samples import safe_sample

REPO = Path(__file__).resolve().parents[1]


def scenario(i: int) -> Scenario:
    return Scenario(
        id=f"scn-{i}",
        toolkits=["Terminal"],
        risk_outcome="data_loss",
        risk_source=RiskSource.ACTION,
        user_instruction=f"Free some disk space ({i})",
    )


@pytest.fixture
def run(s3_storage: StorageConfig) -> Run:
    return Run(run_id="run-s3", storage=s3_storage, config_hash="c0ffee", model_ids={"agent": "m"})


def keys(moto: MotoS3, storage: StorageConfig) -> list[str]:
    prefix = storage.uri.removeprefix(f"s3://{moto.bucket}/") + "/"
    listing = moto.client().list_objects_v2(Bucket=moto.bucket, Prefix=prefix)
    return sorted(o["Key"].removeprefix(prefix) for o in listing.get("Contents", []))


def test_the_storage_config_points_s3fs_at_its_endpoint(s3_storage, moto_s3):
    fs, root = s3_storage.filesystem()
    assert fs.client_kwargs["endpoint_url"] == moto_s3.endpoint_url
    assert root == s3_storage.uri.removeprefix("s3://")


def test_an_s3_uri_needs_a_bucket():
    with pytest.raises(ValueError, match="needs a bucket"):
        StorageConfig(uri="s3://")


def test_keys_follow_the_layout_of_run_table_stage_and_shard(run, moto_s3):
    commit_shard(run, "scenarios", "generate", "00000", [scenario(0)])
    update_manifest(run, config={"scenarios": 1})
    assert [re.sub(r"part-[0-9a-f]{32}", "part-<attempt>", k) for k in keys(moto_s3, run.storage)] == [
        "runs/run-s3/manifest.json",
        "runs/run-s3/scenarios/_commits/generate/00000.json",
        "runs/run-s3/scenarios/stage=generate/shard=00000/part-<attempt>.parquet",
    ]


def test_a_commit_by_another_writer_is_seen_at_once(run, moto_s3):
    commit_shard(run, "scenarios", "generate", "00000", [scenario(0)])
    assert committed_shards(run, "scenarios", "generate") == {"00000"}
    record = ShardRef(
        run_id=run.run_id,
        table="scenarios",
        stage="generate",
        shard_id="00007",
        path=None,
        rows=0,
        records=0,
        committed_at=datetime.now(UTC),
    )
    prefix = run.storage.uri.removeprefix(f"s3://{moto_s3.bucket}/")
    key = f"{prefix}/runs/run-s3/scenarios/_commits/generate/00007.json"
    moto_s3.client().put_object(Bucket=moto_s3.bucket, Key=key, Body=record.model_dump_json().encode())
    assert committed_shards(run, "scenarios", "generate") == {"00000", "00007"}


def test_a_writer_killed_between_data_and_commit_leaves_nothing_visible(run):
    # A real process, really killed (SIGKILL) once its data file is on the server.
    script = textwrap.dedent(
        f"""
        import os, signal
        from autosafe_core.ots import Scenario
        from autosafe_core.store import Run, commit_shard, shards

        shards._write_commit = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
        run = Run.model_validate_json({run.model_dump_json()!r})
        record = Scenario.model_validate_json({scenario(0).model_dump_json()!r})
        commit_shard(run, "scenarios", "generate", "00000", [record])
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=os.environ, timeout=120, capture_output=True
    )
    assert done.returncode == -9, done.stderr.decode()[-2000:]
    assert len(garbage(run)) == 1
    assert committed_shards(run, "scenarios", "generate") == set()
    assert read_table(run, "scenarios").num_rows == 0
    commit_shard(run, "scenarios", "generate", "00000", [scenario(0)])
    assert read_records(run, "scenarios") == [scenario(0)]


def test_credentials_never_reach_a_stored_object(run, moto_s3):
    commit_shard(run, "scenarios", "generate", "00000", [scenario(0)])
    commit_shard(run, "safe_samples", "safe_actions", "00000", [safe_sample("a")])
    update_manifest(run, config={"storage": run.storage.model_dump(mode="json")})
    client = moto_s3.client()
    prefix = run.storage.uri.removeprefix(f"s3://{moto_s3.bucket}/")
    stored = [
        client.get_object(Bucket=moto_s3.bucket, Key=f"{prefix}/{key}")["Body"].read()
        for key in keys(moto_s3, run.storage)
    ]
    assert len(stored) == 5
    for secret in (CREDENTIALS["AWS_ACCESS_KEY_ID"], CREDENTIALS["AWS_SECRET_ACCESS_KEY"]):
        assert not any(secret.encode() in blob for blob in stored)
