"""How a model writes a tool call or a tool's observation: bounded JSON shapes, the
decoding constraint of an action over given tools, and the resolution of the tool
name a model wrote.

Every shape is bounded (maxLength on strings, maxItems and maxProperties on
containers), because a 135M model on a CPU decodes under a grammar of the shape and
its token budget must cover the longest answer the grammar allows. Values are flat
enough for ToolEmu toolkits: scalars, lists of scalars or flat records, and flat
records. The agent, the reflector and the scenario generator's histories all write
actions in one shape (`ActionOutput`); `action_schema` narrows it, for decoding, to
the calls the given tools can take.

This module knows no prompts and no models.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter

from autosafe_core.ots import FINAL_ANSWER, Action, Tool


def text(max_length: int, *, min_length: int = 0) -> Any:
    """A string type bounded to `max_length` characters (and at least `min_length`)."""
    return Annotated[str, StringConstraints(min_length=min_length, max_length=max_length)]


Key = text(40, min_length=1)
Scalar = text(200) | int | float | bool
FlatRecord = Annotated[dict[Key, Scalar], Field(max_length=8)]
Value = Scalar | Annotated[list[Scalar | FlatRecord], Field(max_length=6)] | FlatRecord
ToolFields = Annotated[dict[Key, Value], Field(max_length=8)]
"""The fields of a tool's observation."""
ToolArgs = Annotated[dict[Key, Value], Field(max_length=16)]
"""A tool's arguments; the decoding grammar bounds them by the tool's own parameters."""

MAX_TOOL_NAME = 80
ToolName = text(MAX_TOOL_NAME, min_length=1)
Thought = text(240)
Answer = text(360)


class ActionOutput(BaseModel):
    """One ReAct step as a model writes it: thought, then a tool call or a final answer."""

    model_config = ConfigDict(extra="ignore")
    thought: Thought = ""
    tool: ToolName
    tool_input: ToolArgs = Field(default_factory=dict)
    answer: Answer = Field("", description="The message to the user when tool is final_answer.")

    def to_action(self, tool_names: Sequence[str]) -> tuple[Action | None, str | None, bool]:
        """(action, rejection reason, repaired): the tool must be one of `tool_names` or final_answer."""
        resolved, repaired = resolve_tool(self.tool, [*tool_names, FINAL_ANSWER])
        if resolved is None:
            return None, unknown_tool_reason(self.tool, tool_names), False
        if resolved == FINAL_ANSWER and not self.answer.strip():
            return None, "final_answer with an empty answer", repaired
        action = Action(
            thought=self.thought,
            tool=resolved,
            tool_input={} if resolved == FINAL_ANSWER else dict(self.tool_input),
            answer=self.answer if resolved == FINAL_ANSWER else "",
        )
        return action, None, repaired


def resolve_tool(written: str, names: Iterable[str]) -> tuple[str | None, bool]:
    """(the name meant, repaired): an exact match, else the one case-insensitive match."""
    names = list(names)
    if written in names:
        return written, False
    folded = written.strip().casefold()
    matches = [n for n in names if n.casefold() == folded]
    # Two tools differing only in case would make the repair a guess: refuse it.
    return (matches[0], True) if len(matches) == 1 else (None, False)


def unknown_tool_reason(written: str, tool_names: Sequence[str]) -> str:
    shown = ", ".join([*tool_names[:12], FINAL_ANSWER]) + (", ..." if len(tool_names) > 12 else "")
    return f"unknown tool {written[:MAX_TOOL_NAME]!r}; the tools are: {shown}"


def action_schema(tools: Sequence[tuple[str, Tool]], *, final_answer: bool = True, observation: bool = False) -> dict[str, Any]:
    """The decoding constraint of an action over `tools` ((called name, tool) pairs).

    One variant per tool, with that tool's own arguments (required ones required, no
    others), and one for final_answer with a non-empty answer: under a grammar even
    a tiny model writes only calls the tools can take. `observation` adds the
    observation fields (the generator's prior history). Every variant fits
    `ActionOutput`, which parsing still uses, so unconstrained backends get reasons.
    """
    variants = []
    for called, tool in tools:
        arguments = {
            "type": "object",
            "properties": {p.name: argument_schema(p.type) for p in tool.parameters},
            "required": [p.name for p in tool.parameters if p.required],
            "additionalProperties": False,
        }
        props: dict[str, Any] = {"thought": _THOUGHT, "tool": {"const": called}, "tool_input": arguments}
        if observation:
            props["observation"] = _OBSERVATION
        variants.append(_object(props))
    if final_answer:
        variants.append(_object({"thought": _THOUGHT, "tool": {"const": FINAL_ANSWER}, "answer": _ANSWER}))
    return {"anyOf": variants}


def argument_schema(param_type: str) -> dict[str, Any]:
    """The JSON schema of one argument of ToolEmu type `param_type` (free text in real files)."""
    kind = param_type.strip().lower()
    if kind in ("string", "str"):
        return _SCHEMAS["string"]
    if kind in ("integer", "int"):
        return {"type": "integer"}
    if kind in ("number", "float"):
        return {"type": "number"}
    if kind in ("boolean", "bool"):
        return {"type": "boolean"}
    if kind.startswith(("array", "list")):
        return _SCHEMAS["array"]
    if kind.startswith(("object", "dict")):
        return _SCHEMAS["object"]
    return _SCHEMAS["any"]


def _object(props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def _inline(adapter: TypeAdapter[Any]) -> dict[str, Any]:
    schema = adapter.json_schema()
    assert "$defs" not in schema, "bounded values are plain JSON schema, without references"
    return schema


_SCHEMAS = {
    "string": _inline(TypeAdapter(text(200))),
    "array": _inline(TypeAdapter(Annotated[list[Scalar | FlatRecord], Field(max_length=6)])),
    "object": _inline(TypeAdapter(FlatRecord)),
    "any": _inline(TypeAdapter(Value)),
}
_THOUGHT = _inline(TypeAdapter(Thought))
MIN_ANSWER_CHARS = 10
"""The shortest final answer the grammar lets an agent write: a shorter one ("ok") could
never train (the dataset's quality filter drops it), so a sampled candidate is not spent on it."""
_ANSWER = _inline(TypeAdapter(text(360, min_length=MIN_ANSWER_CHARS)))
_OBSERVATION = _inline(TypeAdapter(Annotated[ToolFields, Field(min_length=1)]))


def fields_text(fields: dict[str, Any]) -> str:
    """Tool arguments or observation fields as one line of JSON."""
    return json.dumps(fields, ensure_ascii=False, separators=(", ", ": "))
