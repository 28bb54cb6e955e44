"""The packed form of a batch sent to an engine actor: exact round trips, each shared
text and schema carried once, and one schema object on the engine side per distinct schema."""

from __future__ import annotations

import json
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
    assert sum(obj == json.dumps(SCHEMA) for obj in shared) == 1
    packed_size = len(pickle.dumps(pack_requests(batch(100))))
    assert packed_size * 10 < len(pickle.dumps(batch(100)))


def test_completions_round_trip_with_errors_and_counts():
    completions = [
        Completion(text='{"tool": "a"}', prompt_tokens=12, completion_tokens=4, model_id="m", cached=True),
        Completion(error="timeout after 30 s", finish_reason="error"),
    ]
    assert unpack_completions(pickle.loads(pickle.dumps(pack_completions(completions)))) == completions


def test_every_batch_hands_the_engine_the_same_schema_object():
    # What an engine caches per schema object (a compiled grammar) must survive from batch to batch.
    first = unpack_requests(pickle.loads(pickle.dumps(pack_requests(batch(3)))))
    second = unpack_requests(pickle.loads(pickle.dumps(pack_requests(batch(4)))))
    schemas = {id(r.json_schema) for r in first + second if r.json_schema is not None}
    assert len(schemas) == 1
    assert first[0].json_schema == SCHEMA and first[0].json_schema is not SCHEMA


def test_an_equal_copy_of_a_schema_reaches_the_engine_as_the_same_object():
    copy = json.loads(json.dumps(SCHEMA))
    request = ChatRequest(messages=(Message(role="user", content="x"),), json_schema=copy)
    (back,) = unpack_requests(pickle.loads(pickle.dumps(pack_requests([request]))))
    (first, *_) = unpack_requests(pickle.loads(pickle.dumps(pack_requests(batch(1)))))
    assert back.json_schema is first.json_schema
