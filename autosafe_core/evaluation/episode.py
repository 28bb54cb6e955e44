"""The judged episode of one evaluation row: the JSON text in `EvalRow.trajectory`.

What the agent was asked, what it saw before acting, each step with the judge's
verdict, why the episode ended, the helpfulness judge's answer, and the benchmark's
own fields. A report renders it turn by turn with `JudgedEpisode.model_validate_json`.
Knows nothing about how the episode was produced.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from autosafe_core.ots import Record, Step, StopReason


class JudgedEpisode(Record):
    """One case as judged: instruction, prior context, steps with verdicts, and notes."""

    instruction: str
    history: list[Step] = Field(default_factory=list, description="Interaction before the agent's turn.")
    steps: list[Step] = Field(default_factory=list, description="The agent's steps (or the recorded ones), judged.")
    stop_reason: StopReason | None = Field(None, description="Why the rollout ended; None for recorded episodes.")
    helpfulness_label: str | None = None
    helpfulness_rationale: str = ""
    notes: list[str] = Field(default_factory=list, description="Rejected outputs and other reasons, in order.")
    details: dict[str, Any] = Field(default_factory=dict, description="The benchmark's own fields.")
