"""The environment simulator: a ToolEmu-style emulator of one tool call's observation.

It only ever writes text. Given the tool's spec (parameters, returns, exceptions),
the user instruction and the interaction so far, a model writes the observation the
real tool would return; in adversarial mode it also sees the scenario's risk and
steers the observation toward it, to stress-test the agent. A call to a tool the
scenario lacks, a missing required argument or an argument the tool does not take is
answered with the tool's exception by a check, without a model: it needs no
judgement, and a model would only get it wrong sometimes.

Knows nothing about rollouts or agents.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from autosafe_core.llm.base import ChatModel, SamplingParams
from autosafe_core.ots import Action, Scenario, SimulationMode, Step, Tool
from autosafe_core.roles.base import Prompt, RoleResult, ask_messages, load_prompt
from autosafe_core.roles.tool_io import ToolFields, fields_text, text
from autosafe_core.roles.toolbox import Toolbox
from autosafe_core.roles.transcript import action_line, transcript

ROLE = "simulator"

SAMPLING = SamplingParams(temperature=0.0, max_tokens=512)
"""A short check (200 chars) and a few return fields of up to 200 chars, at about 3 chars a token."""

INVALID_REQUEST = "InvalidRequestException"
"""ToolEmu's exception for a call the tool cannot take."""


Check = text(200)


class SimulatorOutput(BaseModel):
    """The simulator's JSON answer: a short validity check, then the observation's fields."""

    model_config = ConfigDict(extra="ignore")
    thought: Check = ""
    observation: ToolFields = Field(min_length=1)

    def observation_text(self) -> str:
        """The observation as the agent reads it: one line of JSON."""
        return fields_text(self.observation)


def prompt() -> Prompt:
    return load_prompt("simulator")


def invalid_call(action: Action, toolbox: Toolbox) -> str | None:
    """Why the call cannot reach the tool (unknown tool, missing or unexpected arguments), or None."""
    found = toolbox.find(action.tool)
    if found is None:
        return f"unknown tool {action.tool!r}"
    _, tool = found
    missing = [p.name for p in tool.parameters if p.required and p.name not in action.tool_input]
    if missing:
        return f"missing required argument(s): {', '.join(missing)}"
    known = {p.name for p in tool.parameters}
    unexpected = [name for name in action.tool_input if name not in known]
    if unexpected:
        return f"unexpected argument(s): {', '.join(unexpected)}"
    return None


def exception_observation(tool: Tool | None, reason: str) -> SimulatorOutput:
    """The invalid call's exception as an observation: ToolEmu's InvalidRequestException, or
    the tool's own exception for invalid input (e.g. InvalidArgumentException) when it has one."""
    names = [e.name for e in tool.exceptions] if tool is not None else []
    own = [n for n in names if "invalid" in n.lower()]
    name = INVALID_REQUEST if INVALID_REQUEST in names or not own else own[0]
    return SimulatorOutput(thought="The call is invalid.", observation={"error": f"{name}: {reason}"})


async def simulate(
    model: ChatModel,
    scenario: Scenario,
    history: Sequence[Step],
    action: Action,
    toolbox: Toolbox,
    *,
    mode: SimulationMode = SimulationMode.STANDARD,
    outcome: str = "",
    sampling: SamplingParams = SAMPLING,
    retry_of: RoleResult[Any] | None = None,
) -> RoleResult[SimulatorOutput]:
    """The observation of `action` after `history`; an invalid call gets its exception without a model call."""
    reason = invalid_call(action, toolbox)
    if reason is not None:
        found = toolbox.find(action.tool)
        return RoleResult(exception_observation(found[1] if found else None, reason))
    adversarial = mode == SimulationMode.ADVERSARIAL
    msgs = prompt().render(
        adversarial=adversarial,
        tool_spec=toolbox.tool_spec(action.tool),
        instruction=scenario.user_instruction,
        outcome=outcome or scenario.risk_outcome,
        risky_actions=scenario.expected_risky_actions,
        underspecifications=scenario.underspecifications,
        transcript=transcript(history),
        call=action_line(action),
    )
    return await ask_messages(model, msgs, SimulatorOutput, sampling, _SCHEMA, retry_of)


_SCHEMA = SimulatorOutput.model_json_schema()
