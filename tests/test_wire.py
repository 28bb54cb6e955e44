"""The packed form of a batch sent to an engine actor: exact round trips, each shared
text and schema carried once."""

from __future__ import annotations

import pickle

from autosafe_core.llm.base import ChatRequest, Completion, Message, SamplingParams
from tasks.wire import pack_completions, pack_requests, unpack_completions, unpack_requests

SPECS = "toolkit specs " * 200


def system() -> Message:
    # A fresh, equal copy per call, as a prompt rendered per call is.
    return Message(role="system", content="".join(["toolkit specs "] * 200))
SCHEMA = {"type": "object", "properties": {"tool": {"enum": ["a", "b"]}}, "required": ["tool"]}


def batch(n: int) -> list[ChatRequest]:
    sampling = SamplingParams(temperature=0.7, max_tokens=64, seed=3)
    return [
        ChatRequest(messages=(system(), Message(role="user", content=f"step {i}")), sampling=sampling, json_schema=SCHEMA)
        for i in range(n)
    ] + [ChatRequest(messages=(Message(role="user", content="plain"),))]


def test_requests_round_trip_through_pickle_unchanged():
    requests = batch(5)
    back = unpack_requests(pickle.loads(pickle.dumps(pack_requests(requests))))
    assert back == requests
    assert [r.cache_key("m") for r in back] == [r.cache_key("m") for r in requests]
    assert back[-1].json_schema is None and back[-1].sampling == SamplingParams()


def test_a_shared_system_prompt_and_schema_travel_once():
    texts, shared, rows = pack_requests(batch(100))
    assert texts.count(SPECS) == 1 and len(texts) == 102
    assert sum(obj == SCHEMA for obj in shared) == 1
    packed_size = len(pickle.dumps(pack_requests(batch(100))))
    assert packed_size * 10 < len(pickle.dumps(batch(100)))


def test_completions_round_trip_with_errors_and_counts():
    completions = [
        Completion(text='{"tool": "a"}', prompt_tokens=12, completion_tokens=4, model_id="m", cached=True),
        Completion(error="timeout after 30 s", finish_reason="error"),
    ]
    assert unpack_completions(pickle.loads(pickle.dumps(pack_completions(completions)))) == completions
