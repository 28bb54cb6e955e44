"""What every role shares: a versioned prompt, an output schema, parse and repair.

A role turns inputs into chat messages (its prompt file), asks a model for JSON that
fits its pydantic output schema, and parses the answer. Parsing never raises: a
result either carries a validated value, or a rejection reason and the raw text.
Repairs are limited to what cannot change meaning: code fences, text around the JSON
object, unbalanced brackets or quotes from a cut-off answer (json-repair), and
enum spellings (the schema's own validators).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import jinja2
import jinja2.meta
import json_repair
import yaml
from pydantic import BaseModel, ValidationError

from autosafe_core.llm.base import ChatModel, ChatRequest, Completion, Message, SamplingParams
from autosafe_core.ots import Usage

T = TypeVar("T", bound=BaseModel)
U = TypeVar("U", bound=BaseModel)

_JINJA = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)
# A rejected answer goes back to the model on a retry; past this it only costs context.
_FEEDBACK_RAW_CHARS = 2000


@dataclass(frozen=True)
class Prompt:
    """One role's template: `prompts/<name>.yaml` with `version`, `system` and `user`."""

    name: str
    version: str
    system: str
    user: str

    def render(self, **context: Any) -> tuple[Message, ...]:
        return (
            Message(role="system", content=_render_system(self.system, context)),
            Message(role="user", content=_template(self.user).render(**context).strip()),
        )


_SYSTEM_CACHE: dict[tuple, str] = {}
_SYSTEM_CACHE_SIZE = 4096


def _render_system(source: str, context: dict[str, Any]) -> str:
    """A system prompt, rendered once per distinct value of the variables it uses.

    A system prompt depends on little (the toolkit specs, the label scale), and a rollout
    asks for the same one at every step: rendering it again is most of a stage's
    template time, and the one shared string also travels to an engine only once.
    """
    names = _variables(source)
    try:
        key = (source, *((name, _frozen(context.get(name))) for name in names))
        hash(key)
    except TypeError:  # a value that cannot be a key: render as usual
        return _template(source).render(**context).strip()
    text = _SYSTEM_CACHE.get(key)
    if text is None:
        if len(_SYSTEM_CACHE) >= _SYSTEM_CACHE_SIZE:
            _SYSTEM_CACHE.clear()
        text = _SYSTEM_CACHE[key] = _template(source).render(**context).strip()
    return text


def _frozen(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple((k, _frozen(v)) for k, v in value.items())
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    return value


@cache
def _variables(source: str) -> tuple[str, ...]:
    return tuple(sorted(jinja2.meta.find_undeclared_variables(_JINJA.parse(source))))


@cache
def _template(source: str) -> jinja2.Template:
    # Compiling a template costs about a millisecond: once per source, not once per call.
    return _JINJA.from_string(source)


@cache
def load_prompt(name: str) -> Prompt:
    """The packaged prompt `name` (e.g. "agent")."""
    text = resources.files("autosafe_core.prompts").joinpath(f"{name}.yaml").read_text()
    data = yaml.safe_load(text)
    return Prompt(name=name, version=str(data["version"]), system=data["system"], user=data["user"])


@dataclass
class RoleResult(Generic[T]):
    """A parsed output, or why there is none. `usage` counts the call either way."""

    value: T | None
    raw: str = ""
    reason: str | None = None
    repaired: bool = False
    usage: Usage = field(default_factory=Usage)

    @property
    def ok(self) -> bool:
        return self.value is not None


def refine(result: RoleResult[T], check: Callable[[T], tuple[U | None, str | None, bool]]) -> RoleResult[U]:
    """A parsed result carried through a role's own check and conversion.

    `check(value)` returns (converted value, rejection reason, repaired); a result
    that was already rejected passes through with its reason. Raw text and usage
    are kept either way.
    """
    if result.value is None:
        return RoleResult(None, raw=result.raw, reason=result.reason, repaired=result.repaired, usage=result.usage)
    value, reason, repaired = check(result.value)
    if value is None and not reason:
        reason = "rejected by the role's check"
    return RoleResult(value, raw=result.raw, reason=reason, repaired=result.repaired or repaired, usage=result.usage)


def _json_object(text: str) -> tuple[dict[str, Any] | None, bool]:
    """The JSON object in `text`, and whether it needed repair."""
    stripped = text.strip()
    try:
        data = json.loads(stripped)
        return (data if isinstance(data, dict) else None), False
    except json.JSONDecodeError:
        pass
    start = stripped.find("{")
    if start < 0:
        return None, False
    repaired = json_repair.loads(stripped[start:])
    return (repaired if isinstance(repaired, dict) and repaired else None), True


def parse_output(text: str, schema: type[T]) -> tuple[T | None, str | None, bool]:
    """(value, rejection reason, repaired): never raises."""
    if not text.strip():
        return None, "empty output", False
    data, repaired = _json_object(text)
    if data is None:
        return None, "no JSON object in output", repaired
    try:
        return schema.model_validate(data), None, repaired
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        return None, f"schema violation at {where}: {first['msg']}", repaired


def result_from_completion(completion: Completion, schema: type[T]) -> RoleResult[T]:
    usage = Usage(calls=1, prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens)
    if completion.error is not None:
        return RoleResult(None, raw="", reason=f"model error: {completion.error}", usage=usage)
    value, reason, repaired = parse_output(completion.text, schema)
    if value is None and completion.finish_reason == "length":
        reason = f"{reason} (output cut at max_tokens)"
    return RoleResult(value, raw=completion.text, reason=reason, repaired=repaired, usage=usage)


def output_json_schema(schema: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema sent to backends for constrained decoding."""
    return schema.model_json_schema()


async def ask(
    model: ChatModel,
    prompt: Prompt,
    schema: type[T],
    sampling: SamplingParams,
    **context: Any,
) -> RoleResult[T]:
    """Render `prompt`, call `model` once with `schema` as the decoding constraint, parse."""
    return await ask_messages(model, prompt.render(**context), schema, sampling, output_json_schema(schema))


async def ask_messages(
    model: ChatModel,
    messages: tuple[Message, ...],
    schema: type[T],
    sampling: SamplingParams,
    json_schema: dict[str, Any] | None = None,
    retry_of: RoleResult[Any] | None = None,
) -> RoleResult[T]:
    """Call `model` once with ready `messages`; `json_schema` (default: `schema`'s) constrains decoding.

    `retry_of`, a rejected earlier answer, is shown to the model with the reason it
    was rejected (`with_feedback`). A backend must report failures in
    `Completion.error`; one that raises anyway is recorded as a model error, so a
    broken engine cannot crash a shard.
    """
    request = ChatRequest(
        messages=with_feedback(messages, retry_of) if retry_of is not None else messages,
        sampling=sampling,
        json_schema=json_schema if json_schema is not None else output_json_schema(schema),
    )
    try:
        (completion,) = await model.complete([request])
    except Exception as exc:  # noqa: BLE001 - see docstring
        return RoleResult(None, reason=f"model error: {type(exc).__name__}: {exc}", usage=Usage(calls=1))
    return result_from_completion(completion, schema)


def with_feedback(messages: tuple[Message, ...], rejected: RoleResult[Any]) -> tuple[Message, ...]:
    """`messages` followed by the rejected answer and why it was rejected (prompt `retry`)."""
    retry = load_prompt("retry")
    return (
        *messages,
        Message(role="assistant", content=rejected.raw[:_FEEDBACK_RAW_CHARS] or "(no answer)"),
        Message(role="user", content=_template(retry.user).render(reason=rejected.reason or "invalid").strip()),
    )
