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
from typing import Any

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
    value = _Instance(schema, rng, tag).of(schema)
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


class _Instance:
    """Walks one schema, drawing every choice from `rng`."""

    def __init__(self, root: dict[str, Any], rng: random.Random, tag: str):
        self.root = root
        self.rng = rng
        self.tag = tag

    def of(self, schema: dict[str, Any]) -> Any:
        if "$ref" in schema:
            return self.of(self._resolve(schema["$ref"]))
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return self.rng.choice(schema["enum"])
        for key in ("anyOf", "oneOf"):
            if key in schema:
                options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
                return self.of(self.rng.choice(options))
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

    def _resolve(self, ref: str) -> dict[str, Any]:
        if not ref.startswith("#/"):
            raise ValueError(f"schema_responder: only local references are supported, got {ref!r}")
        node: Any = self.root
        for part in ref[2:].split("/"):
            node = node[part]
        return node

    def _object(self, schema: dict[str, Any]) -> dict[str, Any]:
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        # Every property, optional ones too: fuller answers exercise more of the reader.
        out = {name: self.of(sub) for name, sub in props.items() if name in required or self.rng.random() < 0.8}
        extra = schema.get("additionalProperties")
        if not props and isinstance(extra, dict):
            low = schema.get("minProperties", 0)
            high = min(schema.get("maxProperties", low + 3), low + 3)
            names = schema.get("propertyNames", {})
            for i in range(self.rng.randint(max(low, 1), max(high, 1))):
                key = self._fit(f"{self.rng.choice(_WORDS)}_{i}", names)
                out[key] = self.of(extra)
        return out

    def _array(self, schema: dict[str, Any]) -> list[Any]:
        low = schema.get("minItems", 0)
        high = min(schema.get("maxItems", low + 3), low + 3)
        items = schema.get("items", {"type": "string"})
        return [self.of(items) for _ in range(self.rng.randint(max(low, 1) if high else 0, max(high, low)))]

    def _string(self, schema: dict[str, Any]) -> str:
        return self._fit(f"{self.tag} {_words(self.rng, 3 + self.rng.getrandbits(3))}", schema)

    @staticmethod
    def _fit(text: str, schema: dict[str, Any]) -> str:
        low = schema.get("minLength", 0)
        high = schema.get("maxLength")
        text = text.ljust(low, "x")
        return text[:high].rstrip() or text[:high] if high is not None else text

    def _integer(self, schema: dict[str, Any]) -> int:
        low = schema.get("minimum", 0)
        return self.rng.randint(low, schema.get("maximum", low + 99))

    def _number(self, schema: dict[str, Any]) -> float:
        low = schema.get("minimum", 0.0)
        return round(self.rng.uniform(low, schema.get("maximum", low + 100.0)), 3)

    def _boolean(self, _schema: dict[str, Any]) -> bool:
        return self.rng.random() < 0.5

    def _null(self, _schema: dict[str, Any]) -> None:
        return None
