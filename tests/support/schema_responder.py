"""An instant, stateless model double for factory tests and benchmarks: it answers every
request with a valid instance of the request's JSON schema. Never delivered.

Choices (which anyOf variant, which enum value, how many items, which words) come
from a hash of the messages, so the same request always gets the same answer and
different requests get different text: dedup keeps the rows, and a re-run of a
stage reproduces it exactly. The safety evaluator's label is drawn so that about a
third of the judged actions are risky (`UNSAFE_RATE`): some rollouts trigger and
some safe actions are accepted, as with a real judge.

It covers what the roles' schemas use: `$ref`/`$defs`, anyOf/oneOf, const, enum,
objects with properties or with additionalProperties and propertyNames, arrays,
string lengths, integer and number bounds, booleans.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from typing import Any

from autosafe_core.identity_cache import identity_cached
from autosafe_core.llm.base import ChatRequest
from autosafe_core.ots import SAFETY_SCORES, SafetyLabel

UNSAFE_RATE = 0.35
"""Share of safety judgements that label the action risky (score below 2)."""

_WORDS = (
    "amber basil cedar delta ember fjord garnet harbor indigo juniper kestrel lagoon meadow "
    "nectar orchid prairie quartz raven sierra tundra umber violet willow xenon yarrow zephyr "
    "anchor bramble cobalt dune estuary falcon glacier heron iris jasper kelp lantern marble "
    "nimbus opal pebble quill ridge saffron thistle upland vale wren yucca zinnia"
).split()
_SAFE = [label for label, score in SAFETY_SCORES.items() if score >= 2]
_UNSAFE = [label for label, score in SAFETY_SCORES.items() if score < 2]


def respond(request: ChatRequest) -> str:
    """A JSON instance of `request.json_schema` (plain text when there is none)."""
    digest = hashlib.sha256("\x00".join(f"{m.role}:{m.content}" for m in request.messages).encode()).digest()
    rng = random.Random(digest)
    tag = digest.hex()[:10]
    schema = request.json_schema
    if schema is None:
        return f"answer {tag} {_words(rng, 6)}"
    value = _compiled(schema)(rng, tag)
    if _is_safety_judgement(schema):
        value.update(_judgement(rng))
    return json.dumps(value)


def _is_safety_judgement(schema: dict[str, Any]) -> bool:
    props = schema.get("properties", {})
    return {"label", "risk_trigger"} <= props.keys()


def _judgement(rng: random.Random) -> dict[str, Any]:
    label: SafetyLabel = rng.choice(_UNSAFE if rng.random() < UNSAFE_RATE else _SAFE)
    score = SAFETY_SCORES[label]
    return {"label": label.value, "score": score, "risk_trigger": score < 2}


def _words(rng: random.Random, n: int) -> str:
    # One draw of n bytes, not n draws: the responder stays cheap next to what it tests.
    return " ".join([_WORDS[b % len(_WORDS)] for b in rng.randbytes(n)])


Draw = Callable[[random.Random, str], Any]
"""A compiled schema: given the request's rng and tag, one instance."""

def _compile(schema: dict[str, Any]) -> Draw:
    return _Compiler(schema).of(schema)


# Once per schema object: a batch shares one object per role, and an engine actor gets the
# same object for every batch (tasks/wire.py interns them).
_compiled = identity_cached(_compile, maxsize=256)


class _Compiler:
    """Turns a schema into nested closures that draw every choice from the request's rng.
    The draws happen in the order of a plain walk of the schema, so an answer depends only
    on the schema and the messages."""

    def __init__(self, root: dict[str, Any]):
        self.root = root
        self._refs: dict[str, Draw | None] = {}

    def of(self, schema: dict[str, Any]) -> Draw:
        if "$ref" in schema:
            return self._ref(schema["$ref"])
        if "const" in schema:
            const = schema["const"]
            return lambda rng, tag: const
        if "enum" in schema:
            values = schema["enum"]
            return lambda rng, tag: rng.choice(values)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                options = [self.of(s) for s in ([s for s in schema[key] if s.get("type") != "null"] or schema[key])]
                return lambda rng, tag: rng.choice(options)(rng, tag)
        if "allOf" in schema:
            merged: dict[str, Any] = {}
            for part in schema["allOf"]:
                merged.update(self._resolve(part["$ref"]) if "$ref" in part else part)
            return self.of(merged)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = "object" if "properties" in schema else "string"
        return getattr(self, f"_{kind}")(schema)

    def _ref(self, ref: str) -> Draw:
        # Compiled once per reference and looked up at draw time: a schema may refer to itself
        # (None marks one being compiled, so a reference back to it does not recurse).
        if ref not in self._refs:
            self._refs[ref] = None
            self._refs[ref] = self.of(self._resolve(ref))
        refs = self._refs
        return lambda rng, tag: refs[ref](rng, tag)

    def _resolve(self, ref: str) -> dict[str, Any]:
        if not ref.startswith("#/"):
            raise ValueError(f"schema_responder: only local references are supported, got {ref!r}")
        node: Any = self.root
        for part in ref[2:].split("/"):
            node = node[part]
        return node

    def _object(self, schema: dict[str, Any]) -> Draw:
        required = set(schema.get("required", []))
        # Every property, optional ones too: fuller answers exercise more of the reader.
        props = [(name, name in required, self.of(sub)) for name, sub in schema.get("properties", {}).items()]
        extra = schema.get("additionalProperties")
        if props or not isinstance(extra, dict):

            def draw(rng: random.Random, tag: str) -> dict[str, Any]:
                return {name: value(rng, tag) for name, needed, value in props if needed or rng.random() < 0.8}

            return draw
        low = schema.get("minProperties", 0)
        high = min(schema.get("maxProperties", low + 3), low + 3)
        names = schema.get("propertyNames", {})
        value = self.of(extra)

        def draw_map(rng: random.Random, tag: str) -> dict[str, Any]:
            out = {}
            for i in range(rng.randint(max(low, 1), max(high, 1))):
                key = _fit(f"{rng.choice(_WORDS)}_{i}", names)  # drawn before the value
                out[key] = value(rng, tag)
            return out

        return draw_map

    def _array(self, schema: dict[str, Any]) -> Draw:
        low = schema.get("minItems", 0)
        high = min(schema.get("maxItems", low + 3), low + 3)
        item = self.of(schema.get("items", {"type": "string"}))
        first, last = (max(low, 1) if high else 0), max(high, low)
        return lambda rng, tag: [item(rng, tag) for _ in range(rng.randint(first, last))]

    def _string(self, schema: dict[str, Any]) -> Draw:
        return lambda rng, tag: _fit(f"{tag} {_words(rng, 3 + rng.getrandbits(3))}", schema)

    def _integer(self, schema: dict[str, Any]) -> Draw:
        low = schema.get("minimum", 0)
        high = schema.get("maximum", low + 99)
        return lambda rng, tag: rng.randint(low, high)

    def _number(self, schema: dict[str, Any]) -> Draw:
        low = schema.get("minimum", 0.0)
        high = schema.get("maximum", low + 100.0)
        return lambda rng, tag: round(rng.uniform(low, high), 3)

    def _boolean(self, _schema: dict[str, Any]) -> Draw:
        return lambda rng, tag: rng.random() < 0.5

    def _null(self, _schema: dict[str, Any]) -> Draw:
        return lambda rng, tag: None


def _fit(text: str, schema: dict[str, Any]) -> str:
    low = schema.get("minLength", 0)
    high = schema.get("maxLength")
    text = text.ljust(low, "x")
    return text[:high].rstrip() or text[:high] if high is not None else text
