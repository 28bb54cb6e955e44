"""Factory configs for flow tests and benchmarks: every role on the instant, stateless
schema responder (tests/support/schema_responder.py), storage in a given folder or URI.
"""

from __future__ import annotations

import os
from typing import Any

from autosafe_core.llm.registry import ModelSpec
from autosafe_core.store import Run, StorageConfig, read_records
from flows.config import FactoryConfig
from flows.pipeline import make_run

RESPONDER = "tests.support.schema_responder:respond"
CRASHING = "tests.support.factory:respond_then_crash"


def scripted_config(storage: StorageConfig | str, **fields: Any) -> FactoryConfig:
    """A run of the factory with every role scripted; `fields` override FactoryConfig's."""
    spec = ModelSpec(backend="scripted", model=fields.pop("responder", RESPONDER), options={"keep_calls": False})
    storage = storage if isinstance(storage, StorageConfig) else StorageConfig(uri=str(storage))
    data: dict[str, Any] = {
        "run_id": "test-run",
        "scenarios": 12,
        "shard_size": 4,
        "runner": "threads",
        "models": {"default": spec.model_dump()},
        "finetune": False,
        "evaluate": False,
        "dataset": {"embeddings": False},
    }
    data.update(fields)
    data["storage"] = storage.model_dump()
    return FactoryConfig.model_validate(data)


def ids(config: FactoryConfig, table: str) -> list[str]:
    """Every record id of a committed table (trajectories by trajectory)."""
    return [r.id for r in read_records(make_run(config), table)]


def run_of(config: FactoryConfig) -> Run:
    return make_run(config)


_calls = 0


def respond_then_crash(request):
    """The schema responder, until call AUTOSAFE_TEST_CRASH_AFTER: then the process dies
    at once, as a killed worker does (no cleanup, no exception handlers)."""
    from tests.support.schema_responder import respond

    global _calls
    _calls += 1
    limit = int(os.environ.get("AUTOSAFE_TEST_CRASH_AFTER", "0"))
    if limit and _calls > limit:
        os._exit(137)
    return respond(request)
