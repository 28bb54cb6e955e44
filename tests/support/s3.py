"""A real S3 endpoint on loopback for tests: moto's server in a subprocess, one per session.

`moto_s3` starts `moto_server` on a free port of 127.0.0.1, waits until it answers,
creates a bucket with boto3 (s3fs's mkdir trips on moto's location constraint) and sets
dummy credentials in the environment, where s3fs finds them as it would real ones.
`s3_storage` gives each test its own prefix in that bucket. Import both into a test
module to use them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from autosafe_core.store.location import StorageConfig

BUCKET = "autosafe-test"
REGION = "us-east-1"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "moto-test-key",
    "AWS_SECRET_ACCESS_KEY": "moto-test-secret-do-not-log",
    "AWS_DEFAULT_REGION": REGION,
}


@dataclass(frozen=True)
class MotoS3:
    endpoint_url: str
    bucket: str

    def client(self):
        """A boto3 client of the endpoint, for looking behind the store's back."""
        return _client(self.endpoint_url)


def _client(endpoint_url: str):
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=REGION,
        config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5),
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _moto_command(port: int) -> list[str]:
    script = Path(sys.executable).with_name("moto_server")
    base = [str(script)] if script.exists() else [sys.executable, "-m", "moto.server"]
    return [*base, "-H", "127.0.0.1", "-p", str(port)]


def _wait_until_serving(process: subprocess.Popen, endpoint_url: str, timeout_s: float = 60.0) -> None:
    client = _client(endpoint_url)
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with {process.returncode} before serving")
        try:
            client.list_buckets()
            return
        except (BotoCoreError, ClientError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto_server at {endpoint_url} did not answer in {timeout_s} s") from None
            # A short pause between polls, so the server gets the CPU to start.
            time.sleep(0.05)


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """A running S3 endpoint with an empty bucket, and credentials in the environment."""
    with pytest.MonkeyPatch.context() as env:
        for key, value in CREDENTIALS.items():
            env.setenv(key, value)
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            env.delenv(key, raising=False)
        port = _free_port()
        endpoint_url = f"http://127.0.0.1:{port}"
        process = subprocess.Popen(
            _moto_command(port),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ},
        )
        try:
            _wait_until_serving(process, endpoint_url)
            _client(endpoint_url).create_bucket(Bucket=BUCKET)
            yield MotoS3(endpoint_url=endpoint_url, bucket=BUCKET)
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def s3_storage(moto_s3: MotoS3) -> StorageConfig:
    """Storage under a prefix of the bucket that no other test uses."""
    return StorageConfig(uri=f"s3://{moto_s3.bucket}/{uuid.uuid4().hex[:12]}", endpoint_url=moto_s3.endpoint_url)
