"""The OTS threat model: what a risk is, what an agent did, and what the judge said.

A risk is a triple (user instruction, interaction context, agent action) that leads to
a risk outcome. These pydantic models are the only definition of the data that flows
through the factory; the Arrow schemas of the store are derived from them
(`autosafe_core.rows`). This module knows nothing about models, prompts or storage.
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

FINAL_ANSWER = "final_answer"
"""The `tool` value of an action that ends the episode with a message to the user."""


class RiskSource(StrEnum):
    """Which element of (instruction, context, action) carries the danger."""

    INSTRUCTION = "instruction-induced"
    CONTEXT = "context-induced"
    ACTION = "action-induced"


class SafetyLabel(StrEnum):
    """ToolEmu's five safety labels; `SAFETY_SCORES` maps them onto 0-3."""

    CERTAIN_NO_RISK = "certain_no_risk"
    POSSIBLE_MILD_RISK = "possible_mild_risk"
    LIKELY_MILD_RISK = "likely_mild_risk"
    POSSIBLE_SEVERE_RISK = "possible_severe_risk"
    LIKELY_SEVERE_RISK = "likely_severe_risk"


SAFETY_SCORES: dict[SafetyLabel, int] = {
    SafetyLabel.CERTAIN_NO_RISK: 3,
    SafetyLabel.POSSIBLE_MILD_RISK: 2,
    SafetyLabel.LIKELY_MILD_RISK: 1,
    SafetyLabel.POSSIBLE_SEVERE_RISK: 1,
    SafetyLabel.LIKELY_SEVERE_RISK: 0,
}


class SimulationMode(StrEnum):
    """Standard emulation, or adversarial emulation that steers toward the risk."""

    STANDARD = "standard"
    ADVERSARIAL = "adversarial"


class StopReason(StrEnum):
    """Why a rollout ended."""

    RISK_TRIGGER = "risk_trigger"
    FINAL_ANSWER = "final_answer"
    STEP_CAP = "step_cap"
    FAILED = "failed"


class Record(BaseModel):
    """Base of every row model: strict keys, JSON round trip."""

    model_config = ConfigDict(extra="forbid", use_enum_values=False, frozen=False)


# --- catalog: risk outcomes and ToolEmu-format toolkits ----------------------------


class RiskOutcome(Record):
    """One entry of the open risk-outcome taxonomy."""

    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="Stable slug, e.g. privacy_leakage.")
    name: str = Field(min_length=1)
    description: str = Field(min_length=1)
    aliases: list[str] = Field(default_factory=list, description="Free-text spellings mapped here.")


class ToolParameter(BaseModel):
    """A tool argument in ToolEmu's format; a missing `required` reads as false."""

    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1)
    type: str = Field(min_length=1)
    description: str = ""
    required: bool = False


class ToolReturn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1)
    type: str = Field(min_length=1)
    description: str = ""


class ToolException(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1)
    description: str = ""


class Tool(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    summary: str = Field(min_length=1)
    parameters: list[ToolParameter] = Field(default_factory=list)
    returns: list[ToolReturn] = Field(default_factory=list)
    exceptions: list[ToolException] = Field(default_factory=list)


class Toolkit(BaseModel):
    """A toolkit in ToolEmu's JSON format, with its risks inline (`risks`)."""

    model_config = ConfigDict(extra="ignore")
    toolkit: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    category: str | None = None
    name_for_model: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    name_for_human: str = Field(min_length=1)
    description_for_model: str = Field(min_length=1)
    description_for_human: str = ""
    tools: list[Tool] = Field(min_length=1)
    risks: list[str] = Field(default_factory=list)

    def tool_names(self) -> list[str]:
        """The names the agent calls: `name_for_model` + tool name."""
        return [self.name_for_model + t.name for t in self.tools]

    def find_tool(self, called_name: str) -> Tool | None:
        for tool in self.tools:
            if self.name_for_model + tool.name == called_name:
                return tool
        return None


class OtsCell(Record):
    """One cell of the OTS grid: which tools, which outcome, which source of risk."""

    toolkits: list[str] = Field(min_length=1)
    risk_outcome: str
    risk_source: RiskSource

    @property
    def id(self) -> str:
        return stable_id(sorted(self.toolkits), self.risk_outcome, self.risk_source.value)


# --- what happens in an episode ----------------------------------------------------


class Usage(Record):
    """Token accounting of one or more model calls."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            calls=self.calls + other.calls,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
        )


class Provenance(Record):
    """Which prompts and models made a row, and what it cost."""

    prompt_versions: dict[str, str] = Field(default_factory=dict, description="role -> prompt version")
    model_ids: dict[str, str] = Field(default_factory=dict, description="role -> model id")
    usage: Usage = Field(default_factory=Usage)

    def merge(self, other: Provenance) -> Provenance:
        return Provenance(
            prompt_versions={**self.prompt_versions, **other.prompt_versions},
            model_ids={**self.model_ids, **other.model_ids},
            usage=self.usage + other.usage,
        )


class Action(Record):
    """One ReAct action of the agent: a tool call, or a final answer to the user."""

    thought: str = ""
    tool: str = Field(min_length=1, description=f"Tool name, or {FINAL_ANSWER!r}.")
    tool_input: dict[str, Any] = Field(default_factory=dict)
    answer: str = Field("", description="The message to the user when tool is final_answer.")

    @property
    def is_final(self) -> bool:
        return self.tool == FINAL_ANSWER


class Verdict(Record):
    """The safety evaluator's judgement of one action (ToolEmu scale)."""

    score: int = Field(ge=0, le=3, description="3 certainly no risk ... 0 likely severe risk.")
    label: SafetyLabel
    rationale: str = ""
    risk_trigger: bool = Field(description="True when this action is the first unsafe one.")

    @field_validator("label", mode="before")
    @classmethod
    def _label_spelling(cls, v: Any) -> Any:
        if isinstance(v, str):
            return v.strip().lower().replace(" ", "_").replace("-", "_")
        return v


class Step(Record):
    """An action, what the (simulated) environment answered, and the verdict on it."""

    action: Action
    observation: str | None = None
    verdict: Verdict | None = None


class Scenario(Record):
    """One risk scenario of D_r: a cell of the OTS grid made concrete."""

    id: str
    toolkits: list[str] = Field(min_length=1)
    risk_outcome: str
    risk_source: RiskSource
    user_instruction: str = Field(min_length=1)
    history: list[Step] = Field(default_factory=list, description="Prior interaction (context-induced).")
    expected_risky_actions: list[str] = Field(default_factory=list)
    underspecifications: list[str] = Field(default_factory=list)
    provenance: Provenance = Field(default_factory=Provenance)


class Trajectory(Record):
    """A rollout of the agent on one scenario, up to the first risky action."""

    id: str
    scenario_id: str
    mode: SimulationMode
    steps: list[Step] = Field(default_factory=list)
    stop_reason: StopReason
    trigger_index: int | None = Field(None, description="Index into steps of the risk trigger.")
    provenance: Provenance = Field(default_factory=Provenance)


class ReflectionRound(Record):
    """One candidate at the trigger state, the verdict on it and, if unsafe, the critique."""

    candidate: Action
    verdict: Verdict | None = None
    critique: str = ""


class SafeSample(Record):
    """An element of D_safe: at the trigger state (u, tau_t), an accepted safe action."""

    id: str
    scenario: Scenario
    trajectory_id: str
    history: list[Step] = Field(description="Steps before the trigger (tau_t).")
    unsafe_action: Action
    unsafe_verdict: Verdict
    reflections: list[ReflectionRound] = Field(default_factory=list)
    safe_action: Action | None = None
    safe_verdict: Verdict | None = None
    accepted: bool
    attempts: int = Field(ge=0)
    provenance: Provenance = Field(default_factory=Provenance)


class Rejection(Record):
    """A model output that a role could not use, and why. Every reject carries a reason."""

    stage: str
    role: str
    item_id: str
    reason: str = Field(min_length=1)
    raw_output: str = ""


def stable_id(*parts: Any, length: int = 16) -> str:
    """A deterministic id from the inputs that define a row, so re-runs never duplicate."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]
