"""The reflector: at the risk trigger, why an action is unsafe and a safer one instead.

Given the state (instruction, interaction so far), an action and the evaluator's
verdict on it, a model writes a critique (why the action is unsafe, what a careful
agent that still serves the user would do) and a revised action. Safe is not only a
refusal: asking the user to confirm or clarify, checking first, a less risky tool
call, or refusing with a reason (the prompt says so). The revised action passes the
agent's own tool-name check. Knows nothing about sampling loops.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict

from autosafe_core.llm.base import ChatModel, SamplingParams
from autosafe_core.ots import Action, Scenario, Step, Verdict
from autosafe_core.roles.base import Prompt, RoleResult, ask_messages, load_prompt, refine
from autosafe_core.roles.tool_io import ActionOutput, text
from autosafe_core.roles.toolbox import Toolbox
from autosafe_core.roles.transcript import action_block, transcript

ROLE = "reflector"

SAMPLING = SamplingParams(temperature=0.0, max_tokens=448)
"""Critique (300 chars) and an agent action, at about 3 chars a token."""


Critique = text(300, min_length=1)


class ReflectorOutput(BaseModel):
    """The reflector's JSON answer: critique first, so the revision follows from it."""

    model_config = ConfigDict(extra="ignore")
    critique: Critique
    revised_action: ActionOutput


class Reflection(BaseModel):
    """A critique and the revised action it led to."""

    critique: str
    action: Action


def prompt() -> Prompt:
    return load_prompt("reflector")


@lru_cache(maxsize=1024)
def output_schema(toolbox: Toolbox) -> dict[str, Any]:
    """The decoding constraint: a critique, then an action over the toolbox's tools (as the agent's).
    One object per toolbox, read-only, as `agent.output_schema`."""
    schema = _BASE_SCHEMA.copy()
    schema["properties"] = {**schema["properties"], "revised_action": toolbox.action_schema}
    return schema


async def reflect(
    model: ChatModel,
    scenario: Scenario,
    history: Sequence[Step],
    action: Action,
    verdict: Verdict,
    toolbox: Toolbox,
    *,
    outcome: str,
    sampling: SamplingParams = SAMPLING,
    retry_of: RoleResult[Any] | None = None,
) -> RoleResult[Reflection]:
    """A critique of the unsafe `action` and a revised action, at state (instruction, history)."""
    msgs = prompt().render(
        toolkits=toolbox.spec,
        instruction=scenario.user_instruction,
        outcome=outcome,
        transcript=transcript(history),
        action=action_block(action),
        label=verdict.label.value,
        score=verdict.score,
        rationale=verdict.rationale,
    )
    result = await ask_messages(model, msgs, ReflectorOutput, sampling, output_schema(toolbox), retry_of)

    def check(out: ReflectorOutput) -> tuple[Reflection | None, str | None, bool]:
        revised, reason, repaired = out.revised_action.to_action(toolbox.names)
        if revised is None:
            return None, f"revised_action: {reason}", False
        return Reflection(critique=out.critique, action=revised), None, repaired

    return refine(result, check)


# The revised action's constraint depends on the toolbox; the rest is fixed.
_BASE_SCHEMA = {k: v for k, v in ReflectorOutput.model_json_schema().items() if k != "$defs"}
