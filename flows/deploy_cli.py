"""`autosafe deploy`: the work pools and every deployment of infra/prefect.yaml (from the
repository root, or `--prefect-file`), registered on the Prefect server at PREFECT_API_URL.

Creates the pools that are missing and leaves existing ones as they are (an operator may
have tuned them in the UI): `autosafe-process`, flow runs as processes on the worker's
machine, starting in `--work-dir`; `autosafe-kubernetes`, one Job per flow run with GPUs
requested (infra/prefect/kubernetes-job-template.json). Then it runs Prefect's own
`prefect deploy --all` on a copy of the file with the command line's overrides (pool,
nightly cron and time zone), so the file stays what `prefect deploy` reads by itself.
A user mistake (no server, a bad cron or time zone, an unknown pool) ends in one line and
exit status 2.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from flows.run_cli import fail

PREFECT_FILE = Path("infra") / "prefect.yaml"
KUBERNETES_TEMPLATE = Path("prefect") / "kubernetes-job-template.json"
"""Relative to the prefect file's folder."""
PROCESS_POOL = "autosafe-process"
KUBERNETES_POOL = "autosafe-kubernetes"
POOL_TYPES = {PROCESS_POOL: "process", KUBERNETES_POOL: "kubernetes"}
NIGHTLY = "nightly"


def process_template(work_dir: Path) -> dict[str, Any]:
    """Prefect's process-worker template, with flow runs starting in `work_dir`."""
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    template["variables"]["properties"]["working_dir"]["default"] = str(work_dir)
    return template


def pool_templates(work_dir: Path, kubernetes_template: Path) -> dict[str, dict[str, Any]]:
    """The base job template of each pool `autosafe deploy` creates."""
    return {
        PROCESS_POOL: process_template(work_dir),
        KUBERNETES_POOL: json.loads(kubernetes_template.read_text()),
    }


async def ensure_pools(templates: dict[str, dict[str, Any]]) -> list[str]:
    """Create the pools that do not exist yet; returns the names of those created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    created = []
    async with get_client() as client:
        for name, template in templates.items():
            try:
                await client.read_work_pool(name)
                continue
            except ObjectNotFound:
                pass
            await client.create_work_pool(
                WorkPoolCreate(name=name, type=POOL_TYPES[name], base_job_template=template)
            )
            created.append(name)
    return created


def resolved_file(
    document: dict[str, Any], pool: str | None, cron: str | None, timezone: str | None
) -> dict[str, Any]:
    """The prefect.yaml document with the command line's overrides applied."""
    out = copy.deepcopy(document)
    for deployment in out.get("deployments") or []:
        if pool:
            deployment.setdefault("work_pool", {})["name"] = pool
        if deployment.get("name") != NIGHTLY:
            continue
        for schedule in deployment.get("schedules") or []:
            if cron:
                schedule["cron"] = cron
            if timezone:
                schedule["timezone"] = timezone
                schedule.setdefault("parameters", {})["timezone"] = timezone
    return out


async def registered(names: list[str]) -> dict[str, str]:
    """deployment name -> 'flow/deployment' of those of `names` the server has."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    async with get_client() as client:
        deployments = await client.read_deployments(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=names))
        )
        flows = {f.id: f.name for f in await client.read_flows()}
    return {d.name: f"{flows.get(d.flow_id, '?')}/{d.name}" for d in deployments}


def check_schedule(cron: str | None, timezone: str | None) -> None:
    """ValueError naming the option when the cron string or the time zone is not valid."""
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        CronSchedule(cron=cron or "0 2 * * *", timezone=timezone or "UTC")
    except ValidationError as e:
        option = "--timezone" if any("timezone" in map(str, err["loc"]) for err in e.errors()) else "--nightly-cron"
        raise ValueError(f"{option}: {e.errors()[0]['msg'].removeprefix('Value error, ')}") from None


def api_problem() -> str | None:
    """Why no Prefect server can take the deployments, or None."""
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        return (
            "no Prefect server: set PREFECT_API_URL to one (prefect server start, or infra/compose.yaml); "
            "deployments registered in a temporary server would vanish with it"
        )

    async def health() -> Exception | None:
        async with get_client() as client:
            return await client.api_healthcheck()

    error = asyncio.run(health())
    return f"Prefect server at {url} not reachable: {error}" if error else None


def register(app: typer.Typer) -> None:
    @app.command()
    def deploy(
        prefect_file: Annotated[Path, typer.Option(help="Prefect's deployment file.")] = PREFECT_FILE,
        pool: Annotated[
            str | None, typer.Option(help=f"Work pool of every deployment: {PROCESS_POOL} or {KUBERNETES_POOL}.")
        ] = None,
        nightly_cron: Annotated[str | None, typer.Option(help="Cron of the nightly run, e.g. '0 2 * * *'.")] = None,
        timezone: Annotated[
            str | None, typer.Option(help="Time zone of the nightly's cron, e.g. Europe/Berlin.")
        ] = None,
        work_dir: Annotated[
            Path | None,
            typer.Option(help="Where the process pool starts flow runs (relative storage lands here); default: here."),
        ] = None,
        kubernetes_template: Annotated[
            Path | None,
            typer.Option(help="Base job template of the Kubernetes pool; default: prefect/ beside the prefect file."),
        ] = None,
    ) -> None:
        """Create the work pools if missing and register every deployment on the Prefect server."""
        if pool is not None and pool not in POOL_TYPES:
            raise fail(f"--pool: {pool!r} is not one of {', '.join(POOL_TYPES)}")
        if not prefect_file.is_file():
            raise fail(f"{prefect_file}: no such file (run from the repository root, or give --prefect-file)")
        try:
            document = yaml.safe_load(prefect_file.read_text())
            work_dir = (work_dir or Path.cwd()).resolve()
            templates = pool_templates(work_dir, kubernetes_template or prefect_file.parent / KUBERNETES_TEMPLATE)
            check_schedule(nightly_cron, timezone)
        except (OSError, yaml.YAMLError, json.JSONDecodeError, ValueError) as e:
            raise fail(str(e).splitlines()[0]) from None
        if not isinstance(document, dict) or not document.get("deployments"):
            raise fail(f"{prefect_file}: no deployments")
        problem = api_problem()
        if problem:
            raise fail(problem)
        # The process worker starts flow runs in it, and fails on a folder that does not exist.
        work_dir.mkdir(parents=True, exist_ok=True)
        for name in asyncio.run(ensure_pools(templates)):
            typer.echo(f"work pool {name} ({POOL_TYPES[name]}) created")
        with tempfile.TemporaryDirectory(prefix="autosafe-deploy-") as tmp:
            resolved = Path(tmp) / "prefect.yaml"
            resolved.write_text(yaml.safe_dump(resolved_file(document, pool, nightly_cron, timezone), sort_keys=False))
            done = subprocess.run(
                [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all", "--prefect-file", str(resolved)],
                capture_output=True,
                text=True,
                env={**os.environ, "PREFECT_LOGGING_LEVEL": os.environ.get("PREFECT_LOGGING_LEVEL", "WARNING")},
            )
        wanted = [d["name"] for d in document["deployments"]]
        found = asyncio.run(registered(wanted)) if done.returncode == 0 else {}
        if done.returncode != 0 or set(found) != set(wanted):
            typer.echo(done.stdout + done.stderr, err=True)
            missing = ", ".join(sorted(set(wanted) - set(found))) or "?"
            typer.echo(f"autosafe: prefect deploy failed; not registered: {missing} (its output is above)", err=True)
            raise typer.Exit(1)
        for name in wanted:
            typer.echo(f"deployment {found[name]} registered")
