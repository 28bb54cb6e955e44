"""The response cache: a repeated batch costs no model calls; what is a different question
gets a different address; errors are asked again; answers survive the process that paid
for them and several processes share one cache.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from autosafe_core.llm.base import ChatModel, ChatRequest, Completion, Message, SamplingParams
from autosafe_core.llm.cache import DB_NAME, CachedChatModel
from autosafe_core.llm.scripted import ScriptedModel

SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}}


def request(text: str, **sampling) -> ChatRequest:
    return ChatRequest(messages=(Message(role="user", content=text),), sampling=SamplingParams(**sampling))


def answer(req: ChatRequest) -> str:
    return f"answer to {req.messages[-1].content}"


class BatchRecorder(ScriptedModel):
    """ScriptedModel that also records the size of every batch it receives."""

    def __init__(self, responder=answer, model_id: str = "scripted") -> None:
        super().__init__(responder, model_id=model_id)
        self.batches: list[int] = []

    async def complete(self, requests: list[ChatRequest]) -> list[Completion]:
        self.batches.append(len(requests))
        return await super().complete(requests)


def cached(tmp_path: Path, inner: ChatModel | None = None) -> CachedChatModel:
    return CachedChatModel(inner or BatchRecorder(), tmp_path / "cache")


async def test_a_repeated_batch_costs_no_model_calls_and_returns_the_same_answers(tmp_path):
    model = cached(tmp_path)
    batch = [request(f"q{i}") for i in range(5)]
    first = await model.complete(batch)
    second = await model.complete(batch)
    assert len(model.inner.calls) == 5
    assert [c.text for c in second] == [c.text for c in first] == [f"answer to q{i}" for i in range(5)]


async def test_over_a_streaming_engine_hits_come_at_once_and_each_miss_when_it_is_done(tmp_path):
    inner = ScriptedModel(answer, delays={"slow": 60.0})  # finishes each request on its own
    model = cached(tmp_path, inner)
    await model.complete([request("known")])
    assert model.streams
    known, fast, slow = model.complete_each([request("known"), request("fast"), request("slow")])
    assert known.done() and known.result().cached
    assert (await fast).text == "answer to fast" and not (await fast).cached
    assert not slow.done()  # 60 s away: the fast miss did not wait for it
    slow.cancel()
    (again,) = await model.complete([request("fast")])  # stored when it finished
    assert again.cached and (model.hits, model.misses) == (2, 3)


async def test_over_a_batch_engine_complete_each_is_one_call(tmp_path):
    model = cached(tmp_path)
    assert not model.streams
    answers = await asyncio.gather(*model.complete_each([request("a"), request("b")]))
    assert [a.text for a in answers] == ["answer to a", "answer to b"]
    assert model.inner.batches == [2]


async def test_hits_and_misses_are_counted_per_request(tmp_path):
    model = cached(tmp_path)
    await model.complete([request("a"), request("b")])
    await model.complete([request("a"), request("b"), request("c")])
    assert (model.hits, model.misses) == (2, 3)


async def test_a_hit_is_marked_cached_and_keeps_the_token_counts_first_paid(tmp_path):
    paid = Completion(text="x", prompt_tokens=120, completion_tokens=30, finish_reason="length")
    model = cached(tmp_path, BatchRecorder(lambda req: paid))
    (fresh,) = await model.complete([request("q")])
    (hit,) = await model.complete([request("q")])
    assert not fresh.cached and hit.cached
    assert (hit.text, hit.prompt_tokens, hit.completion_tokens, hit.finish_reason) == ("x", 120, 30, "length")
    assert hit.model_id == "scripted"


async def test_only_the_misses_of_a_batch_go_to_the_model_as_one_batch(tmp_path):
    model = cached(tmp_path)
    await model.complete([request("a"), request("c")])
    mixed = await model.complete([request("a"), request("b"), request("c"), request("d")])
    assert model.inner.batches == [2, 2]
    assert [r.messages[-1].content for r in model.inner.calls[2:]] == ["b", "d"]
    assert [c.text for c in mixed] == ["answer to a", "answer to b", "answer to c", "answer to d"]
    assert [c.cached for c in mixed] == [True, False, True, False]


async def test_errors_are_not_cached(tmp_path):
    attempts = []

    def flaky(req: ChatRequest) -> str | Completion:
        attempts.append(req)
        return Completion(error="APITimeoutError: Request timed out.") if len(attempts) == 1 else "fine"

    model = cached(tmp_path, BatchRecorder(flaky))
    (failed,) = await model.complete([request("q")])
    (retried,) = await model.complete([request("q")])
    (hit,) = await model.complete([request("q")])
    assert not failed.ok and retried.text == "fine" and hit.cached
    assert len(attempts) == 2 and (model.hits, model.misses) == (1, 2)


async def test_different_sampling_is_a_different_question(tmp_path):
    model = cached(tmp_path)
    variants = [
        request("q"),
        request("q", temperature=0.7),
        request("q", seed=1),
        request("q", seed=2),
        request("q", max_tokens=17),
    ]
    await model.complete(variants)
    await model.complete(variants)
    assert model.misses == len(variants) and model.hits == len(variants)


async def test_a_different_schema_is_a_different_question(tmp_path):
    model = cached(tmp_path)
    plain = request("q")
    constrained = plain.model_copy(update={"json_schema": SCHEMA})
    await model.complete([plain])
    await model.complete([constrained])
    assert model.misses == 2 and len(model.inner.calls) == 2


async def test_a_different_model_is_a_different_question(tmp_path):
    small = cached(tmp_path, BatchRecorder(model_id="small"))
    large = cached(tmp_path, BatchRecorder(model_id="large"))
    await small.complete([request("q")])
    await large.complete([request("q")])
    assert large.misses == 1 and large.model_id == "large"


async def test_answers_persist_across_instances(tmp_path):
    first = cached(tmp_path)
    await first.complete([request("q1"), request("q2")])
    await first.aclose()
    second = cached(tmp_path)
    completions = await second.complete([request("q1"), request("q2")])
    assert second.inner.calls == [] and second.hits == 2
    assert [c.text for c in completions] == ["answer to q1", "answer to q2"]


def test_a_cache_directory_that_is_a_file_is_refused_at_construction(tmp_path):
    (tmp_path / "cache").write_text("a file where the cache directory should be")
    with pytest.raises(FileExistsError, match="cache"):
        cached(tmp_path)


async def test_a_corrupt_cache_costs_model_calls_never_the_batch(tmp_path, caplog):
    model = cached(tmp_path)
    (tmp_path / "cache" / DB_NAME).write_bytes(b"not a database" * 100)
    completions = await model.complete([request("q")])
    assert completions[0].text == "answer to q" and model.misses == 1
    assert "response cache" in caplog.text


def fill_cache(directory: str, names: list[str]) -> int:
    """In a separate process: answer `names` through the cache; returns the model calls made."""
    model = CachedChatModel(ScriptedModel(answer), Path(directory))
    asyncio.run(model.complete([request(n) for n in names]))
    return len(model.inner.calls)


async def test_several_processes_share_one_cache(tmp_path):
    directory = str(tmp_path / "cache")
    halves = [[f"q{i}" for i in range(0, 60)], [f"q{i}" for i in range(40, 100)]]
    # spawn: a clean interpreter, as a Ray worker or a second shard process would be.
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        calls = list(pool.map(fill_cache, [directory] * 2, halves))
    assert sum(calls) >= 100, "every question was asked by at least one process"
    model = CachedChatModel(ScriptedModel(answer), Path(directory))
    completions = await model.complete([request(f"q{i}") for i in range(100)])
    assert model.inner.calls == [] and all(c.cached for c in completions)
    assert [c.text for c in completions] == [f"answer to q{i}" for i in range(100)]
