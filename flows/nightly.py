"""The nightly regeneration: one new run a night, deduplicated against the nights before it.

A night is named by the calendar date of its scheduled start in the schedule's time zone:
run id `<prefix>-YYYYMMDD`. Its scenarios come from the catalog as it is that night (every
toolkit and risk outcome unless the form narrows them) under a seed derived from the
night, so each night draws new scenario ids and sampling seeds. The dataset stage counts
the samples that the earlier nights' datasets hold (runs `<prefix>-YYYYMMDD` with an
earlier date, in the same storage) as seen: a sample that repeats one is dropped. The
manifest's `changes` then records what the night added: rows per table, rejected rows,
duplicates of earlier nights and tokens. Re-running a night resumes it.

The schedule itself (cron, time zone) is the deployment's, in infra/prefect.yaml; this
module only reads the scheduled start time of the flow run.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from prefect import flow
from pydantic import StringConstraints

from autosafe_core.ots import Usage, stable_id
from autosafe_core.store import RunChanges, RunManifest, StorageConfig, read_manifest, run_ids, update_manifest
from flows.config import FactoryConfig
from flows.data_flows import launch
from flows.deployments import RunForm, check_reachable
from flows.pipeline import make_run

Prefix = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,50}$")]
EARLIER_DUPLICATES = "dataset.earlier_duplicates"


def night_of(scheduled: datetime, timezone: str) -> date:
    """The calendar date of a scheduled start in the schedule's time zone."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"timezone: unknown time zone {timezone!r}") from None
    return scheduled.astimezone(zone).date()


def night_run_id(prefix: str, night: date) -> str:
    return f"{prefix}-{night:%Y%m%d}"


def earlier_nights(storage: StorageConfig, prefix: str, night: date) -> list[str]:
    """The run ids of the series' nights before `night` in `storage`, oldest first."""
    shape = re.compile(rf"^{re.escape(prefix)}-(\d{{8}})$")
    tonight = f"{night:%Y%m%d}"
    return [run_id for run_id in run_ids(storage) if (m := shape.match(run_id)) and m.group(1) < tonight]


def night_config(form: RunForm, prefix: str, night: date) -> FactoryConfig:
    """The night's run: its id and seed from the date, deduplicated against the earlier nights."""
    if form.run_id:
        raise ValueError(f"config.run_id: a nightly names its runs {prefix}-YYYYMMDD; leave it empty")
    earlier = earlier_nights(form.storage, prefix, night)
    seed = int(stable_id("nightly", prefix, night.isoformat(), form.generate.seed, length=12), 16)
    data = form.model_dump()
    data["generate"]["seed"] = seed
    data["dataset"]["dedup_against"] = tuple(dict.fromkeys([*form.dataset.dedup_against, *earlier]))
    return FactoryConfig.model_validate({**data, "run_id": night_run_id(prefix, night)})


def changes_of(manifest: RunManifest, earlier: list[str]) -> RunChanges:
    """What a night added, from its manifest."""
    tokens = sum(manifest.usage_by_role.values(), Usage())
    return RunChanges(
        previous_runs=earlier,
        new_rows={name: t.rows for name, t in manifest.tables.items() if name not in ("rejections", "fingerprints")},
        rejected_rows=manifest.rows("rejections"),
        duplicates_of_earlier=manifest.counters.get(EARLIER_DUPLICATES, 0),
        tokens=tokens,
    )


def changes_markdown(run_id: str, changes: RunChanges) -> str:
    lines = [
        f"# Night `{run_id}`",
        "",
        f"deduplicated against {len(changes.previous_runs)} earlier night(s)"
        + (f", the last `{changes.previous_runs[-1]}`" if changes.previous_runs else ""),
        "",
        "| what | rows |",
        "|---|---:|",
    ]
    lines += [f"| new {name} | {rows:,} |" for name, rows in changes.new_rows.items()]
    lines += [
        f"| rejected | {changes.rejected_rows:,} |",
        f"| duplicates of earlier nights | {changes.duplicates_of_earlier:,} |",
        f"| tokens (prompt + completion) | {changes.tokens.prompt_tokens + changes.tokens.completion_tokens:,} |",
    ]
    return "\n".join(lines) + "\n"


def _scheduled_start() -> datetime:
    from prefect.runtime import flow_run

    return flow_run.scheduled_start_time


def _night_run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    night = params.get("night")
    if isinstance(night, str):
        night = date.fromisoformat(night)
    night = night or night_of(_scheduled_start(), params.get("timezone", "UTC"))
    return night_run_id(params.get("prefix", "nightly"), night)


@flow(name="autosafe-nightly", flow_run_name=_night_run_name, log_prints=False)
def nightly(
    config: RunForm = RunForm(),
    prefix: Prefix = "nightly",
    timezone: str = "UTC",
    night: date | None = None,
) -> RunManifest:
    """Regenerate the factory's data for one night: a new run, deduplicated against the earlier nights.

    Args:
        config: What to generate, with which models and where; leave run_id empty (the night names the run).
        prefix: The series' name: its runs are <prefix>-YYYYMMDD in the same storage.
        timezone: The time zone whose calendar date names the night (the schedule's).
        night: The night to make; empty: the date of the flow run's scheduled start.
    """
    night = night or night_of(_scheduled_start(), timezone)
    run_config = check_reachable(night_config(config, prefix, night))
    launch("run", run_config)
    run = make_run(run_config)
    changes = changes_of(read_manifest(run), list(run_config.dataset.dedup_against))
    manifest = update_manifest(run, changes=changes)
    from prefect.artifacts import create_markdown_artifact

    from flows.summary_artifact import artifact_key

    create_markdown_artifact(
        markdown=changes_markdown(run_config.run_id, changes),
        key=artifact_key(run_config.run_id).replace("autosafe-run-", "autosafe-night-", 1),
        description=f"What night {run_config.run_id} added",
    )
    return manifest
