"""Which evaluations a run holds: their record in the run manifest, and their rows.

An evaluation of one benchmark writes one stage of the `eval` table per model label
("base", "tuned", or "evaluator" for R-Judge), named `<benchmark>.<label>.<key>`,
where the key is a hash of everything that decides the rows: the cases, the settings,
the prompts and the model specs. Re-running the same evaluation finds its committed
shards and skips them; another adapter or setting writes another stage beside it. The
manifest's `extra["evaluation"]` keeps, per benchmark, the latest evaluation: its
stages, cases, settings, what was left out, its headline figures and where its report
is; `current_rows` reads exactly those stages, so a report never mixes two evaluations
of one benchmark. Knows nothing about Prefect or how rows are produced.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from autosafe_core.ots import Record
from autosafe_core.store import EvalRow, Run, RunManifest, read_manifest, read_records, update_manifest

EXTRA_KEY = "evaluation"
TABLE = "eval"


class LabelRun(Record):
    """One model label's part of an evaluation."""

    stage: str = Field(description="The eval table's stage holding this label's rows.")
    agent: str = Field("", description="The agent's model id (with its adapter); empty when no agent runs.")
    adapter: str | None = None
    evaluator: str = Field(description="The judge's model id.")
    shards: int = 0
    rows: int = 0
    judge_errors: int = 0
    failed_shards: list[str] = Field(default_factory=list, description="Shard ids that failed after retries.")


class Evaluation(Record):
    """The latest evaluation of one benchmark on a run."""

    benchmark: str
    kind: str = Field(description="'agent': the agent is rolled out and judged; 'evaluator': the judge is scored.")
    origin: str = Field(description="The files read, or the run's split.")
    cases: int
    fingerprint: str = Field(description="sha256 of the cases evaluated.")
    settings: dict[str, Any] = Field(default_factory=dict)
    skipped: dict[str, int] = Field(default_factory=dict, description="Cases not run, by reason.")
    unmapped_outcomes: dict[str, int] = Field(
        default_factory=dict, description="Outcome types that name no risk outcome of the taxonomy."
    )
    labels: dict[str, LabelRun] = Field(default_factory=dict)
    finished_at: datetime
    headline: dict[str, Any] = Field(default_factory=dict, description="Headline figures from the metrics module.")
    report: str | None = Field(None, description="The URI of this evaluation's HTML report, once written.")
    report_error: str | None = Field(None, description="Why the report was not written; the rows are kept.")


def evaluations(manifest: RunManifest | None) -> dict[str, Evaluation]:
    """The run's latest evaluation per benchmark, as its manifest records them."""
    if manifest is None:
        return {}
    recorded = manifest.extra.get(EXTRA_KEY) or {}
    return {name: Evaluation.model_validate(value) for name, value in recorded.items()}


def record_evaluation(run: Run, evaluation: Evaluation) -> RunManifest:
    """Make `evaluation` the latest of its benchmark in the run's manifest (other benchmarks kept)."""
    # A bare run: recording results must not re-check or replace the run's configuration.
    bare = Run(run_id=run.run_id, storage=run.storage)
    manifest = read_manifest(bare)
    recorded = dict((manifest.extra.get(EXTRA_KEY) if manifest else None) or {})
    recorded[evaluation.benchmark] = evaluation.model_dump(mode="json")
    return update_manifest(bare, extra={EXTRA_KEY: recorded})


def current_rows(run: Run, benchmarks: list[str] | None = None) -> list[EvalRow]:
    """The rows of each benchmark's latest evaluation (of `benchmarks` only, when given).

    A run whose manifest records no evaluation (rows written some other way) gives
    every committed eval row.
    """
    recorded = evaluations(read_manifest(run))
    if not recorded:
        rows = read_records(run, TABLE)
        return [r for r in rows if benchmarks is None or r.benchmark in benchmarks]
    stages = [
        label.stage
        for name, evaluation in recorded.items()
        if benchmarks is None or name in benchmarks
        for label in evaluation.labels.values()
    ]
    return read_records(run, TABLE, stages=stages) if stages else []
