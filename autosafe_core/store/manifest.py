"""The run manifest: what a run was asked to do, with what code, prompts and models, and what it holds.

One JSON object at `runs/<run_id>/manifest.json`, rewritten whole (last writer wins).
Row counts, token totals and counters are recomputed from the commit records on every
update, so the manifest is a summary that can always be derived again, never the only
copy of a fact. Resuming a run id under a different configuration is refused, since
the skipped shards were made by the old one. This module knows nothing about flows.
"""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from autosafe_core.ots import Record, Usage
from autosafe_core.store.location import join, put_whole
from autosafe_core.store.run import Run, config_hash
from autosafe_core.store.shards import ShardRef, committed, run_dir
from autosafe_core.store.tables import TABLES

MANIFEST = "manifest.json"
PACKAGE = "autosafe-factory"


class TableSummary(Record):
    """What the commit records of one table add up to."""

    shards: int = 0
    rows: int = 0
    records: int = 0
    usage: Usage = Field(default_factory=Usage)


class RunChanges(Record):
    """What one run of a series (a night of the nightly) added, next to the runs before it."""

    previous_runs: list[str] = Field(
        default_factory=list, description="Earlier runs of the series it was deduplicated against."
    )
    new_rows: dict[str, int] = Field(default_factory=dict, description="Rows this run committed, per table.")
    rejected_rows: int = Field(0, description="Rows of `rejections`: model outputs and samples left out, with reasons.")
    duplicates_of_earlier: int = Field(0, description="Samples left out as duplicates of an earlier run's dataset.")
    tokens: Usage = Field(default_factory=Usage, description="Tokens this run spent, every role.")


class RunManifest(Record):
    """Configuration, code, prompts, models and contents of one run."""

    run_id: str
    created_at: datetime
    updated_at: datetime
    config: dict[str, Any] = Field(default_factory=dict, description="The resolved configuration.")
    config_hash: str = ""
    code_version: str = ""
    prompt_versions: dict[str, str] = Field(default_factory=dict)
    model_ids: dict[str, str] = Field(default_factory=dict)
    tables: dict[str, TableSummary] = Field(default_factory=dict, description="Derived from commit records.")
    usage_by_role: dict[str, Usage] = Field(default_factory=dict, description="Derived from commit records.")
    counters: dict[str, int] = Field(default_factory=dict, description="Derived from commit records.")
    extra: dict[str, Any] = Field(default_factory=dict, description="Later flows' results by name (training, eval).")
    changes: RunChanges | None = Field(None, description="What the run added to its series; none outside a series.")

    def rows(self, table_name: str) -> int:
        summary = self.tables.get(table_name)
        return summary.rows if summary else 0


class ConfigChanged(ValueError):
    """A run id was resumed under a configuration other than the one that started it."""


def manifest_path(run: Run) -> str:
    return join(run_dir(run)[1], MANIFEST)


def read_manifest(run: Run) -> RunManifest | None:
    """The run's manifest, or None before the first write."""
    fs, _ = run_dir(run)
    path = manifest_path(run)
    try:
        blob = fs.cat_file(path)
    except FileNotFoundError:
        return None
    try:
        return RunManifest.model_validate_json(blob)
    except ValidationError as e:
        first = e.errors()[0]
        raise ValueError(f"{path}: not a run manifest ({'.'.join(map(str, first['loc']))}: {first['msg']})") from None


def write_manifest(run: Run, manifest: RunManifest) -> None:
    """Replace the run's manifest with `manifest`, atomically."""
    if manifest.run_id != run.run_id:
        raise ValueError(f"manifest of run {manifest.run_id!r} cannot be written to run {run.run_id!r}")
    fs, _ = run_dir(run)
    put_whole(fs, manifest_path(run), manifest.model_dump_json(indent=2).encode())


def update_manifest(
    run: Run,
    *,
    config: BaseModel | dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    changes: RunChanges | None = None,
    allow_config_change: bool = False,
) -> RunManifest:
    """Write the manifest with the run's lineage and totals recomputed from its commits.

    config: the resolved configuration (its hash is the run's unless the run has one).
    extra: merged by key into `extra` (e.g. {"training": {...}}).
    changes: replaces `changes` (what the run added to its series).
    allow_config_change: record a new configuration for a run that has another one.
    """
    now = datetime.now(UTC)
    old = read_manifest(run)
    manifest = old or RunManifest(run_id=run.run_id, created_at=now, updated_at=now)
    update: dict[str, Any] = {"updated_at": now, "code_version": code_version()}
    if config is not None:
        data = config.model_dump(mode="json") if isinstance(config, BaseModel) else dict(config)
        update["config"] = data
        update["config_hash"] = run.config_hash or config_hash(data)
    elif run.config_hash:
        update["config_hash"] = run.config_hash
    new_hash = update.get("config_hash", manifest.config_hash)
    if old is not None and old.config_hash and new_hash != old.config_hash and not allow_config_change:
        raise ConfigChanged(
            f"run {run.run_id}: made with config hash {old.config_hash[:12]}, now {new_hash[:12]}; "
            "use a new run id (resuming would mix data of two configurations)"
        )
    if run.prompt_versions:
        update["prompt_versions"] = run.prompt_versions
    if run.model_ids:
        update["model_ids"] = run.model_ids
    if extra:
        update["extra"] = {**manifest.extra, **extra}
    if changes is not None:
        update["changes"] = changes
    update.update(summarise([ref for name in TABLES for ref in committed(run, name)]))
    manifest = RunManifest.model_validate({**manifest.model_dump(), **update})
    write_manifest(run, manifest)
    return manifest


def summarise(refs: list[ShardRef]) -> dict[str, Any]:
    """Per-table totals, tokens by role and counters, summed over commit records."""
    tables: dict[str, TableSummary] = {}
    by_role: dict[str, Usage] = {}
    counters: dict[str, int] = {}
    for ref in refs:
        summary = tables.setdefault(ref.table, TableSummary())
        summary.shards += 1
        summary.rows += ref.rows
        summary.records += ref.records
        summary.usage = summary.usage + ref.usage
        for role, usage in ref.role_usage.items():
            by_role[role] = by_role.get(role, Usage()) + usage
        for key, value in ref.counters.items():
            counters[key] = counters.get(key, 0) + value
    return {"tables": tables, "usage_by_role": by_role, "counters": counters}


@cache
def code_version() -> str:
    """The package version, plus the git commit in a checkout: '0.1.0+g1a2b3c4d5e6f' ('.dirty' if edited)."""
    try:
        version = metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        version = "unknown"
    try:
        sha = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12", "--exclude=*"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}+g{sha.replace('-', '.')}" if sha else version
