"""Role schemas as vLLM's structured outputs accept them (autosafe_core.llm.schema_compat)."""

from __future__ import annotations

import copy
import functools
import json
import os

import jsonschema
import pytest

from autosafe_core.llm.grammar import SchemaGrammars
from autosafe_core.llm.schema_compat import for_vllm
from tests.support.schema_responder import respond
from tests.test_schema_responder import ask, role_schemas

# What vLLM 0.26's `has_xgrammar_unsupported_json_features` refuses, by the node's type.
REFUSED = {"object": {"patternProperties", "propertyNames"}, "array": {"uniqueItems", "contains"},
           "integer": {"multipleOf"}, "number": {"multipleOf"}}


def refused_keywords(node, path="$") -> list[str]:
    found = []
    if isinstance(node, dict):
        kind = node.get("type")
        for key in REFUSED.get(kind, set()) if isinstance(kind, str) else set():
            if key in node:
                found.append(f"{path}.{key}")
        for key, value in node.items():
            found += refused_keywords(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            found += refused_keywords(item, f"{path}[{i}]")
    return found


def test_some_role_schemas_use_keywords_vllm_refuses() -> None:
    # The reason the module exists: if no role used them any more, it could go.
    assert any(refused_keywords(schema) for schema, _ in role_schemas().values())


@pytest.mark.parametrize("role", list(role_schemas()))
def test_no_role_schema_keeps_a_refused_keyword_and_the_original_is_untouched(role: str) -> None:
    schema, _ = role_schemas()[role]
    before = copy.deepcopy(schema)
    cleaned = for_vllm(schema)
    assert refused_keywords(cleaned) == []
    assert schema == before


@pytest.mark.parametrize("role", list(role_schemas()))
def test_every_valid_reply_stays_valid_and_the_cleaned_schema_compiles(role: str) -> None:
    schema, _ = role_schemas()[role]
    cleaned = for_vllm(schema)
    for i in range(20):
        jsonschema.validate(ask(schema, f"{role} {i}"), cleaned)  # looser, never stricter
    tokenizer = _tokenizer()
    assert SchemaGrammars(tokenizer, len(tokenizer), [tokenizer.eos_token_id]).compile(cleaned) is not None


def test_the_result_is_cached_per_object_and_clean_schemas_pass_through() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "object", "propertyNames": {"maxLength": 3}}}}
    assert for_vllm(schema) is for_vllm(schema)
    assert for_vllm(copy.deepcopy(schema)) == {"type": "object", "properties": {"a": {"type": "object"}}}
    clean = {"type": "object", "properties": {"b": {"type": "string", "format": "date"}}}
    assert for_vllm(clean) is clean


def test_unknown_string_formats_and_number_steps_go_and_type_lists_are_left_alone() -> None:
    schema = {"anyOf": [{"type": "string", "format": "phone"}, {"type": "number", "multipleOf": 2},
                        {"type": ["object", "null"], "propertyNames": {"maxLength": 2}}]}
    assert for_vllm(schema) == {"anyOf": [{"type": "string"}, {"type": "number"},
                                          {"type": ["object", "null"], "propertyNames": {"maxLength": 2}}]}


@functools.cache
def _tokenizer():
    from transformers import AutoTokenizer

    from autosafe_core.llm.smollm2 import default_cache_dir, ensure_smollm2

    # An offline machine (the GPU box) names a folder with SmolLM2's tokenizer, as for the vLLM tests.
    configured = os.environ.get("AUTOSAFE_VLLM_TEST_MODEL")
    return AutoTokenizer.from_pretrained(configured or ensure_smollm2(default_cache_dir()))


def test_the_responder_still_answers_cleaned_schemas() -> None:
    schema, _ = role_schemas()["simulator"]
    from autosafe_core.llm.base import ChatRequest, Message

    reply = json.loads(respond(ChatRequest(messages=(Message(role="user", content="x"),), json_schema=for_vllm(schema))))
    jsonschema.validate(reply, for_vllm(schema))


def _string_bounds(node, found=None) -> dict[str, int]:
    found = {} if found is None else found
    if isinstance(node, dict):
        if node.get("type") == "string":
            for key in ("maxLength", "minLength"):
                found[key] = found.get(key, 0) + (key in node)
        for value in node.values():
            _string_bounds(value, found)
    elif isinstance(node, list):
        for item in node:
            _string_bounds(item, found)
    return found


def test_string_length_caps_are_dropped_and_minimum_lengths_kept() -> None:
    # A capped string makes xgrammar's mask slow on every token (see the module docstring).
    schema = {"type": "object", "properties": {
        "thought": {"type": "string", "minLength": 1, "maxLength": 240},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
    }}  # fmt: skip
    cleaned = for_vllm(schema)
    assert cleaned["properties"]["thought"] == {"type": "string", "minLength": 1}
    assert cleaned["properties"]["tags"] == {"type": "array", "items": {"type": "string"}, "maxItems": 3}
    assert schema["properties"]["thought"]["maxLength"] == 240  # the role's own schema keeps it
    agent_like = [s for s, _ in role_schemas().values() if _string_bounds(s).get("maxLength")]
    assert agent_like, "some role schema caps a string"
    for role_schema in agent_like:
        bounds = _string_bounds(for_vllm(role_schema))
        assert bounds.get("maxLength") == 0 and bounds.get("minLength") == _string_bounds(role_schema)["minLength"]
