"""The run summary as a Prefect artifact: a markdown table next to the flow run in the UI.

Rows per table, token usage by role, safety statistics and wall time per stage: what
an operator checks first after a run, without opening a notebook. Built from the
manifest (commit totals) and one read of the rows' safety columns.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from autosafe_core.store import Run, RunManifest


def artifact_key(run_id: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "autosafe-run-" + re.sub(r"[^a-z0-9-]+", "-", run_id.lower()).strip("-")


def summary_markdown(run: Run, manifest: RunManifest, stage_seconds: Mapping[str, float]) -> str:
    from flows.inspect_cli import percent, safety_report

    safety = safety_report(run)
    lines = [f"# Run `{run.run_id}`", "", f"config hash `{manifest.config_hash[:12]}`", ""]
    lines += ["| table | rows | shards | tokens |", "|---|---:|---:|---:|"]
    for name, table in manifest.tables.items():
        tokens = table.usage.prompt_tokens + table.usage.completion_tokens
        lines.append(f"| {name} | {table.rows:,} | {table.shards} | {tokens:,} |")
    lines += ["", "| role | calls | prompt tokens | completion tokens |", "|---|---:|---:|---:|"]
    for role, usage in sorted(manifest.usage_by_role.items()):
        lines.append(f"| {role} | {usage.calls:,} | {usage.prompt_tokens:,} | {usage.completion_tokens:,} |")
    samples = safety["safe_samples"]
    lines += [
        "",
        "| safety | value |",
        "|---|---:|",
        f"| trajectories | {safety['trajectories']:,} |",
        f"| risk-triggered | {safety['triggered']:,} ({percent(safety['trigger_rate'])}) |",
        f"| safe samples accepted | {samples['accepted']:,} of {samples['total']:,} ({percent(samples['acceptance_rate'])}) |",
        f"| dataset rows by split | {', '.join(f'{k} {v:,}' for k, v in safety['dataset_splits'].items()) or 'none'} |",
        f"| rejected model outputs | {safety['rejections']['total']:,} |",
    ]
    if stage_seconds:
        lines += ["", "| stage | wall time |", "|---|---:|"]
        lines += [f"| {stage} | {seconds:.1f} s |" for stage, seconds in stage_seconds.items()]
    return "\n".join(lines) + "\n"


def publish_summary(run: Run, manifest: RunManifest, stage_seconds: Mapping[str, float]) -> str:
    """Create the artifact in the current flow run; returns its key."""
    from prefect.artifacts import create_markdown_artifact

    key = artifact_key(run.run_id)
    create_markdown_artifact(
        markdown=summary_markdown(run, manifest, stage_seconds),
        key=key,
        description=f"AutoSafe run {run.run_id}: rows, tokens, safety, wall time",
    )
    return key
