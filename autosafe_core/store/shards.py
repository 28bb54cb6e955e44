"""Shards of a run's tables, committed atomically: a reader never sees half a shard.

Layout under the storage root:

    runs/<run_id>/<table>/stage=<stage>/shard=<shard_id>/part-<attempt>.parquet
    runs/<run_id>/<table>/_commits/<stage>/<shard_id>.json

A commit writes the Parquet file under a name no other attempt uses, then the commit
record that names it (one atomic object write, first writer wins). Readers list commit
records and open only the files those name, so the part of a crashed or losing attempt
is invisible garbage, and a shard is committed at most once: re-running a run skips
committed shards, and no row is stored twice. Commit a shard's side tables (rejections)
before its main table, so the main table's commit is what marks the shard done.
This module knows nothing about what the rows mean.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem
from pydantic import BaseModel, Field, ValidationError

from autosafe_core.ots import Record, Usage
from autosafe_core.store.location import StorageConfig, is_temporary, join, put_whole
from autosafe_core.store.run import Run, check_name
from autosafe_core.store.tables import TABLES, Lineage, from_arrow, table, to_arrow, usage_of

if TYPE_CHECKING:
    import pyarrow.dataset as ds

COMMITS = "_commits"


class ShardRef(Record):
    """A committed shard: what flows pass around instead of its rows; also its commit record."""

    run_id: str
    table: str
    stage: str
    shard_id: str
    path: str | None = Field(description="The data file, relative to the run's folder; none for 0 rows.")
    rows: int = Field(ge=0, description="Rows stored (a trajectory stores one per step).")
    records: int = Field(ge=0, description="Records committed (trajectories, scenarios...).")
    usage: Usage = Field(default_factory=Usage, description="Tokens spent on the records, from their provenance.")
    role_usage: dict[str, Usage] = Field(default_factory=dict, description="Tokens by role, as the task counted.")
    counters: dict[str, int] = Field(default_factory=dict, description="Retries, rejects, cache hits...")
    content_hash: str = Field("", description="sha256 of the data file.")
    committed_at: datetime


def run_dir(run: Run) -> tuple[AbstractFileSystem, str]:
    """The run's filesystem and its folder in it."""
    fs, root = run.storage.filesystem()
    return fs, join(root, "runs", run.run_id)


def run_ids(storage: StorageConfig) -> list[str]:
    """The ids of the runs stored under `storage`, sorted (a run exists once it has a folder)."""
    fs, root = storage.filesystem()
    return sorted(name for name in _names(fs, join(root, "runs")) if not is_temporary(name))


def shard_file(run: Run, ref: ShardRef) -> str | None:
    """The path of a committed shard's data file in the run's filesystem (None for 0 rows)."""
    return join(run_dir(run)[1], ref.path) if ref.path else None


def _commit_path(run_path: str, table_name: str, stage: str, shard_id: str) -> str:
    return join(run_path, table_name, COMMITS, stage, f"{shard_id}.json")


def _check(table_name: str, stage: str | None = None, shard_id: str | None = None) -> None:
    table(table_name)
    if stage is not None:
        check_name("stage", stage)
    if shard_id is not None:
        check_name("shard id", shard_id)


def commit_shard(
    run: Run,
    table_name: str,
    stage: str,
    shard_id: str,
    records: Sequence[BaseModel],
    *,
    counters: Mapping[str, int] | None = None,
    role_usage: Mapping[str, Usage] | None = None,
) -> ShardRef:
    """Store `records` as shard `shard_id` of (table, stage), once: a committed shard is left as it is.

    counters, role_usage: the task's own accounting, summed into the run manifest.
    """
    _check(table_name, stage, shard_id)
    existing = read_commit(run, table_name, stage, shard_id)
    if existing is not None:
        return existing
    fs, run_path = run_dir(run)
    now = datetime.now(UTC)
    lineage = Lineage(
        run_id=run.run_id,
        stage=stage,
        shard=shard_id,
        config_hash=run.config_hash,
        prompt_versions=run.prompt_versions,
        model_ids=run.model_ids,
        created_at=now.isoformat(),
    )
    data = to_arrow(table_name, records, lineage)
    path, content_hash = None, ""
    if data.num_rows:
        path = join(table_name, f"stage={stage}", f"shard={shard_id}", f"part-{uuid.uuid4().hex}.parquet")
        blob = _parquet_bytes(data)
        content_hash = hashlib.sha256(blob).hexdigest()
        _write_data(fs, join(run_path, path), blob)
    ref = ShardRef(
        run_id=run.run_id,
        table=table_name,
        stage=stage,
        shard_id=shard_id,
        path=path,
        rows=data.num_rows,
        records=len(records),
        usage=usage_of(records),
        role_usage=dict(role_usage or {}),
        counters=dict(counters or {}),
        content_hash=content_hash,
        committed_at=now,
    )
    try:
        _write_commit(fs, _commit_path(run_path, table_name, stage, shard_id), ref, run.storage.conditional_writes)
    except FileExistsError:
        # Another attempt committed this shard between our check and our commit: it stands,
        # and our file is garbage nobody will read.
        if path is not None:
            fs.rm_file(join(run_path, path))
        winner = read_commit(run, table_name, stage, shard_id)
        if winner is None:
            raise
        return winner
    return ref


def _parquet_bytes(data: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(data, buffer, compression="zstd")
    return buffer.getvalue()


def _write_data(fs: AbstractFileSystem, path: str, blob: bytes) -> None:
    """Step 1 of a commit: the data file, under a name only this attempt uses."""
    put_whole(fs, path, blob)


def _write_commit(fs: AbstractFileSystem, path: str, ref: ShardRef, exclusive: bool) -> None:
    """Step 2 of a commit: the record that makes the data file visible."""
    put_whole(fs, path, ref.model_dump_json(indent=1).encode(), exclusive=exclusive)


def read_commit(run: Run, table_name: str, stage: str, shard_id: str) -> ShardRef | None:
    """The commit record of one shard, or None when it is not committed."""
    _check(table_name, stage, shard_id)
    fs, run_path = run_dir(run)
    path = _commit_path(run_path, table_name, stage, shard_id)
    try:
        blob = fs.cat_file(path)
    except FileNotFoundError:
        return None
    return _parse_commit(path, blob)


def _parse_commit(path: str, blob: bytes) -> ShardRef:
    try:
        return ShardRef.model_validate_json(blob)
    except ValidationError as e:
        first = e.errors()[0]
        raise ValueError(f"{path}: not a commit record ({'.'.join(map(str, first['loc']))}: {first['msg']})") from None


def committed_shards(run: Run, table_name: str, stage: str) -> set[str]:
    """The shard ids of (table, stage) that are committed: what a resumed run skips."""
    _check(table_name, stage)
    fs, run_path = run_dir(run)
    return {
        name.removesuffix(".json")
        for name in _names(fs, join(run_path, table_name, COMMITS, stage))
        if name.endswith(".json") and not is_temporary(name)
    }


def _names(fs: AbstractFileSystem, folder: str) -> list[str]:
    try:
        return [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False)]
    except FileNotFoundError:
        return []


def committed(
    run: Run,
    table_name: str,
    stages: Iterable[str] | None = None,
    shards: Iterable[str] | None = None,
) -> list[ShardRef]:
    """The commit records of a table, by stage then shard id; only the named partitions are listed."""
    _check(table_name)
    fs, run_path = run_dir(run)
    commits = join(run_path, table_name, COMMITS)
    stage_list = sorted({check_name("stage", s) for s in stages}) if stages is not None else _names(fs, commits)
    if shards is not None:
        wanted = sorted({check_name("shard id", s) for s in shards})
        paths = [join(commits, stage, f"{shard}.json") for stage in stage_list for shard in wanted]
    else:
        paths = [
            join(commits, stage, name)
            for stage in stage_list
            for name in _names(fs, join(commits, stage))
            if name.endswith(".json") and not is_temporary(name)
        ]
    refs = [_parse_commit(p, blob) for p, blob in _read_many(fs, paths).items()]
    return sorted(refs, key=lambda r: (r.stage, r.shard_id))


def _read_many(fs: AbstractFileSystem, paths: list[str]) -> dict[str, bytes]:
    """The bytes of the files that exist among `paths` (fetched concurrently on S3)."""
    if not paths:
        return {}
    found = fs.cat(paths, on_error="return")
    if not isinstance(found, dict):  # one path comes back bare
        found = {paths[0]: found}
    out = {}
    for path, blob in found.items():
        if isinstance(blob, FileNotFoundError):
            continue
        if isinstance(blob, BaseException):
            raise blob
        out[path] = blob
    return out


def read_table(
    run: Run,
    table_name: str,
    stages: Iterable[str] | None = None,
    shards: Iterable[str] | None = None,
    columns: list[str] | None = None,
    filter: ds.Expression | None = None,  # noqa: A002 - pyarrow's own name for it
) -> pa.Table:
    """The committed rows of a table, lineage columns included; only the named partitions' files are opened."""
    spec = table(table_name)
    refs = committed(run, table_name, stages, shards)
    fs, run_path = run_dir(run)
    paths = [join(run_path, r.path) for r in refs if r.path]
    if not paths:
        data = spec.schema.empty_table()
        data = data.filter(filter) if filter is not None else data
        return data.select(columns) if columns is not None else data
    if filter is None:
        return _read_files(fs, paths, spec.schema if columns is None else pa.schema([spec.schema.field(c) for c in columns]))
    # pyarrow.dataset imports pandas (0.2-0.5 s): only filtered reads pay for it.
    import pyarrow.dataset as ds

    dataset = ds.dataset(paths, schema=spec.schema, format="parquet", filesystem=fs)
    return dataset.to_table(columns=columns, filter=filter)


def _read_files(fs: AbstractFileSystem, paths: list[str], schema: pa.Schema) -> pa.Table:
    """The Parquet files at `paths` (fetched concurrently on S3), in that order, in `schema`,
    as `ds.dataset(paths, schema=...).to_table()` gives them: a column a file lacks comes back
    null, a column it has is cast to the table's type. A file a commit names must exist."""
    blobs = _read_many(fs, paths)
    missing = [path for path in paths if path not in blobs]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: named by a commit record, but not there")
    return pa.concat_tables([_conform(blobs[path], schema) for path in paths])


def _conform(blob: bytes, schema: pa.Schema) -> pa.Table:
    parquet = pq.ParquetFile(pa.BufferReader(blob))
    data = parquet.read(columns=[name for name in schema.names if name in parquet.schema_arrow.names])
    return pa.table(
        [
            data.column(f.name).cast(f.type) if f.name in data.column_names else pa.nulls(len(data), f.type)
            for f in schema
        ],
        schema=schema,
    )


def read_records(
    run: Run,
    table_name: str,
    stages: Iterable[str] | None = None,
    shards: Iterable[str] | None = None,
    filter: ds.Expression | None = None,  # noqa: A002
) -> list[Any]:
    """The committed records of a table (Trajectory for trajectories), in stage and shard order.

    filter: on trajectories, filter on trajectory columns only, or steps go missing.
    """
    return from_arrow(table_name, read_table(run, table_name, stages, shards, filter=filter))


def garbage(run: Run) -> list[str]:
    """Files of the run that no commit names: parts of crashed or losing attempts, unfinished writes."""
    fs, run_path = run_dir(run)
    named = {shard_file(run, ref) for name in TABLES for ref in committed(run, name)}
    out = []
    for path in fs.find(run_path):
        name = path.rsplit("/", 1)[-1]
        is_part = "/stage=" in path and name.startswith("part-")
        if is_temporary(name) or (is_part and path not in named):
            out.append(path)
    return sorted(out)


def collect_garbage(run: Run) -> list[str]:
    """Delete `garbage(run)` and return what went; only while no writer of this run is live,
    since an attempt in flight looks like garbage until its commit lands."""
    fs, _ = run_dir(run)
    paths = garbage(run)
    for path in paths:
        fs.rm_file(path)
    return paths
