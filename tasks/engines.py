"""Shared LLM engines: one engine per distinct model spec, reached by every shard task.

An engine is a `ChatModel` built from a `ModelSpec`. On Ray it lives in a named async
actor (one per replica: a GPU or a tensor-parallel group on a cluster, one on a
laptop), so the calls of all shards on all nodes land in one continuously batching
engine. Without Ray (the thread runner) it lives in this process on its own event
loop thread. Either way a task gets an `EngineClient`, which is itself a `ChatModel`,
so the core stages never know where the engine runs.

A caller that stops waiting (its task cancelled: a safe-action candidate made moot by
an earlier one) has its requests withdrawn: the engine cancels them, so vLLM aborts them
and the transformers decode loop drops their rows, instead of computing what nobody reads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import itertools
import os
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Literal

from pydantic import BaseModel

from autosafe_core.llm.base import ChatModel, ChatRequest, Completion
from autosafe_core.llm.registry import ModelSpec, build_model
from tasks.heap import settle_heap
from tasks.wire import (
    PackedCompletions,
    PackedRequests,
    pack_completions,
    pack_requests,
    unpack_completions,
    unpack_requests,
)

NAMESPACE = "autosafe"


class EngineRef(BaseModel):
    """How to reach one engine: where it runs, its replicas' actor names, its spec."""

    placement: Literal["ray", "local"]
    spec: ModelSpec
    actor_names: list[str] = []

    @property
    def model_id(self) -> str:
        return self.spec.model


def engine_name(spec: ModelSpec, replica: int) -> str:
    digest = hashlib.sha256(spec.key.encode()).hexdigest()[:12]
    return f"engine-{digest}-{replica}"


# --- in-process engines (thread runner) ---------------------------------------------


class _LocalEngine:
    """A model on a private event loop thread, callable from any thread's loop."""

    def __init__(self, spec: ModelSpec):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="autosafe-engine", daemon=True)
        self._thread.start()
        self.model = build_model(spec)

    async def complete(self, requests: list[ChatRequest]) -> list[Completion]:
        future = asyncio.run_coroutine_threadsafe(self.model.complete(requests), self.loop)
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.model.aclose(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()


_LOCAL: dict[str, _LocalEngine] = {}
_LOCAL_LOCK = threading.Lock()


def _local_engine(spec: ModelSpec) -> _LocalEngine:
    with _LOCAL_LOCK:
        if spec.key not in _LOCAL:
            _LOCAL[spec.key] = _LocalEngine(spec)
        return _LOCAL[spec.key]


# --- Ray actors -----------------------------------------------------------------------


def _actor_class():
    import ray

    @ray.remote(max_concurrency=10_000)
    class EngineActor:
        """Hosts one engine; async methods, so thousands of calls share its batches."""

        def __init__(self, spec_json: str):
            spec = ModelSpec.model_validate_json(spec_json)
            self.spec_json = spec_json
            if spec.backend == "transformers":
                # Ray gives a 0-CPU actor one math thread; a CPU model wants the machine's.
                import torch

                torch.set_num_threads(int(spec.options.get("cpu_threads") or os.cpu_count() or 1))
            self.model = build_model(spec)
            self._batches: dict[str, list[asyncio.Future[Completion]]] = {}
            self._early: dict[str, list[int]] = {}  # withdrawals that came before their batch
            self.withdrawn = 0
            settle_heap()

        async def complete(self, packed: PackedRequests, batch: str = "") -> PackedCompletions:
            """The batch's completions, all in one reply (an engine that finishes them together)."""
            futures = self._start(packed, batch)
            try:
                if futures:
                    await asyncio.wait(futures)
                return pack_completions([_settled(f) for f in futures])
            finally:
                self._end(futures, batch)

        async def complete_stream(
            self, packed: PackedRequests, batch: str = ""
        ) -> AsyncIterator[tuple[list[int], PackedCompletions]]:
            """The batch's completions as they finish (a Ray streaming generator): chunks of
            (positions in the batch, their packed completions), one chunk per finishing moment."""
            futures = self._start(packed, batch)
            pending = {future: i for i, future in enumerate(futures)}
            try:
                while pending:
                    await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    finished = sorted((f for f in pending if f.done()), key=pending.__getitem__)
                    yield [pending.pop(f) for f in finished], pack_completions([_settled(f) for f in finished])
            finally:
                self._end(futures, batch)

        def _start(self, packed: PackedRequests, batch: str) -> list[asyncio.Future[Completion]]:
            futures = self.model.complete_each(unpack_requests(packed))
            if batch:
                self._batches[batch] = futures
                for position in self._early.pop(batch, ()):
                    self._withdraw_one(futures, position)
            return futures

        def _end(self, futures: list[asyncio.Future[Completion]], batch: str) -> None:
            self._batches.pop(batch, None)
            for future in futures:
                future.cancel()

        async def withdraw(self, batch: str, positions: list[int]) -> None:
            """The caller no longer wants these requests of `batch`: the engine stops them
            (their place in the reply says "withdrawn")."""
            futures = self._batches.get(batch)
            if futures is None:  # not started yet, or already answered
                self._early.setdefault(batch, []).extend(positions)
                while len(self._early) > _EARLY_WITHDRAWALS:
                    self._early.pop(next(iter(self._early)))
                return
            for position in positions:
                self._withdraw_one(futures, position)

        def _withdraw_one(self, futures: list[asyncio.Future[Completion]], position: int) -> None:
            if futures[position].cancel():
                self.withdrawn += 1

        async def stats(self) -> dict[str, int]:
            return {**model_stats(self.model), "withdrawn": self.withdrawn}

        async def streams(self) -> bool:
            return self.model.streams

        async def spec(self) -> str:
            return self.spec_json

        async def close(self) -> None:
            await self.model.aclose()

    return EngineActor


_EARLY_WITHDRAWALS = 10_000
"""Withdrawals an engine keeps for batches it has not seen (Ray may start an async actor's
calls out of order); one for a batch already answered is never claimed, so the oldest go."""
_WITHDRAWN = Completion(error="withdrawn: the caller cancelled it")


def _settled(future: asyncio.Future[Completion]) -> Completion:
    """A finished request's completion; one withdrawn (cancelled) says so."""
    return _WITHDRAWN if future.cancelled() else future.result()


_COUNTERS = ("hits", "misses", "batches_run", "peak_in_flight", "call_count")


def model_stats(model: ChatModel) -> dict[str, int]:
    """What an engine counted, through its wrappers: cache hits and misses, batches, the
    backend's calls, retries and errors."""
    out: dict[str, int] = {}
    layer = model
    while layer is not None:
        for key in _COUNTERS:
            value = getattr(layer, key, None)
            if isinstance(value, int):
                out[key] = out.get(key, 0) + value
        stats = getattr(layer, "stats", None)
        if dataclasses.is_dataclass(stats):
            for key, value in dataclasses.asdict(stats).items():
                out[key] = out.get(key, 0) + int(value)
        layer = getattr(layer, "inner", None)
    return out


class EngineClient(ChatModel):
    """The `ChatModel` a task uses: forwards batches to the engine, round-robin over replicas.

    On Ray, the calls a task's coroutines make in one turn of its event loop go to the
    actor as one batch (one remote call, packed by `tasks.wire`), so the cost of a Ray
    round trip is shared by up to the stage's concurrency of model calls.
    """

    def __init__(self, ref: EngineRef):
        self.ref = ref
        self.model_id = ref.model_id
        self._pending: list[tuple[list[ChatRequest], asyncio.Future]] = []
        self._sending: set[asyncio.Task] = set()
        self._streams: bool | None = None  # whether the engine streams a batch back (asked on the first batch)
        if ref.placement == "ray":
            import ray

            self._actors = [ray.get_actor(name, namespace=NAMESPACE) for name in ref.actor_names]
            self._next = itertools.cycle(range(len(self._actors)))
        else:
            self._local = _local_engine(ref.spec)

    async def complete(self, requests: list[ChatRequest]) -> list[Completion]:
        if self.ref.placement == "local":
            return await self._local.complete(requests)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self._pending:
            # Runs after every coroutine already woken in this turn has had its say.
            loop.call_soon(self._flush)
        self._pending.append((requests, future))
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[list[ChatRequest], asyncio.Future]]) -> None:
        """One remote call for the batch, streamed back: each caller resumes as soon as its own
        requests are done, not when the batch's slowest is. A barrier per batch would make the
        rollouts that finished early wait, and the engine run emptier while they do."""
        flat = [request for requests, _ in batch for request in requests]
        owner = [(c, k) for c, (requests, _) in enumerate(batch) for k in range(len(requests))]
        results: list[list[Completion | None]] = [[None] * len(requests) for requests, _ in batch]
        remaining = [len(requests) for requests, _ in batch]
        for c, (_, future) in enumerate(batch):
            if remaining[c] == 0 and not future.done():
                future.set_result([])
        if not flat:
            return
        try:
            actor = self._actors[next(self._next)]
            key = uuid.uuid4().hex
            self._withdraw_when_cancelled(actor, key, batch, owner)
            if self._streams is None:
                self._streams = await actor.streams.remote()
            if self._streams:
                chunks = (await ref async for ref in actor.complete_stream.remote(pack_requests(flat), key))
            else:  # all finish together: one reply costs less than a stream
                chunks = _one_chunk(actor.complete.remote(pack_requests(flat), key), len(flat))
            async for positions, packed in chunks:
                for position, completion in zip(positions, unpack_completions(packed), strict=True):
                    c, k = owner[position]
                    results[c][k] = completion
                    remaining[c] -= 1
                    future = batch[c][1]
                    if remaining[c] == 0 and not future.done():
                        future.set_result(results[c])
            if any(remaining):
                raise RuntimeError(f"engine stream ended with {sum(remaining)} of {len(flat)} completions missing")
        except BaseException as exc:  # the engine died: every caller still waiting hears why
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    async def drain(self) -> None:
        """Wait until every batch sent has been answered in full (withdrawn requests included)."""
        while self._sending:
            await asyncio.wait(set(self._sending))

    @staticmethod
    def _withdraw_when_cancelled(actor, key: str, batch: list, owner: list[tuple[int, int]]) -> None:
        """A caller that stops waiting (cancelled: a safe-action candidate made moot) has its
        requests withdrawn from the engine, which then stops computing them."""
        positions: dict[int, list[int]] = {}
        for position, (c, _) in enumerate(owner):
            positions.setdefault(c, []).append(position)

        def withdraw(c: int, future: asyncio.Future) -> None:
            if future.cancelled():
                actor.withdraw.remote(key, positions[c])

        for c, (_, future) in enumerate(batch):
            future.add_done_callback(functools.partial(withdraw, c))

    async def stats(self) -> dict[str, int]:
        """The engine's counters, summed over its replicas."""
        if self.ref.placement == "local":
            return model_stats(self._local.model)
        out: dict[str, int] = {}
        for actor in self._actors:
            for key, value in (await actor.stats.remote()).items():
                out[key] = max(out.get(key, 0), value) if key == "peak_in_flight" else out.get(key, 0) + value
        return out


async def _one_chunk(reply, count: int) -> AsyncIterator[tuple[list[int], PackedCompletions]]:
    """A whole batch's reply as the one chunk of a stream."""
    yield list(range(count)), await reply


def _resources(spec: ModelSpec) -> dict:
    gpus = float(spec.options.get("num_gpus", spec.options.get("tensor_parallel_size", 0)))
    return {"num_cpus": 0, "num_gpus": gpus}


@contextmanager
def engines(
    specs: dict[str, ModelSpec], placement: Literal["ray", "local"], replicas: int = 1
) -> Iterator[dict[str, EngineRef]]:
    """Engines for each role (roles with equal specs share one), stopped on exit.

    On Ray, an engine whose named actors already exist (a long-lived deployment, or
    one the enclosing flow started) is attached to and left running on exit.
    """
    started: list = []
    try:
        yield _start_all(specs, placement, replicas, started)
    finally:
        _stop(started)


def _start_all(
    specs: dict[str, ModelSpec], placement: str, replicas: int, started: list, detached: bool = False
) -> dict[str, EngineRef]:
    """One engine per distinct spec, by role; what this call started goes into `started`."""
    by_key: dict[str, EngineRef] = {}
    for spec in specs.values():
        if spec.key not in by_key:
            by_key[spec.key] = _start(spec, placement, replicas, started, detached)
    return {role: by_key[spec.key] for role, spec in specs.items()}


def _start(spec: ModelSpec, placement: str, replicas: int, started: list, detached: bool = False) -> EngineRef:
    if placement == "local":
        with _LOCAL_LOCK:
            fresh = spec.key not in _LOCAL
        _local_engine(spec)
        if fresh:
            started.append(spec.key)
        return EngineRef(placement="local", spec=spec)
    import ray

    actor_cls = _actor_class()
    names = []
    created = []
    for replica in range(replicas):
        name = engine_name(spec, replica)
        try:
            ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            options = {"name": name, "namespace": NAMESPACE, **_resources(spec)}
            if detached:
                options["lifetime"] = "detached"
            created.append(actor_cls.options(**options).remote(spec.model_dump_json()))
        names.append(name)
    # Wait for construction so a model that fails to load fails the run here, once.
    ray.get([a.stats.remote() for a in created])
    if not detached:
        started.extend(created)
    return EngineRef(placement="ray", spec=spec, actor_names=names)


def start_long_lived(specs: dict[str, ModelSpec], replicas: int = 1) -> dict[str, EngineRef]:
    """Engines that outlive this driver (detached Ray actors), for runs to attach to.

    A run whose role has an equal spec (same `ModelSpec.key`) finds the actors by name
    and leaves them running, so a large engine loads once for many runs. Engines that
    already run are kept as they are.
    """
    return _start_all(specs, "ray", replicas, [], detached=True)


def running_engines() -> list[dict[str, str]]:
    """Every engine actor of this Ray cluster: its name, backend and model."""
    import ray
    from ray.util import list_named_actors

    names = sorted(
        entry["name"]
        for entry in list_named_actors(all_namespaces=True)
        if entry["namespace"] == NAMESPACE and entry["name"].startswith("engine-")
    )
    specs = ray.get([ray.get_actor(name, namespace=NAMESPACE).spec.remote() for name in names])
    out = []
    for name, spec_json in zip(names, specs, strict=True):
        spec = ModelSpec.model_validate_json(spec_json)
        out.append({"name": name, "backend": spec.backend, "model": spec.model})
    return out


def stop_engines(names: list[str]) -> list[str]:
    """Stop the named engine actors (after closing their models); the names stopped."""
    import ray

    found = {}
    for name in names:
        try:
            found[name] = ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            continue
    _close_and_kill(list(found.values()))
    return list(found)


def _stop(started: list) -> None:
    actors = [a for a in started if not isinstance(a, str)]
    for key in (k for k in started if isinstance(k, str)):
        with _LOCAL_LOCK:
            engine = _LOCAL.pop(key, None)
        if engine is not None:
            engine.close()
    if actors:
        _close_and_kill(actors)


def _close_and_kill(actors: list) -> None:
    """Close each engine's model (freeing its GPU cleanly), then end the actors."""
    import ray

    ray.get([a.close.remote() for a in actors])
    for actor in actors:
        ray.kill(actor)


def engine_stats(refs: dict[str, EngineRef]) -> dict[str, dict[str, int]]:
    """Each distinct engine's counters (cache hits, retries, errors...), by the roles it serves."""
    by_key: dict[str, tuple[EngineRef, list[str]]] = {}
    for role, ref in refs.items():
        by_key.setdefault(ref.spec.key, (ref, []))[1].append(role)
    out = {}
    for ref, roles in by_key.values():
        if ref.placement == "local":
            stats = model_stats(_local_engine(ref.spec).model)
        else:
            import ray

            stats = {}
            actors = [ray.get_actor(name, namespace=NAMESPACE) for name in ref.actor_names]
            for replica in ray.get([a.stats.remote() for a in actors]):
                for key, value in replica.items():
                    stats[key] = max(stats.get(key, 0), value) if key == "peak_in_flight" else stats.get(key, 0) + value
        out["+".join(sorted(roles))] = stats
    return out
