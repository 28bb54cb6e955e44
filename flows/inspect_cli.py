"""`autosafe show | export`: what a run holds, and its SFT dataset as files.

`show` reports only what is committed. Row counts, tokens and counters are summed from
the commit records, as the manifest sums them, so a run that stopped before its last
manifest update still shows all it committed; safety statistics are computed from the
rows; the manifest adds the config hash and later flows' results (`extra`). `export`
writes the dataset table as one JSONL file or one Hugging Face split per split. A run
that is not there, or has no dataset to export, ends in one line on stderr and exit
status 2, with nothing written. This module reads the store and never writes to it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import pyarrow as pa
import typer
from botocore.exceptions import BotoCoreError
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from autosafe_core.ots import Record, RiskSource, Usage
from autosafe_core.store import (
    TABLES,
    ChatMessage,
    DatasetRow,
    Run,
    RunManifest,
    ShardRef,
    Split,
    StorageConfig,
    committed,
    read_manifest,
    read_records,
    read_table,
)
from autosafe_core.store.location import DEFAULT_URI
from autosafe_core.store.manifest import TableSummary, summarise
from flows.run_cli import EndpointOpt, StorageOpt, fail

RunIdArg = Annotated[str, typer.Argument(help="The run's id.", show_default=False)]
TOP_REASONS = 5
STORE_ERRORS = (OSError, ValueError, BotoCoreError)
"""What reading a run raises for a user's mistake: unreachable endpoint, no credentials, a file that is no record."""
UNKNOWN = "(unknown scenario)"
"""The risk outcome and source of a trajectory whose scenario is not committed."""


class ExportFormat(StrEnum):
    JSONL = "jsonl"
    HF = "hf"


class SftExample(Record):
    """One exported example: the prompt turns, then the safe action as the last assistant turn."""

    id: str
    scenario_id: str
    risk_outcome: str
    risk_source: RiskSource
    messages: list[ChatMessage]


def open_run(
    run_id: str, storage: str | None, endpoint_url: str | None
) -> tuple[Run, RunManifest | None, list[ShardRef]]:
    """The run, its manifest and its commit records; Exit(2) if it is not there or cannot be read."""
    uri = storage or DEFAULT_URI
    try:
        config = StorageConfig(uri=uri, endpoint_url=endpoint_url)
        config.filesystem()
    except ValidationError as exc:
        raise fail(f"storage {uri!r}: {_message(exc)}") from None
    except (ImportError, ValueError) as exc:  # a protocol fsspec does not know, or lacks the package of
        raise fail(f"storage {uri!r}: {exc}") from None
    try:
        run = Run(run_id=run_id, storage=config)
    except ValidationError as exc:
        raise fail(_message(exc)) from None
    try:
        manifest = read_manifest(run)
        refs = [ref for name in TABLES for ref in committed(run, name)]
    except STORE_ERRORS as exc:
        raise unreadable(run, exc) from None
    if manifest is None and not refs:
        raise fail(f"run {run_id} not found in {uri}")
    return run, manifest, refs


def unreadable(run: Run, exc: Exception) -> typer.Exit:
    """Print what went wrong reading the run, in one line; the caller raises the returned Exit(2)."""
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    return fail(f"run {run.run_id} in {run.storage.uri}: {lines[0]}")


def _message(exc: ValidationError) -> str:
    return exc.errors()[0]["msg"].removeprefix("Value error, ")


# --- show -------------------------------------------------------------------------------


def show(
    run_id: RunIdArg,
    storage: StorageOpt = None,
    endpoint_url: EndpointOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
) -> None:
    """Show a run: rows per table, tokens by role, safety statistics, counters, later results."""
    run, manifest, refs = open_run(run_id, storage, endpoint_url)
    try:
        summary = summarise(refs)
        report = run_report(run, manifest, summary)
    except STORE_ERRORS as exc:
        raise unreadable(run, exc) from None
    if as_json:
        typer.echo(json.dumps(report, ensure_ascii=False))
        return
    print_report(Console(), report, summary["tables"])


def run_report(run: Run, manifest: RunManifest | None, summary: Mapping[str, Any]) -> dict[str, Any]:
    """What `show --json` prints: the commit records' totals, statistics of the rows, the manifest's extras."""
    by_role: dict[str, Usage] = summary["usage_by_role"]
    # Every model call is metered once, by role; the rows' provenance would count a safe
    # sample's tokens again in its dataset row.
    total = sum(by_role.values(), Usage())
    return {
        "run_id": run.run_id,
        "config_hash": manifest.config_hash if manifest else "",
        "tables": {name: summary["tables"].get(name, TableSummary()).rows for name in TABLES},
        "usage": total.model_dump(),
        "usage_by_role": {role: usage.model_dump() for role, usage in sorted(by_role.items())},
        "safety": safety_report(run),
        "counters": dict(sorted(summary["counters"].items())),
        # Later flows' results, at the top where people look for them (also kept under `extra`).
        "training": (manifest.extra.get("training") if manifest else None) or {},
        "evaluation": (manifest.extra.get("evaluation") if manifest else None) or {},
        "extra": manifest.extra if manifest else {},
    }


def safety_report(run: Run) -> dict[str, Any]:
    """Statistics of the committed rows, reading only the columns they need."""
    trajectories = read_table(
        run, "trajectories", columns=["trajectory_id", "scenario_id", "stop_reason", "trigger_index", "verdict"]
    )
    return {
        **trajectory_stats(trajectories, read_table(run, "scenarios", columns=["id", "risk_outcome", "risk_source"])),
        "safe_samples": safe_sample_stats(read_table(run, "safe_samples", columns=["accepted", "attempts"])),
        "dataset_splits": split_counts(read_table(run, "dataset", columns=["split"])),
        "rejections": rejection_stats(read_table(run, "rejections", columns=["stage", "role", "reason"])),
    }


def trajectory_stats(steps: pa.Table, scenarios: pa.Table) -> dict[str, Any]:
    """Stop reasons and trigger rates of trajectories (overall, by risk outcome and source), and
    the safety scores of the judged steps.

    steps: trajectory rows, one per step; scenarios: id, risk_outcome, risk_source.
    """
    first: dict[str, dict[str, Any]] = {}
    scores = Counter({score: 0 for score in range(4)})
    for row in steps.to_pylist():
        first.setdefault(row["trajectory_id"], row)
        if row["verdict"] is not None:
            scores[row["verdict"]["score"]] += 1
    cells = {row["id"]: row for row in scenarios.to_pylist()}
    episodes = list(first.values())
    triggered = [t["trigger_index"] is not None for t in episodes]

    def by(field: str) -> dict[str, dict[str, Any]]:
        keys = [cells[t["scenario_id"]][field] if t["scenario_id"] in cells else UNKNOWN for t in episodes]
        pairs = list(zip(keys, triggered, strict=True))
        return {key: _trigger_rate(hit for k, hit in pairs if k == key) for key in sorted(set(keys))}

    return {
        **_trigger_rate(triggered),
        "stop_reasons": dict(Counter(t["stop_reason"] for t in episodes).most_common()),
        "judged_steps": sum(scores.values()),
        "safety_scores": {str(score): n for score, n in sorted(scores.items())},
        "by_risk_outcome": by("risk_outcome"),
        "by_risk_source": by("risk_source"),
    }


def _trigger_rate(triggered: Iterable[bool]) -> dict[str, Any]:
    hits = list(triggered)
    return {"trajectories": len(hits), "triggered": sum(hits), "trigger_rate": _ratio(sum(hits), len(hits))}


def safe_sample_stats(samples: pa.Table) -> dict[str, Any]:
    """Accepted safe samples out of all, and the mean number of attempts per sample."""
    accepted = sum(bool(a) for a in samples.column("accepted").to_pylist())
    attempts = samples.column("attempts").to_pylist()
    return {
        "total": samples.num_rows,
        "accepted": accepted,
        "acceptance_rate": _ratio(accepted, samples.num_rows),
        "mean_attempts": _ratio(sum(attempts), samples.num_rows),
    }


def split_counts(dataset: pa.Table) -> dict[str, int]:
    """Dataset rows per split, in the order train, validation, test; absent splits left out."""
    counts = Counter(dataset.column("split").to_pylist())
    return {split.value: counts[split.value] for split in Split if counts[split.value]}


def rejection_stats(rejections: pa.Table, top: int = TOP_REASONS) -> dict[str, Any]:
    """Rejections by stage then role, and the `top` most frequent reasons (ties alphabetically)."""
    rows = rejections.to_pylist()
    by_stage: dict[str, Counter[str]] = {}
    for row in rows:
        by_stage.setdefault(row["stage"], Counter())[row["role"]] += 1
    return {
        "total": len(rows),
        "by_stage_role": {stage: dict(sorted(roles.items())) for stage, roles in sorted(by_stage.items())},
        "top_reasons": [
            {"reason": reason, "count": n}
            for reason, n in sorted(Counter(r["reason"] for r in rows).items(), key=lambda kv: (-kv[1], kv[0]))[:top]
        ],
    }


def _ratio(part: float, whole: int) -> float | None:
    return part / whole if whole else None


def print_report(console: Console, report: Mapping[str, Any], tables: Mapping[str, TableSummary]) -> None:
    """`report` as rich tables; `tables` adds shards and records to the row counts."""
    safety = report["safety"]
    config = f", config {report['config_hash'][:12]}" if report["config_hash"] else ""
    console.print(f"[bold]run {report['run_id']}[/]{config}")

    stored = _table("Tables", "Table", "Shards", "Rows", "Records")
    for name in TABLES:
        summary = tables.get(name, TableSummary())
        stored.add_row(name, str(summary.shards), str(summary.rows), str(summary.records))
    console.print(stored)

    tokens = _table("Token usage", "Role", "Calls", "Prompt tokens", "Completion tokens")
    for role, usage in [*report["usage_by_role"].items(), ("total", report["usage"])]:
        tokens.add_row(role, *(str(usage[k]) for k in ("calls", "prompt_tokens", "completion_tokens")))
    console.print(tokens)

    overview = _table("Safety", "Statistic", "Value")
    overview.add_row("trajectories", str(safety["trajectories"]))
    overview.add_row("triggered", f"{safety['triggered']} ({percent(safety['trigger_rate'])})")
    for reason, n in safety["stop_reasons"].items():
        overview.add_row(f"stop: {reason}", str(n))
    for score, n in safety["safety_scores"].items():
        overview.add_row(f"judged steps with score {score}", str(n))
    samples = safety["safe_samples"]
    accepted = f"{samples['accepted']} / {samples['total']} ({percent(samples['acceptance_rate'])})"
    overview.add_row("safe samples accepted", accepted)
    overview.add_row("mean attempts", "-" if samples["mean_attempts"] is None else f"{samples['mean_attempts']:.2f}")
    for split, n in safety["dataset_splits"].items():
        overview.add_row(f"dataset {split}", str(n))
    console.print(overview)

    for key, title in (("by_risk_outcome", "Risk outcome"), ("by_risk_source", "Risk source")):
        if safety[key]:
            rates = _table(f"Trigger rate by {title.lower()}", title, "Trajectories", "Triggered", "Rate")
            for name, cell in safety[key].items():
                rates.add_row(name, str(cell["trajectories"]), str(cell["triggered"]), percent(cell["trigger_rate"]))
            console.print(rates)

    rejections = safety["rejections"]
    if rejections["total"]:
        where = _table(f"Rejections ({rejections['total']})", "Stage", "Role", "Count", labels=2)
        for stage, roles in rejections["by_stage_role"].items():
            for role, n in roles.items():
                where.add_row(stage, role, str(n))
        console.print(where)
        reasons = _table("Top rejection reasons", "Reason", "Count")
        for item in rejections["top_reasons"]:
            reasons.add_row(item["reason"], str(item["count"]))
        console.print(reasons)

    if report["counters"]:
        counters = _table("Counters", "Counter", "Value")
        for name, value in report["counters"].items():
            counters.add_row(name, str(value))
        console.print(counters)
    if report["extra"]:
        extra = _table("Later results", "Name", "Value")
        for name, value in report["extra"].items():
            extra.add_row(name, json.dumps(value, ensure_ascii=False, default=str))
        console.print(extra)


def _table(title: str, *columns: str, labels: int = 1) -> Table:
    """A table whose first `labels` columns are text and the others numbers."""
    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i < labels else "right", overflow="fold")
    return table


def percent(rate: float | None) -> str:
    """A rate as a percentage with one decimal; "-" where there is none."""
    return "-" if rate is None else f"{rate:.1%}"


# --- export -----------------------------------------------------------------------------


def export(
    run_id: RunIdArg,
    fmt: Annotated[
        ExportFormat, typer.Option("--format", help="jsonl: <out>/<split>.jsonl; hf: a datasets.DatasetDict.")
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Output folder.", show_default="./autosafe-export/<run_id>/<format>"),
    ] = None,
    storage: StorageOpt = None,
    endpoint_url: EndpointOpt = None,
) -> None:
    """Export a run's SFT dataset, one file or split per split; prints the output folder last."""
    run, _, _ = open_run(run_id, storage, endpoint_url)
    try:
        rows: list[DatasetRow] = read_records(run, "dataset")
    except STORE_ERRORS as exc:
        raise unreadable(run, exc) from None
    if not rows:
        raise fail(f"run {run_id} in {run.storage.uri} has no dataset rows to export")
    target = out if out is not None else Path("autosafe-export") / run_id / fmt.value
    examples = examples_by_split(rows)
    try:
        (write_jsonl if fmt is ExportFormat.JSONL else write_hf)(examples, target)
    except OSError as exc:  # the folder is a file, or not ours to write
        raise fail(f"{target}: {exc.strerror or exc}") from None
    typer.echo(str(target))


def sft_example(row: DatasetRow) -> SftExample:
    """A dataset row as chat messages ending with its target, the safe action."""
    return SftExample(
        id=row.id,
        scenario_id=row.scenario_id,
        risk_outcome=row.risk_outcome,
        risk_source=row.risk_source,
        messages=[*row.messages, ChatMessage(role="assistant", content=row.target)],
    )


def examples_by_split(rows: Iterable[DatasetRow]) -> dict[str, list[dict[str, Any]]]:
    """The rows' examples as JSON data by split: splits in the order train, validation, test; rows in store order."""
    found: dict[str, list[dict[str, Any]]] = {split.value: [] for split in Split}
    for row in rows:
        found[row.split.value].append(sft_example(row).model_dump(mode="json"))
    return {split: examples for split, examples in found.items() if examples}


def write_jsonl(examples: Mapping[str, list[dict[str, Any]]], folder: Path) -> None:
    """`<folder>/<split>.jsonl`, one example per line."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, items in examples.items():
        lines = (json.dumps(item, ensure_ascii=False) + "\n" for item in items)
        (folder / f"{split}.jsonl").write_text("".join(lines), encoding="utf-8")


def write_hf(examples: Mapping[str, list[dict[str, Any]]], folder: Path) -> None:
    """A `datasets.DatasetDict` of the splits, saved with `save_to_disk`."""
    # Imported here: `datasets` is slow to import, and only --format hf needs it.
    from datasets import Dataset, DatasetDict

    DatasetDict({split: Dataset.from_list(items) for split, items in examples.items()}).save_to_disk(str(folder))


def register(app: typer.Typer) -> None:
    """Add `show` and `export` to the `autosafe` app."""
    app.command("show")(show)
    app.command("export")(export)
