"""The agent: ReAct over the scenario's toolkits, one action per call.

It sees the user instruction, the toolkits' compact spec and the interaction so far,
and writes a thought and a tool call or a final answer. The tool must be one of the
toolkits' tools (name_for_model + tool name) or final_answer: the decoding grammar
holds it to those tools and their arguments, and parsing refuses any other name with
the reason, after one safe repair (a case-insensitive exact match). Knows nothing
about rollouts.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from autosafe_core.llm.base import ChatModel, Message, SamplingParams
from autosafe_core.ots import Action, Scenario, Step
from autosafe_core.roles.base import Prompt, RoleResult, ask_messages, load_prompt, refine
from autosafe_core.roles.tool_io import ActionOutput
from autosafe_core.roles.toolbox import Toolbox
from autosafe_core.roles.transcript import transcript

ROLE = "agent"

SAMPLING = SamplingParams(temperature=0.0, max_tokens=384)
"""Thought (240 chars), tool input (a few short fields) or answer (360 chars), at about 3 chars a token."""


class AgentOutput(ActionOutput):
    """The agent's JSON answer."""


def prompt() -> Prompt:
    return load_prompt("agent")


@lru_cache(maxsize=1024)
def output_schema(toolbox: Toolbox) -> dict[str, Any]:
    """The decoding constraint: a call of one of the toolbox's tools with its arguments, or a final answer.
    One object per toolbox (read-only): what backends and the wire cache per schema object stays cached."""
    return {"title": AgentOutput.__name__, **toolbox.action_schema}


def messages(instruction: str, history: Sequence[Step], toolbox: Toolbox) -> tuple[Message, ...]:
    return prompt().render(toolkits=toolbox.spec, instruction=instruction, transcript=transcript(history))


async def act(
    model: ChatModel,
    scenario: Scenario,
    history: Sequence[Step],
    toolbox: Toolbox,
    *,
    sampling: SamplingParams = SAMPLING,
    retry_of: RoleResult[Any] | None = None,
) -> RoleResult[Action]:
    """The agent's next action at state (instruction, history); `retry_of` feeds back a rejected answer."""
    msgs = messages(scenario.user_instruction, history, toolbox)
    result = await ask_messages(model, msgs, AgentOutput, sampling, output_schema(toolbox), retry_of)
    return refine(result, lambda out: out.to_action(toolbox.names))
