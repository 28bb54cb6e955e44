"""The engine pool on a real local Ray: an engine actor streams each batch's completions
back as they finish, so one slow request does not hold up the callers it was batched with."""

from __future__ import annotations

import asyncio

import pytest
import ray

from autosafe_core.llm.base import ChatRequest, Message
from autosafe_core.llm.registry import ModelSpec
from tasks.engines import EngineClient, engine_stats, engines

RESPONDER = "tests.support.schema_responder:respond"
SLOW_S = 30.0
"""Long enough that a fast caller done before it proves no barrier; the test never waits it out."""


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray of this test process. Token authentication off, as test_engines_cli's cluster
    has it: Ray keeps the mode it first read in the process, and the two must agree."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()


def request(text: str) -> ChatRequest:
    return ChatRequest(messages=[Message(role="user", content=text)])


def spec(**options) -> ModelSpec:
    return ModelSpec(backend="scripted", model=RESPONDER, options={"keep_calls": False, **options})


def test_a_fast_caller_resumes_before_the_slow_request_of_its_batch_is_done(local_ray) -> None:
    with engines({"agent": spec(delays={"slow": SLOW_S})}, "ray") as refs:
        client = EngineClient(refs["agent"])

        async def scenario() -> tuple[list, bool]:
            # Started in one turn of the loop: the client sends them to the actor as one batch.
            slow = asyncio.ensure_future(client.complete([request("a slow one")]))
            fast = asyncio.ensure_future(client.complete([request("quick"), request("also quick")]))
            done = await fast
            still_waiting = not slow.done()
            slow.cancel()
            return done, still_waiting

        fast_completions, slow_pending = asyncio.run(scenario())
    assert len(fast_completions) == 2 and all(c.error is None and c.text for c in fast_completions)
    assert slow_pending


@pytest.mark.parametrize("delays", [{"slow": SLOW_S}, {}], ids=["streamed", "one-reply"])
def test_a_caller_that_gives_up_has_its_requests_withdrawn_from_the_engine(local_ray, delays) -> None:
    # Streamed: a slow request batched with a fast one. One reply: an engine that finishes a
    # batch together (as the CPU backend does), the slow caller alone in its batch.
    options = {"delays": delays} if delays else {"delay_s": SLOW_S}
    with engines({"agent": spec(**options)}, "ray") as refs:
        client = EngineClient(refs["agent"])

        async def scenario() -> list:
            slow = asyncio.ensure_future(client.complete([request("a slow one")]))
            fast = asyncio.ensure_future(client.complete([request("quick")] if delays else []))
            done = await fast
            slow.cancel()
            # The engine's reply ends only once the slow request is withdrawn: SLOW_S otherwise.
            await asyncio.wait_for(client.drain(), SLOW_S / 2)
            return done

        done = asyncio.run(scenario())
        (stats,) = engine_stats(refs).values()
    assert all(c.ok for c in done)
    assert stats["withdrawn"] == 1


def test_a_withdrawal_that_arrives_before_its_batch_still_withdraws(local_ray) -> None:
    from tasks.wire import pack_requests, unpack_completions

    with engines({"agent": spec(delays={"slow": SLOW_S})}, "ray") as refs:
        actor = ray.get_actor(refs["agent"].actor_names[0], namespace="autosafe")
        # Two callers of one batch give up before it starts: both withdrawals hold.
        ray.get([actor.withdraw.remote("batch-1", [0]), actor.withdraw.remote("batch-1", [2])])
        packed = pack_requests([request("a slow one"), request("quick"), request("another slow one")])
        chunks = [ray.get(ref) for ref in actor.complete_stream.remote(packed, "batch-1")]
        empty = ray.get(actor.complete.remote(pack_requests([]), "batch-2"))
    by_position = {p: c for positions, packed in chunks for p, c in zip(positions, unpack_completions(packed))}
    assert [by_position[p].error.startswith("withdrawn") for p in (0, 2)] == [True, True]
    assert by_position[1].ok
    assert unpack_completions(empty) == []


def test_replicas_take_the_batches_in_turn_and_their_counters_add_up(local_ray) -> None:
    # One replica per GPU on a GPU node: the pool's only spreading is this round-robin.
    with engines({"agent": spec()}, "ray", replicas=2) as refs:
        names = refs["agent"].actor_names
        client = EngineClient(refs["agent"])

        async def scenario() -> list[list]:
            return [await client.complete([request(f"q{i}"), request(f"r{i}")]) for i in range(6)]

        answers = asyncio.run(scenario())
        per_replica = [ray.get(ray.get_actor(n, namespace="autosafe").stats.remote())["call_count"] for n in names]
        (total,) = engine_stats(refs).values()
    assert len(set(names)) == 2 and all(len(a) == 2 and all(c.ok for c in a) for a in answers)
    assert per_replica == [6, 6] and total["call_count"] == 12


def test_every_caller_gets_its_own_completions_in_order(local_ray) -> None:
    with engines({"agent": spec(delays={"first": 0.2})}, "ray") as refs:
        client = EngineClient(refs["agent"])
        calls = [[request(f"first {i}"), request(f"second {i}")] for i in range(20)] + [[]]

        async def scenario() -> list[list]:
            return await asyncio.gather(*(client.complete(c) for c in calls))

        answers = asyncio.run(scenario())
    assert [len(a) for a in answers] == [len(c) for c in calls]
    for requests, completions in zip(calls, answers, strict=True):
        # The schema responder's answer is a function of the request: compare with a direct call.
        from tests.support.schema_responder import respond

        assert [c.text for c in completions] == [respond(r) for r in requests]


def test_an_engine_that_fails_fails_every_waiting_caller_with_its_error(local_ray) -> None:
    failing = ModelSpec(backend="scripted", model="tests.support.failing_responder:respond",
                        options={"keep_calls": False})  # fmt: skip
    with engines({"agent": failing}, "ray") as refs:
        client = EngineClient(refs["agent"])

        async def scenario() -> list:
            return await asyncio.gather(
                client.complete([request("one")]), client.complete([request("two")]), return_exceptions=True
            )

        outcomes = asyncio.run(scenario())
    assert all(isinstance(o, Exception) and "engine broke" in str(o) for o in outcomes)


def test_complete_each_resolves_every_request_with_its_own_completion_or_the_engines_error() -> None:
    from autosafe_core.llm.scripted import ScriptedModel
    from tests.support.failing_responder import respond as fail
    from tests.support.schema_responder import respond

    async def each(model, requests):
        return await asyncio.gather(*model.complete_each(requests), return_exceptions=True)

    requests = [request("one"), request("two")]
    together, apart = ScriptedModel(respond), ScriptedModel(respond, delays={"two": 0.01})
    assert not together.streams and apart.streams
    for model in (together, apart):
        assert [c.text for c in asyncio.run(each(model, requests))] == [respond(r) for r in requests]
    broken = asyncio.run(each(ScriptedModel(fail), requests))
    assert all(isinstance(b, RuntimeError) and "engine broke" in str(b) for b in broken)
