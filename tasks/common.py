"""What every shard task shares: Prefect task options, per-role token metering, and the
commit of a stage result (rejections first, then the rows that mark the shard done).

A task takes one shard of input by reference (run, stage, shard id), calls the core
stage, and returns the `ShardRef` of what it committed: never rows through Prefect.
A task whose shard is already committed returns that commit and calls no model, so a
retried or re-run task never writes a row twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache

from prefect import task
from prefect.cache_policies import NONE
from prefect.tasks import exponential_backoff

from autosafe_core.catalog import Catalog, default_catalog
from autosafe_core.llm.base import ChatModel, ChatRequest, Completion
from autosafe_core.ots import Usage
from autosafe_core.stages.common import StageResult
from autosafe_core.store import Run, ShardRef, commit_shard, read_commit
from tasks.engines import EngineClient, EngineRef
from tasks.heap import settle_heap

TASK_RETRIES = 3


def shard_task(stage: str):
    """A Prefect task for one shard of `stage`: named '<stage>-<shard_id>', retried with
    exponential backoff and jitter; no result persistence or input hashing (results
    are small references, and inputs are configs)."""
    return task(
        name=stage,
        task_run_name=f"{stage}-{{shard_id}}",
        retries=TASK_RETRIES,
        retry_delay_seconds=exponential_backoff(backoff_factor=1),
        retry_jitter_factor=0.5,
        cache_policy=NONE,
        persist_result=False,
        log_prints=False,
    )


@cache
def catalog() -> Catalog:
    """The catalog every worker process loads once."""
    return default_catalog()


class MeteredModel(ChatModel):
    """A role's view of an engine: forwards calls and sums the tokens this role spent."""

    def __init__(self, inner: ChatModel):
        self.inner = inner
        self.model_id = inner.model_id
        self.usage = Usage()

    async def complete(self, requests: list[ChatRequest]) -> list[Completion]:
        out = await self.inner.complete(requests)
        self.usage = self.usage + Usage(
            calls=len(out),
            prompt_tokens=sum(c.prompt_tokens for c in out),
            completion_tokens=sum(c.completion_tokens for c in out),
        )
        return out


def role_models(engines: Mapping[str, EngineRef], roles: tuple[str, ...]) -> dict[str, MeteredModel]:
    """One metered client per role; roles on the same engine share its client (and its batches)."""
    settle_heap()
    clients: dict[str, EngineClient] = {}
    out = {}
    for role in roles:
        ref = engines[role]
        key = ref.spec.key
        if key not in clients:
            clients[key] = EngineClient(ref)
        out[role] = MeteredModel(clients[key])
    return out


def already(run: Run, table: str, stage: str, shard_id: str) -> ShardRef | None:
    """The shard's commit if a previous attempt or run made it."""
    return read_commit(run, table, stage, shard_id)


def commit_result(
    run: Run,
    table: str,
    stage: str,
    shard_id: str,
    result: StageResult,
    models: Mapping[str, MeteredModel],
    counters: Mapping[str, int] | None = None,
) -> ShardRef:
    """Commit the stage's rejections, then its rows, with token usage by role and counters."""
    from prefect.runtime import task_run

    commit_shard(run, "rejections", stage, shard_id, result.rejections)
    all_counters = {
        f"{stage}.rejections": len(result.rejections),
        f"{stage}.model_errors": sum("model error" in r.reason for r in result.rejections),
        f"{stage}.task_retries": max(0, (task_run.run_count or 1) - 1),
        **(counters or {}),
    }
    return commit_shard(
        run,
        table,
        stage,
        shard_id,
        result.rows,
        counters=all_counters,
        role_usage={role: m.usage for role, m in models.items()},
    )
