"""How a batch of chat requests travels to an engine actor and its completions come back.

A rollout's calls repeat most of what they carry: every agent call of a scenario
sends the same system prompt (the toolkit specs) and the same decoding schema, and a
batch holds hundreds of such calls. Pickling the pydantic objects as they are would
send each copy again and rebuild each model on arrival, which on a CPU costs more
than an instant model's answer. So a batch goes as plain tuples with every distinct
text, schema and sampling setting once, and each distinct message is rebuilt once.
A schema travels as its JSON text, encoded once per schema object on the sending side;
the engine side turns each distinct text into one dict and hands that same object out for
every later batch that carries it, so what an engine caches per schema object (vLLM's
cleaned schema, a grammar, the scripted double's compiled schema) stays cached across
batches instead of being redone for each (measured on the scripted double: the engine
actor spent a quarter of its time recompiling schemas it had seen). Pickling the nested
dicts for every batch cost the actor more than decoding the text does.
The models are rebuilt through their validating constructors: pydantic-core validates
these flat models faster than `model_construct` fills them in Python (measured:
12 us against 8 us per request, unpacking included).
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from autosafe_core.identity_cache import identity_cached
from autosafe_core.llm.base import ChatRequest, Completion, Message, SamplingParams

PackedRequests = tuple[list[str], list[Any], list[tuple[tuple[tuple[str, int], ...], int, int]]]
PackedCompletions = list[tuple[Any, ...]]

_COMPLETION_FIELDS = tuple(Completion.model_fields)

_schema_text = identity_cached(json.dumps, maxsize=1024)


@lru_cache(maxsize=1024)
def _schema_object(text: str) -> dict[str, Any]:
    """One dict per distinct schema text, shared by every request that carries it (read-only)."""
    return json.loads(text)


def pack_requests(requests: list[ChatRequest]) -> PackedRequests:
    """(texts, shared objects, rows): a row is (messages as (role, text index), sampling index, schema index)."""
    texts: dict[str, int] = {}
    shared_index: dict[int, int] = {}
    shared: list[Any] = []

    def share(obj: Any) -> int:
        if obj is None:
            return -1
        # By identity: stages reuse one schema object per toolbox; equal copies just go twice.
        key = id(obj)
        if key not in shared_index:
            shared_index[key] = len(shared)
            shared.append(obj.model_dump() if isinstance(obj, SamplingParams) else _schema_text(obj))
        return shared_index[key]

    rows = []
    for request in requests:
        messages = tuple((m.role, texts.setdefault(m.content, len(texts))) for m in request.messages)
        rows.append((messages, share(request.sampling), share(request.json_schema)))
    return list(texts), shared, rows


def unpack_requests(packed: PackedRequests) -> list[ChatRequest]:
    texts, shared, rows = packed
    samplings: dict[int, SamplingParams] = {}
    messages: dict[tuple[str, int], Message] = {}
    out = []
    for row_messages, sampling, schema in rows:
        if sampling not in samplings:
            samplings[sampling] = SamplingParams(**shared[sampling])
        built = []
        for role, text in row_messages:
            if (role, text) not in messages:
                messages[(role, text)] = Message(role=role, content=texts[text])
            built.append(messages[(role, text)])
        out.append(
            ChatRequest(
                messages=tuple(built), sampling=samplings[sampling], json_schema=_schema_object(shared[schema]) if schema >= 0 else None
            )
        )
    return out


def pack_completions(completions: list[Completion]) -> PackedCompletions:
    return [tuple(getattr(c, name) for name in _COMPLETION_FIELDS) for c in completions]


def unpack_completions(packed: PackedCompletions) -> list[Completion]:
    return [Completion(**dict(zip(_COMPLETION_FIELDS, row))) for row in packed]
