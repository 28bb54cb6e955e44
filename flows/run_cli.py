"""`autosafe run | generate | rollout | safe-dataset`: start a data flow from the shell.

Settings come from `--config FILE` (YAML or JSON, the fields of `FactoryConfig`), then
the options given on the command line. Everything is validated before anything is
written: a bad value ends in one line naming the field, and exit status 2. Without a
configured `PREFECT_API_URL` a local Prefect server runs for the duration of the run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from autosafe_core.store import ConfigChanged, RunManifest, StorageConfig
from flows.config import FactoryConfig, load_config_file

ScenariosOpt = Annotated[int | None, typer.Option("--scenarios", "-n", help="Number of risk scenarios.")]
StorageOpt = Annotated[str | None, typer.Option("--storage", help="Local folder or s3://bucket/prefix.")]
EndpointOpt = Annotated[
    str | None, typer.Option("--endpoint-url", envvar="AUTOSAFE_S3_ENDPOINT_URL", help="S3-compatible endpoint.")
]
RunIdOpt = Annotated[str | None, typer.Option("--run-id", help="Run id; re-using one resumes that run.")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML or JSON file of FactoryConfig fields.")]
RunnerOpt = Annotated[str | None, typer.Option("--runner", help="ray (default) or threads.")]
RayOpt = Annotated[str | None, typer.Option("--ray-address", help="An existing Ray cluster to run on.")]
ShardOpt = Annotated[int | None, typer.Option("--shard-size", help="Scenarios per shard.")]
ConcurrencyOpt = Annotated[int | None, typer.Option("--concurrency", help="Model calls in flight per shard.")]


def fail(message: str) -> typer.Exit:
    """Print one line on stderr; the caller raises the returned Exit(2)."""
    typer.echo(f"autosafe: {message}", err=True)
    return typer.Exit(2)


def resolve_config(
    config_file: Path | None, overrides: dict[str, Any], storage: str | None, endpoint_url: str | None
) -> FactoryConfig:
    """The run's configuration from the file and the command line; Exit(2) naming the field if invalid."""
    data: dict[str, Any] = {}
    if config_file is not None:
        try:
            data = load_config_file(config_file)
        except FileNotFoundError:
            raise fail(f"{config_file}: no such file") from None
        except Exception as exc:  # YAML syntax and the like: name the file, one line
            raise fail(f"{config_file}: {str(exc).splitlines()[0]}") from None
    data.update({k: v for k, v in overrides.items() if v is not None})
    if storage is not None or endpoint_url is not None:
        base = dict(data.get("storage") or {})
        if storage is not None:
            base["uri"] = storage
        if endpoint_url is not None:
            base["endpoint_url"] = endpoint_url
        data["storage"] = base
    where = f"{config_file}: " if config_file is not None else ""
    try:
        config = FactoryConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "config"
        raise fail(f"{where}field {field!r}: {first['msg']}") from None
    from tasks.common import catalog

    try:
        config.check_against(catalog())
    except ValueError as exc:
        raise fail(f"{where}field {exc}") from None
    from flows.runtime import unreachable_api, unshared_storage

    problem = unreachable_api(config.ray_address)
    if problem:
        raise fail(f"{where}field 'ray_address': {problem}")
    problem = unshared_storage(config.ray_address, config.storage)
    if problem:
        raise fail(f"{where}field 'storage': {problem}")
    return config


def start(flow_name: str, config: FactoryConfig) -> RunManifest:
    """Run the flow under a Prefect API; user mistakes found on the way exit 2."""
    from flows.data_flows import launch
    from flows.pipeline import MissingInput, ShardsFailed
    from flows.runtime import UnsharedStorage, prefect_api

    console = Console(stderr=True, soft_wrap=True)
    console.print(f"[bold]autosafe {flow_name}[/]: run {config.run_id} -> {config.storage.uri}")
    with prefect_api():
        try:
            manifest = launch(flow_name, config, console)
        except (ConfigChanged, MissingInput, UnsharedStorage) as exc:
            raise fail(str(exc)) from None
        except ShardsFailed as exc:
            typer.echo(f"autosafe: {exc}", err=True)
            raise typer.Exit(1) from None
    for name, table in manifest.tables.items():
        console.print(f"  {name:<13} {table.rows:>8} rows  {table.usage.prompt_tokens + table.usage.completion_tokens:>10} tokens")
    typer.echo(f"run {config.run_id} done: autosafe show {config.run_id} --storage {config.storage.uri}")
    return manifest


def _command(flow_name: str, doc: str):
    def command(
        scenarios: ScenariosOpt = None,
        storage: StorageOpt = None,
        endpoint_url: EndpointOpt = None,
        run_id: RunIdOpt = None,
        config: ConfigOpt = None,
        runner: RunnerOpt = None,
        ray_address: RayOpt = None,
        shard_size: ShardOpt = None,
        concurrency: ConcurrencyOpt = None,
    ) -> None:
        overrides = {
            "scenarios": scenarios,
            "run_id": run_id,
            "runner": runner,
            "ray_address": ray_address,
            "shard_size": shard_size,
            "concurrency": concurrency,
        }
        start(flow_name, resolve_config(config, overrides, storage, endpoint_url))

    command.__doc__ = doc
    command.__name__ = flow_name.replace("-", "_")
    return command


def register(app: typer.Typer) -> None:
    """Add the flow commands to the `autosafe` app."""
    app.command("run")(_command("run", "End to end on the embedded default when given nothing."))
    app.command("generate")(_command("generate", "Stage 1: risk scenarios."))
    app.command("rollout")(_command("rollout", "Stage 2: simulated rollouts of committed scenarios."))
    app.command("safe-dataset")(
        _command("safe-dataset", "Stages 3-4: safe actions, quality filter, dedup, split, SFT export.")
    )


os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
