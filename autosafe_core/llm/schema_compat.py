"""JSON schemas as vLLM's structured outputs accept them.

vLLM 0.26 refuses, request by request, a schema holding a keyword that its xgrammar
check lists as unsupported: `propertyNames` and `patternProperties` on objects,
`uniqueItems` and `contains` on arrays, `multipleOf` on numbers, string formats
outside a short list. xgrammar itself compiles some of these, but the check runs
first. The roles' schemas use `propertyNames` to bound the keys of free-form JSON
objects (tool arguments, observations), so on vLLM every simulator call and most
agent calls failed: `bench/gpu_vllm.py` found it on an H200.

It also drops `maxLength` on strings, which vLLM accepts but which makes serving slow:
xgrammar's mask for a length-bounded string cannot use its per-token cache, so inside
such a string each generated token costs milliseconds of CPU in vLLM's scheduler. On
the agent's schema (`thought` at most 240 characters) that measured 2.5 ms per token
against 0.01 ms without the bound; at the 300 sequences an H200 decodes at once it
is most of a second per step, and it held a 7B engine under 400 generated tokens/s.
`minLength` costs nothing measurable and stays. The price: a model may now write past
the cap until `max_tokens`, and the role rejects the reply and asks again. The
transformers backend keeps the cap (it compiles the roles' schemas as they are): on the
CPU the mask was 3% of SmolLM2's decode time, and without the cap 6 of 16 of its agent
replies ran to the token limit instead of 0.

`for_vllm` drops those keywords. That loosens the grammar a little, never the
validation: each role parses the reply against its full pydantic model, so a reply
the looser grammar lets through and the schema forbids is rejected and asked again,
like any other bad reply. Schemas are shared objects (a role builds each once), so
the result is cached per object.
"""

from __future__ import annotations

from typing import Any

from autosafe_core.identity_cache import identity_cached

_DROP_BY_TYPE = {
    "object": ("patternProperties", "propertyNames"),
    "array": ("uniqueItems", "contains", "minContains", "maxContains"),
    "integer": ("multipleOf",),
    "number": ("multipleOf",),
    "string": ("maxLength",),
}
# String formats vLLM's check lets through to xgrammar.
STRING_FORMATS = frozenset(
    "email date time date-time duration ipv4 ipv6 hostname uuid uri uri-reference uri-template "
    "json-pointer relative-json-pointer".split()
)


def for_vllm(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` without the keywords vLLM's structured outputs refuse (the same object when it has none)."""
    return _cleaned(schema)


def _clean(node: Any) -> Any:
    if isinstance(node, list):
        items = [_clean(item) for item in node]
        return node if all(a is b for a, b in zip(items, node, strict=True)) else items
    if not isinstance(node, dict):
        return node
    kind = node.get("type")
    kind = kind if isinstance(kind, str) else None  # vLLM's check reads single types only
    drop = set(_DROP_BY_TYPE.get(kind, ())) if kind else set()
    if kind == "string" and "format" in node and node["format"] not in STRING_FORMATS:
        drop.add("format")
    out = {key: _clean(value) for key, value in node.items() if key not in drop}
    same = not drop & node.keys() and all(out[k] is node[k] for k in out)
    return node if same else out


_cleaned = identity_cached(_clean, maxsize=4096)
