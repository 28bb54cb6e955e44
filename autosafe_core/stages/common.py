"""What the three model stages share: bounded concurrency, the retry of a rejected
answer, and the bookkeeping that turns role results into rows, rejections and usage.

A stage works on a batch (a shard) as asyncio coroutines: one per item, at most
`limit` at once (`bounded_map`), each making its model calls in sequence. Nothing
here raises for a model's output: a rejected answer is asked again up to `retries`
times with the reason fed back, and every rejected answer becomes a `Rejection`
row. Per-call overhead is kept to a few dict and list operations, since a shard may
push thousands of calls through a fast engine.

Knows nothing about which stage or role it serves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from autosafe_core.llm.base import ChatModel, SamplingParams
from autosafe_core.ots import Provenance, Rejection, Usage, stable_id
from autosafe_core.roles.base import RoleResult
from autosafe_core.roles.toolbox import CatalogLike, Toolbox

T = TypeVar("T")
R = TypeVar("R")
V = TypeVar("V", bound=BaseModel)

RAW_OUTPUT_CHARS = 2000
"""A rejected answer is kept for diagnosis up to this many characters."""


@dataclass
class StageResult(Generic[T]):
    """A stage's rows, the answers it rejected (each with its reason), and what it cost.

    `provenance` holds the prompt version and model id of every role the stage
    asked, and the usage of every call, rejected ones included.
    """

    rows: list[T]
    rejections: list[Rejection]
    provenance: Provenance

    @property
    def usage(self) -> Usage:
        return self.provenance.usage


async def bounded_map(items: Sequence[T], fn: Callable[[T], Awaitable[R]], limit: int) -> list[R]:
    """`[await fn(x) for x in items]` with at most `limit` running at once; results in input order.

    `limit` workers pull the next item when they finish one, so exactly `limit` are in
    flight while at least that many remain, and no task waits in a queue.
    """
    if limit < 1:
        raise ValueError(f"concurrency limit must be at least 1, got {limit}")
    results: list[Any] = [None] * len(items)
    indices = iter(range(len(items)))

    async def worker() -> None:
        # One shared iterator: in a single event loop, `next` is never interleaved.
        for i in indices:
            results[i] = await fn(items[i])

    workers = [asyncio.ensure_future(worker()) for _ in range(min(limit, len(items)))]
    try:
        await asyncio.gather(*workers)
    finally:
        # A failing item (a bug, or cancellation from outside) stops the others, and
        # they are awaited, so nothing of this batch runs on after it returns.
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    return results


def seed_for(*parts: Any) -> int:
    """A sampling seed fixed by the inputs, so a re-run samples, and hits the cache, alike."""
    return int(stable_id(*parts, length=8), 16)


def judge_sampling(temperature: float, *key: Any) -> SamplingParams:
    """The safety judge's sampling: its role default when greedy, else seeded by `key` (re-runs judge alike)."""
    from autosafe_core.roles.evaluator import SAMPLING

    if temperature == 0:
        return SAMPLING
    return SAMPLING.model_copy(update={"temperature": temperature, "seed": seed_for("judge", *key)})


def config_key(config: BaseModel, exclude: Iterable[str] = ("concurrency",)) -> dict[str, Any]:
    """The settings of a stage that change what it produces (not how fast), for ids."""
    return config.model_dump(mode="json", exclude=set(exclude))


@dataclass
class Ledger:
    """One item's bookkeeping: its rejections, the usage of all its calls, who worked on it."""

    stage: str
    item_id: str
    roles: dict[str, tuple[str, ChatModel]] = field(default_factory=dict, repr=False)
    toolboxes: dict[tuple[str, ...], Toolbox | str] = field(default_factory=dict, repr=False)
    """Shared by a stage's ledgers: toolkit names -> toolbox, or why there is none."""
    rejections: list[Rejection] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    prompt_versions: dict[str, str] = field(default_factory=dict)
    model_ids: dict[str, str] = field(default_factory=dict)

    def uses(self, *roles: str) -> None:
        """Record that these roles (with their prompt versions and models) worked on this item."""
        for role in roles:
            version, model = self.roles[role]
            self.prompt_versions[role] = version
            self.model_ids[role] = model.model_id

    def reject(self, role: str, reason: str, raw: str = "", where: str = "") -> None:
        self.rejections.append(
            Rejection(
                stage=self.stage,
                role=role,
                item_id=self.item_id,
                reason=f"{where}: {reason}" if where else reason,
                raw_output=raw[:RAW_OUTPUT_CHARS],
            )
        )

    def toolbox(self, catalog: CatalogLike, toolkits: Sequence[str], what: str) -> Toolbox | None:
        """The toolbox of `toolkits`, or None after rejecting `what` (e.g. "scenario X") as input."""
        key = tuple(toolkits)
        if key not in self.toolboxes:
            try:
                self.toolboxes[key] = Toolbox.of(catalog, toolkits)
            except KeyError as exc:
                self.toolboxes[key] = exc.args[0]
        found = self.toolboxes[key]
        if isinstance(found, str):
            self.reject("input", f"{what}: {found}")
            return None
        return found

    def provenance(self) -> Provenance:
        return Provenance(prompt_versions=dict(self.prompt_versions), model_ids=dict(self.model_ids), usage=self.usage)

    async def ask(
        self,
        role: str,
        call: Callable[[RoleResult[Any] | None], Awaitable[RoleResult[V]]],
        retries: int,
        where: str = "",
    ) -> V | None:
        """The value of `call()`, asked again (with the rejected answer fed back) up to `retries` times.

        Every call's usage is counted and every rejected answer recorded; None when
        all attempts were rejected.
        """
        previous: RoleResult[Any] | None = None
        for _ in range(retries + 1):
            result = await call(previous)
            self.usage = self.usage + result.usage
            if result.value is not None:
                return result.value
            self.reject(role, result.reason or "rejected without a reason", result.raw, where)
            if result.reason is not None and result.reason.startswith("model error"):
                # The engine failed, not the answer: feeding it back would teach nothing.
                previous = None
            else:
                previous = result
        return None


@dataclass
class Books:
    """A stage's ledgers, one per item in the order the items started, its roles, and the
    toolboxes its items share (scenarios of the same toolkits build one)."""

    stage: str
    roles: dict[str, tuple[str, ChatModel]]
    """role -> (prompt version, model)"""
    ledgers: list[Ledger] = field(default_factory=list)
    toolboxes: dict[tuple[str, ...], Toolbox | str] = field(default_factory=dict)

    def open(self, item_id: str) -> Ledger:
        ledger = Ledger(self.stage, item_id, self.roles, self.toolboxes)
        self.ledgers.append(ledger)
        return ledger

    def result(self, rows: list[T]) -> StageResult[T]:
        """The stage result of `rows` and of every item's ledger (rows or not)."""
        rejections: list[Rejection] = []
        usage = Usage()
        versions: dict[str, str] = {}
        models: dict[str, str] = {}
        for ledger in self.ledgers:
            rejections.extend(ledger.rejections)
            usage = usage + ledger.usage
            versions.update(ledger.prompt_versions)
            models.update(ledger.model_ids)
        return StageResult(rows, rejections, Provenance(prompt_versions=versions, model_ids=models, usage=usage))
