"""`autosafe engines up | list | down`: long-lived engines on a Ray cluster.

A run starts its engines and stops them when it ends. On a cluster serving many runs
(a nightly schedule, several researchers), a 70B engine should load once: `up`
starts the engines of a config as detached Ray actors, every later run with the same
model specs attaches to them by name (and leaves them running), `down` stops them.
Needs a running Ray cluster (`ray start --head`, KubeRay, the cluster launcher).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.run_cli import ConfigOpt, fail, resolve_config

engines_app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

AddressOpt = Annotated[
    str, typer.Option("--ray-address", envvar="RAY_ADDRESS", help="The Ray cluster; 'auto' finds a local one.")
]
ReplicasOpt = Annotated[int | None, typer.Option("--replicas", min=1, help="Replicas per engine (one per GPU).")]


def _connect(address: str) -> None:
    import ray

    from tasks.engines import NAMESPACE

    try:
        ray.init(
            address=address, namespace=NAMESPACE, log_to_driver=False, logging_level="ERROR", ignore_reinit_error=True
        )
    except (ConnectionError, RuntimeError) as exc:
        raise fail(f"no Ray cluster at {address!r} ({str(exc).splitlines()[0][:160]}); start one with `ray start --head`")


def _config(config_file: Path | None):
    return resolve_config(config_file, {}, None, None)


@engines_app.command()
def up(config: ConfigOpt = None, ray_address: AddressOpt = "auto", replicas: ReplicasOpt = None) -> None:
    """Start the config's engines (one per distinct model) as long-lived actors."""
    from tasks.engines import start_long_lived

    cfg = _config(config)
    _connect(ray_address)
    refs = start_long_lived(cfg.models.by_role(), replicas or cfg.engine_replicas)
    roles_of: dict[str, list[str]] = {}
    for role, ref in refs.items():
        roles_of.setdefault(ref.spec.key, []).append(role)
    for ref in {ref.spec.key: ref for ref in refs.values()}.values():
        for name in ref.actor_names:
            typer.echo(f"{name}  {ref.spec.backend}:{ref.spec.model}  serves {', '.join(roles_of[ref.spec.key])}")


@engines_app.command("list")
def list_(ray_address: AddressOpt = "auto") -> None:
    """The engines running on the cluster."""
    from tasks.engines import running_engines

    _connect(ray_address)
    for engine in running_engines():
        typer.echo(f"{engine['name']}  {engine['backend']}:{engine['model']}")


@engines_app.command()
def down(
    config: ConfigOpt = None,
    all_: Annotated[bool, typer.Option("--all", help="Stop every engine on the cluster.")] = False,
    ray_address: AddressOpt = "auto",
    replicas: ReplicasOpt = None,
) -> None:
    """Stop the config's engines (or, with --all, every engine)."""
    from tasks.engines import engine_name, running_engines, stop_engines

    if all_ == (config is not None):
        raise fail("engines down: give --config FILE or --all")
    cfg = None if all_ else _config(config)
    _connect(ray_address)
    if cfg is None:
        names = [e["name"] for e in running_engines()]
    else:
        specs = {spec.key: spec for spec in cfg.models.by_role().values()}
        count = replicas or cfg.engine_replicas
        names = [engine_name(spec, r) for spec in specs.values() for r in range(count)]
    for name in stop_engines(names):
        typer.echo(f"stopped {name}")
