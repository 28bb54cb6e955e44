"""The store: a run's tables as Parquet on a local folder or S3, committed shard by shard.

`Run` says where a run lives and the lineage its rows carry; `commit_shard` stores one
shard of one table atomically and at most once; `read_table` / `read_records` read what
is committed, opening only the partitions asked for; the manifest sums it all up.
"""

from autosafe_core.store.location import StorageConfig
from autosafe_core.store.manifest import (
    ConfigChanged,
    RunChanges,
    RunManifest,
    read_manifest,
    update_manifest,
    write_manifest,
)
from autosafe_core.store.records import ChatMessage, DatasetRow, EvalRow, Split, TrajectoryStepRow
from autosafe_core.store.run import Run, config_hash
from autosafe_core.store.shards import (
    ShardRef,
    collect_garbage,
    commit_shard,
    committed,
    committed_shards,
    garbage,
    read_commit,
    read_records,
    read_table,
    run_ids,
    shard_file,
)
from autosafe_core.store.tables import LINEAGE_COLUMNS, TABLES

__all__ = [
    "LINEAGE_COLUMNS",
    "TABLES",
    "ChatMessage",
    "ConfigChanged",
    "DatasetRow",
    "EvalRow",
    "Run",
    "RunChanges",
    "RunManifest",
    "ShardRef",
    "Split",
    "StorageConfig",
    "TrajectoryStepRow",
    "collect_garbage",
    "commit_shard",
    "committed",
    "committed_shards",
    "config_hash",
    "garbage",
    "read_commit",
    "read_manifest",
    "read_records",
    "read_table",
    "run_ids",
    "shard_file",
    "update_manifest",
    "write_manifest",
]
