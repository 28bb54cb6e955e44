"""A run as the store sees it: an id, where its tables live, and the lineage its rows carry.

Flows build one `Run` at the start and hand it to every task; it is small and picklable,
so it crosses Prefect and Ray boundaries as a value. `config_hash` is the one definition
of a configuration's identity. This module knows nothing about tables or file layout.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from autosafe_core.store.location import StorageConfig

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
"""Run ids, stages and shard ids: they become path segments, so no '/', '=' or spaces."""


def check_name(kind: str, value: str) -> str:
    """`value` if it is a safe path segment, else ValueError naming `kind`."""
    if not isinstance(value, str) or not NAME.match(value):
        raise ValueError(f"{kind} {value!r}: letters, digits, '.', '_' and '-' only, 1-128 characters")
    return value


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace; pydantic models by their JSON dump."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def config_hash(obj: Any) -> str:
    """sha256 (hex) of the canonical JSON of a configuration (a model or plain data)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


class Run(BaseModel):
    """The address of a run and the lineage every row it writes carries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str
    storage: StorageConfig = Field(default_factory=StorageConfig)
    config_hash: str = Field("", description="config_hash() of the run's resolved configuration.")
    prompt_versions: dict[str, str] = Field(default_factory=dict, description="role -> prompt version")
    model_ids: dict[str, str] = Field(default_factory=dict, description="role -> model id")

    @field_validator("run_id")
    @classmethod
    def _run_id_is_a_name(cls, v: str) -> str:
        return check_name("run id", v)
