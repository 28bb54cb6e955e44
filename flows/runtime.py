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
    api_url = os.environ.get("PREFECT_API_URL")
    if api_url:
        init_kwargs["runtime_env"] = {"env_vars": {"PREFECT_API_URL": api_url}}
    return RayTaskRunner(address=ray_address, init_kwargs=init_kwargs)
