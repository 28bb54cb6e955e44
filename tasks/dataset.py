"""Stage 4 as a Prefect task: D_safe from every committed safe sample of the run.

Quality filter, then exact and embedding dedup (they need the whole run at once, so
this is one task, not one per shard), then the split by scenario and the SFT export.
Each split is committed as its own shard of `dataset` (shard id = split name), after
the dropped samples (rejections, shard "all"). The result is a function of the
committed safe samples, so a resumed task recomputes the same rows and commits only
the splits that are missing.

`dedup_against` names earlier runs in the same storage (the nightly's earlier nights):
the samples their datasets hold count as seen, so a sample that repeats one of them is
dropped, and counted in the `dataset.earlier_duplicates` counter. Each run commits the
fingerprints of what it kept (content hash and embedding: the `fingerprints` table), so
a later run reads those instead of every earlier sample embedded again; a run without
them, or with ones made another way (other compared parts, another embedder), is
fingerprinted from its samples as before.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from autosafe_core.stages import safe_actions
from autosafe_core.stages.dedup import DedupConfig, Fingerprint, dedup
from autosafe_core.stages.quality import QualityConfig, quality_filter
from autosafe_core.stages.split import SPLITS, check_fractions, split
from autosafe_core.ots import SafeSample
from autosafe_core.store import Run, ShardRef, commit_shard, read_commit, read_records, read_table
from autosafe_core.store.records import FingerprintRow
from autosafe_core.store.run import check_name
from tasks.common import catalog, shard_task

TABLE = "dataset"
STAGE = "dataset"
DROPPED_SHARD = "all"
FINGERPRINTS = "fingerprints"


class DatasetConfig(BaseModel):
    """Stage 4 settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    quality: QualityConfig = Field(default_factory=QualityConfig, description="Quality filter thresholds.")
    dedup: DedupConfig = Field(default_factory=DedupConfig, description="Exact and near-duplicate dedup.")
    embeddings: bool = Field(True, description="Drop near duplicates by MiniLM embeddings (exact dedup always).")
    split: tuple[float, float, float] = Field((0.8, 0.1, 0.1), description="Train, validation, test fractions.")
    split_seed: int = Field(0, description="Seed of the scenario hash that assigns splits.")
    dedup_against: tuple[str, ...] = Field(
        (),
        description="Earlier run ids in the same storage whose datasets count as already made: a sample "
        "repeating one of theirs is dropped. The nightly fills it with the earlier nights.",
    )

    @field_validator("split")
    @classmethod
    def _fractions(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        check_fractions(v)
        return v

    @field_validator("dedup_against")
    @classmethod
    def _run_ids(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for i, run_id in enumerate(v):
            check_name(f"dedup_against[{i}]: run id", run_id)
        return v


def earlier_fingerprints(run: Run, run_ids: tuple[str, ...], cfg: DatasetConfig) -> list[SafeSample | Fingerprint]:
    """What the datasets of the runs `run_ids` (same storage as `run`) hold, to dedup against:
    their committed fingerprints where those were made as `cfg` would make them, else their samples."""
    seen: list[SafeSample | Fingerprint] = []
    for run_id in run_ids:
        earlier = Run(run_id=run_id, storage=run.storage)
        kept = _usable_fingerprints(earlier, cfg)
        if kept is not None:
            seen += kept
            continue
        in_dataset = set(read_table(earlier, TABLE, columns=["safe_sample_id"])["safe_sample_id"].to_pylist())
        seen += [s for s in read_records(earlier, "safe_samples", stages=[safe_actions.STAGE]) if s.id in in_dataset]
    return seen


def _usable_fingerprints(earlier: Run, cfg: DatasetConfig) -> list[Fingerprint] | None:
    if read_commit(earlier, FINGERPRINTS, STAGE, DROPPED_SHARD) is None:
        return None
    rows = read_records(earlier, FINGERPRINTS, stages=[STAGE])
    wanted = (list(cfg.dedup.compare), _embedder_id(cfg))
    if any((row.compare, row.embedder) != wanted for row in rows):
        return None
    return [
        Fingerprint(row.id, row.content_hash, None if row.embedding is None else np.asarray(row.embedding, np.float32))
        for row in rows
    ]


def _fingerprint_rows(result_prints: list[Fingerprint], cfg: DatasetConfig) -> list[FingerprintRow]:
    compare, embedder = list(cfg.dedup.compare), _embedder_id(cfg)
    return [
        FingerprintRow(id=fp.id, content_hash=fp.content_hash, compare=compare, embedder=embedder,
                       embedding=None if fp.embedding is None else fp.embedding.astype(float).tolist())  # fmt: skip
        for fp in result_prints
    ]


def _embedder_id(cfg: DatasetConfig) -> str:
    if not cfg.embeddings:
        return ""
    from autosafe_core.stages.embedding import MiniLMEmbedder

    return MiniLMEmbedder.model_id


def _embedder(cfg: DatasetConfig):
    if not cfg.embeddings:
        return None
    from autosafe_core.stages.embedding import MiniLMEmbedder

    return MiniLMEmbedder()


@shard_task(STAGE)
def dataset_shards(run: Run, cfg: DatasetConfig, shard_id: str = "all") -> list[ShardRef]:
    """Commit the run's dataset, one shard per split; returns the split shards' refs."""
    done = [read_commit(run, TABLE, STAGE, name) for name in SPLITS]
    if all(ref is not None for ref in done):
        return done
    samples = read_records(run, "safe_samples", stages=[safe_actions.STAGE])
    kept, dropped = quality_filter(samples, cfg.quality)
    seen = earlier_fingerprints(run, cfg.dedup_against, cfg)
    result = dedup(kept, _embedder(cfg), cfg.dedup, seen=seen)
    seen_ids = {s.id for s in seen}
    earlier_duplicates = sum(d.duplicate_of in seen_ids for d in result.dropped)
    dropped += result.dropped
    commit_shard(run, "rejections", STAGE, DROPPED_SHARD, [d.rejection() for d in dropped])
    commit_shard(run, FINGERPRINTS, STAGE, DROPPED_SHARD, _fingerprint_rows(result.fingerprints, cfg))
    from autosafe_core.training.sft_export import export_rows

    parts = split(result.kept, cfg.split, cfg.split_seed)
    refs = []
    for name in SPLITS:
        rows = export_rows({name: parts[name]}, catalog())
        refs.append(
            commit_shard(
                run, TABLE, STAGE, name, rows,
                counters={"dataset.quality_dropped": sum(d.step == "quality" for d in dropped),
                          "dataset.dedup_dropped": sum(d.step == "dedup" for d in dropped),
                          "dataset.earlier_duplicates": earlier_duplicates} if name == SPLITS[0] else {},
            )
        )
    return refs
