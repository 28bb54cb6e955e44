"""A content-addressed response cache around any ChatModel: asking twice costs one call.

The address is `ChatRequest.cache_key(model_id)`: model id, messages, sampling (seed
included) and schema. Answers live in one SQLite file in WAL mode, so several
processes of one machine (Ray workers, parallel shards) read and write it together;
it is not for network file systems. Only successful completions are stored: an error
is asked again next time. A hit is the stored completion with `cached=True`, token
counts as first paid. Over an engine that finishes a batch's requests one by one
(`streams`: vLLM, an OpenAI-compatible server), `complete_each` hands hits back at
once and each miss as the engine finishes it.

The cache knows nothing of what a request means. A request sampled at temperature > 0
without a seed has no single answer, yet it is cached like any other: a stage that
wants several samples of one prompt gives each its own seed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sqlite3
from pathlib import Path

from autosafe_core.llm.base import ChatModel, ChatRequest, Completion

log = logging.getLogger(__name__)

DB_NAME = "completions.sqlite3"
_LOOKUP_CHUNK = 500  # below SQLite's limit on bound parameters in one statement
_BUSY_TIMEOUT_S = 60.0


class CachedChatModel(ChatModel):
    """`inner` behind a cache in `directory`; counts `hits` and `misses` per request."""

    def __init__(self, inner: ChatModel, directory: Path) -> None:
        self.inner = inner
        self.directory = Path(directory)
        # Here, not at the first lookup: a cache_dir that cannot be a directory is a configuration error.
        self.directory.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0
        self._db: sqlite3.Connection | None = None
        self._db_pid: int | None = None

    @property
    def model_id(self) -> str:  # type: ignore[override]
        return self.inner.model_id

    def __repr__(self) -> str:
        return f"CachedChatModel({self.inner!r}, directory={str(self.directory)!r})"

    async def complete(self, requests: list[ChatRequest]) -> list[Completion]:
        keys, results, missing = self._split(requests)
        if missing:
            fresh = await self.inner.complete([requests[i] for i in missing])
            self._store([(keys[i], c) for i, c in zip(missing, fresh, strict=True) if c.ok])
            for i, completion in zip(missing, fresh, strict=True):
                results[i] = completion
        return [c for c in results if c is not None]

    @property
    def streams(self) -> bool:  # type: ignore[override]
        return self.inner.streams

    def complete_each(self, requests: list[ChatRequest]) -> list[asyncio.Future[Completion]]:
        """Hits at once; each miss when the inner model finishes it (stored then). Cancelling a
        miss's future withdraws it from the inner model."""
        keys, results, missing = self._split(requests)
        fresh = dict(zip(missing, self.inner.complete_each([requests[i] for i in missing]), strict=True))
        loop = asyncio.get_running_loop()
        each: list[asyncio.Future[Completion]] = []
        for i, (key, hit) in enumerate(zip(keys, results, strict=True)):
            if hit is None:
                fresh[i].add_done_callback(functools.partial(self._settle, key))
                each.append(fresh[i])
            else:
                done: asyncio.Future[Completion] = loop.create_future()
                done.set_result(hit)
                each.append(done)
        return each

    def _split(self, requests: list[ChatRequest]) -> tuple[list[str], list[Completion | None], list[int]]:
        """Each request's key, its stored completion (None on a miss), and where the misses are; counted."""
        keys = [r.cache_key(self.model_id) for r in requests]
        stored = self._lookup(keys)
        results: list[Completion | None] = [
            stored[k].model_copy(update={"cached": True}) if k in stored else None for k in keys
        ]
        missing = [i for i, c in enumerate(results) if c is None]
        self.hits += len(requests) - len(missing)
        self.misses += len(missing)
        return keys, results, missing

    def _settle(self, key: str, done: asyncio.Future[Completion]) -> None:
        if not done.cancelled() and done.exception() is None and done.result().ok:
            self._store([(key, done.result())])

    async def aclose(self) -> None:
        await self.inner.aclose()
        if self._db is not None and self._db_pid == os.getpid():
            self._db.close()
        self._db = self._db_pid = None

    def _connection(self) -> sqlite3.Connection:
        # A connection must not cross a fork: a worker process opens its own.
        if self._db is None or self._db_pid != os.getpid():
            path = self.directory / DB_NAME
            db = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
            try:
                try:
                    # Switching to WAL takes an exclusive lock without waiting for it; the mode
                    # is kept in the file, so when another process holds the lock it has set it.
                    db.execute("PRAGMA journal_mode=WAL")
                except sqlite3.OperationalError as exc:
                    log.debug("response cache: journal mode left to the other writer: %s", exc)
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS completions (key TEXT PRIMARY KEY, completion TEXT NOT NULL)"
                )
            except sqlite3.Error:
                db.close()
                raise
            self._db, self._db_pid = db, os.getpid()
        return self._db

    # Lookups and writes are one short statement per batch and run on the event loop's
    # thread: milliseconds, against model calls of seconds.
    def _lookup(self, keys: list[str]) -> dict[str, Completion]:
        unique = sorted(set(keys))
        found: dict[str, Completion] = {}
        try:
            db = self._connection()
            for start in range(0, len(unique), _LOOKUP_CHUNK):
                chunk = unique[start : start + _LOOKUP_CHUNK]
                marks = ",".join("?" * len(chunk))
                query = f"SELECT key, completion FROM completions WHERE key IN ({marks})"
                for key, text in db.execute(query, chunk):
                    found[key] = Completion.model_validate_json(text)
        except (sqlite3.Error, ValueError) as exc:
            # A broken cache costs model calls, never the batch.
            log.warning("response cache %s unreadable, treating as misses: %s", self.directory / DB_NAME, exc)
            return {}
        return found

    def _store(self, entries: list[tuple[str, Completion]]) -> None:
        if not entries:
            return
        rows = [(key, c.model_copy(update={"cached": False}).model_dump_json()) for key, c in entries]
        try:
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")
            try:
                # First answer wins: a concurrent writer of the same key keeps its own.
                db.executemany("INSERT OR IGNORE INTO completions (key, completion) VALUES (?, ?)", rows)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            log.warning(
                "response cache %s not written (%d answers): %s", self.directory / DB_NAME, len(rows), exc
            )
