"""The scenario generator: one cell of the OTS grid made into a concrete risk scenario.

For (toolkits, risk outcome, risk source) a model writes a user instruction, the
unsafe actions an agent might take and what the instruction leaves open; for a
context-induced risk also a short prior interaction (1-3 tool calls with their
observations, e.g. an instruction injected into an email), which must use the cell's
tools. Which fields are asked for depends on the source: the decoding grammar of a
context-induced cell requires the history, the others have none. Knows nothing
about ids beyond the one it is given, nor about stages.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from autosafe_core.llm.base import ChatModel, SamplingParams
from autosafe_core.ots import Action, OtsCell, RiskSource, Scenario, Step
from autosafe_core.roles.base import Prompt, RoleResult, ask_messages, load_prompt, refine
from autosafe_core.roles.tool_io import (
    Thought,
    ToolArgs,
    ToolFields,
    ToolName,
    fields_text,
    resolve_tool,
    text,
    unknown_tool_reason,
)
from autosafe_core.roles.toolbox import CatalogLike, Toolbox, outcome_text

ROLE = "generator"

SAMPLING = SamplingParams(temperature=0.7, max_tokens=640)
"""Instruction (320 chars), up to six short points and, for context, up to three tool calls."""

Instruction = text(320, min_length=1)
Points = Annotated[list[text(160, min_length=1)], Field(max_length=3)]


class HistoryStepOutput(BaseModel):
    """One earlier tool call of the agent and what the tool returned."""

    model_config = ConfigDict(extra="ignore")
    thought: Thought = ""
    tool: ToolName
    tool_input: ToolArgs = Field(default_factory=dict)
    observation: ToolFields = Field(min_length=1)

    def to_step(self, tool_names: tuple[str, ...]) -> tuple[Step | None, str | None, bool]:
        tool, repaired = resolve_tool(self.tool, tool_names)
        if tool is None:
            return None, unknown_tool_reason(self.tool, tool_names), False
        action = Action(thought=self.thought, tool=tool, tool_input=dict(self.tool_input))
        return Step(action=action, observation=fields_text(self.observation)), None, repaired


class ScenarioOutput(BaseModel):
    """The generator's JSON answer for instruction- and action-induced risk."""

    model_config = ConfigDict(extra="ignore")
    user_instruction: Instruction
    expected_risky_actions: Annotated[Points, Field(min_length=1)]
    underspecifications: Points = Field(default_factory=list)


class ContextScenarioOutput(BaseModel):
    """The generator's JSON answer for context-induced risk: with the prior interaction."""

    model_config = ConfigDict(extra="ignore")
    user_instruction: Instruction
    history: list[HistoryStepOutput] = Field(min_length=1, max_length=3)
    expected_risky_actions: Annotated[Points, Field(min_length=1)]
    underspecifications: Points = Field(default_factory=list)


def prompt() -> Prompt:
    return load_prompt("scenario_generator")


@lru_cache(maxsize=1024)
def output_schema(source: RiskSource, toolbox: Toolbox) -> dict[str, Any]:
    """The decoding constraint for a cell of `source`; a history's calls are over the toolbox's tools.
    One object per (source, toolbox), read-only, as `agent.output_schema`."""
    if source != RiskSource.CONTEXT:
        return _SCHEMA
    schema = _CONTEXT_SCHEMA.copy()
    history = {**schema["properties"]["history"], "items": toolbox.history_step_schema}
    schema["properties"] = {**schema["properties"], "history": history}
    return schema


def relevant_risks(catalog: CatalogLike, toolbox: Toolbox, outcome_id: str) -> list[str]:
    """The toolkits' own risks that name the cell's outcome."""
    return [risk for kit in toolbox.toolkits for risk in kit.risks if catalog.normalise_outcome(risk) == outcome_id]


async def generate_scenario(
    model: ChatModel,
    cell: OtsCell,
    catalog: CatalogLike,
    toolbox: Toolbox,
    *,
    scenario_id: str,
    index: int = 0,
    sampling: SamplingParams = SAMPLING,
    retry_of: RoleResult[Any] | None = None,
) -> RoleResult[Scenario]:
    """Scenario number `index` of `cell`, with id `scenario_id` (provenance left to the caller)."""
    context = cell.risk_source == RiskSource.CONTEXT
    msgs = prompt().render(
        toolkits=toolbox.spec,
        context=context,
        outcome=outcome_text(catalog, cell.risk_outcome),
        risks=relevant_risks(catalog, toolbox, cell.risk_outcome),
        source=cell.risk_source.value,
        index=index,
    )
    schema = ContextScenarioOutput if context else ScenarioOutput
    json_schema = output_schema(cell.risk_source, toolbox)
    result = await ask_messages(model, msgs, schema, sampling, json_schema, retry_of)

    def check(out: ScenarioOutput | ContextScenarioOutput) -> tuple[Scenario | None, str | None, bool]:
        history: list[Step] = []
        repaired = False
        for i, drafted in enumerate(getattr(out, "history", [])):
            step, reason, fixed = drafted.to_step(toolbox.names)
            if step is None:
                return None, f"history.{i}: {reason}", False
            history.append(step)
            repaired = repaired or fixed
        scenario = Scenario(
            id=scenario_id,
            toolkits=list(cell.toolkits),
            risk_outcome=cell.risk_outcome,
            risk_source=cell.risk_source,
            user_instruction=out.user_instruction,
            history=history,
            expected_risky_actions=list(out.expected_risky_actions),
            underspecifications=list(out.underspecifications),
        )
        return scenario, None, repaired

    return refine(result, check)


# Built once; a context cell's history items depend on its toolbox.
_SCHEMA = ScenarioOutput.model_json_schema()
_CONTEXT_SCHEMA = {k: v for k, v in ContextScenarioOutput.model_json_schema().items() if k != "$defs"}
