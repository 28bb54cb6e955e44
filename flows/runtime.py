"""Where a run executes: the Prefect API it reports to and the task runner of its shards.

Prefect's ephemeral mode starts a temporary server in every process that runs a task,
so on Ray each worker would start its own and write to its own SQLite file. Instead,
when no `PREFECT_API_URL` is configured, the CLI starts one local server for the run
(Prefect's own subprocess server on loopback) and exports its URL before Ray starts,
so every worker reports to it. A configured URL (a real server, Prefect Cloud) is
used as it is.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from autosafe_core.store.location import StorageConfig

Runner = Literal["ray", "threads"]


@contextmanager
def prefect_api() -> Iterator[str]:
    """The Prefect API URL for this run; starts a local server if none is configured."""
    configured = os.environ.get("PREFECT_API_URL")
    if configured:
        yield configured
        return
    from prefect.server.api.server import SubprocessASGIServer

    # Telemetry would only log failures on a closed network.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

    server = SubprocessASGIServer()
    server.start(timeout=120)
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        yield server.api_url
    finally:
        # Logs are shipped to the API in the background: send what is queued while it listens.
        from prefect.logging.handlers import APILogHandler

        APILogHandler().flush()
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


def task_runner(runner: Runner, ray_address: str | None = None, max_workers: int | None = None):
    """Prefect's Ray task runner (local Ray, or a cluster at `ray_address`), or threads."""
    if runner == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=max_workers)
    from prefect_ray import RayTaskRunner

    init_kwargs: dict = {"namespace": "autosafe", "include_dashboard": False, "log_to_driver": True}
    if ray_address is None:
        init_kwargs["num_cpus"] = max_workers or os.cpu_count()
    # Workers inherit the driver's environment only on a local Ray; a cluster needs it
    # shipped in the runtime env so its tasks report to the same Prefect API.
    shipped = {name: os.environ[name] for name in ("PREFECT_API_URL", "PREFECT_API_KEY") if os.environ.get(name)}
    if shipped:
        init_kwargs["runtime_env"] = {"env_vars": shipped}
    return RayTaskRunner(address=ray_address, init_kwargs=init_kwargs)


def unreachable_api(ray_address: str | None) -> str | None:
    """Why a remote cluster's workers could not report to the Prefect API, or None.

    Without PREFECT_API_URL a run serves its own API on this machine's loopback, which
    nodes elsewhere cannot reach; neither can they reach a configured loopback URL.
    """
    if not ray_address or _host(ray_address) in _LOOPBACK:
        return None
    api_url = os.environ.get("PREFECT_API_URL")
    if api_url and _host(api_url) not in _LOOPBACK:
        return None
    where = f"PREFECT_API_URL is {api_url}" if api_url else "PREFECT_API_URL is not set"
    return (
        f"a remote Ray cluster ({ray_address}) needs a Prefect API its nodes can reach, and {where}; "
        "set it to your Prefect server (see infra/ray/README.md)"
    )


def unshared_storage(ray_address: str | None, storage: StorageConfig) -> str | None:
    """Why a remote cluster's workers could not share the run's storage, or None.

    Shard tasks and training workers on other nodes write where the run says; a local
    folder there is each node's own disk, so committed shards, checkpoints and the
    adapter would be scattered over the nodes and lost to this machine.
    """
    if not ray_address or _host(ray_address) in _LOOPBACK or storage.is_s3:
        return None
    return (
        f"a remote Ray cluster ({ray_address}) needs storage every node reaches, and storage is the local "
        f"folder {storage.uri}; give an s3:// URI (any S3-compatible store, see infra/ray/README.md)"
    )


class UnsharedStorage(ValueError):
    """The Ray cluster the run joined spans several nodes, and its storage is a local folder."""


def check_cluster_storage(storage: StorageConfig) -> None:
    """Raise UnsharedStorage when the Ray this process is connected to has nodes besides
    this one and `storage` is a local folder.

    `unshared_storage` catches a remote address before anything starts; an address that
    looks local (`auto`, this machine's own head node) may still lead to a cluster whose
    other nodes would write shards to their own disks. Asked once Ray is up, before the
    run writes anything.
    """
    import ray

    if storage.is_s3 or not ray.is_initialized():
        return
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    if nodes > 1:
        raise UnsharedStorage(
            f"field 'storage': the Ray cluster has {nodes} nodes and storage is the local folder {storage.uri}, "
            "which the other nodes cannot see; give an s3:// URI (any S3-compatible store, see infra/ray/README.md)"
        )


_LOOPBACK = {"auto", "localhost", "127.0.0.1", "::1", ""}


def _host(address: str) -> str:
    rest = address.split("://", 1)[-1]
    return rest.split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
