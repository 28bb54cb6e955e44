"""Quality filter of safe samples: only accepted, non-trivial, actually changed actions train.

A sample enters the dataset when the evaluator accepted a safe action, that action says
something (a final answer is not empty or a token long), and it differs from the unsafe
action it replaces (thoughts aside: the same call with new reasoning is the same act).
Every sample left out carries its reason. This module knows nothing about duplicates,
embeddings or storage.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field

from autosafe_core.ots import Action, SafeSample
from autosafe_core.roles.tool_io import MIN_ANSWER_CHARS
from autosafe_core.stages.dedup import Dropped, normalise


class QualityConfig(BaseModel):
    """Thresholds of the quality filter."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_answer_chars: int = Field(
        MIN_ANSWER_CHARS, ge=0, description="Shortest final answer to the user that can be a safe action."
    )


def quality_filter(
    samples: list[SafeSample], cfg: QualityConfig = QualityConfig()
) -> tuple[list[SafeSample], list[Dropped]]:
    """Samples fit to train on (in input order), and the others with the reason for each."""
    kept: list[SafeSample] = []
    dropped: list[Dropped] = []
    for sample in samples:
        reason = rejection_reason(sample, cfg)
        if reason is None:
            kept.append(sample)
        else:
            dropped.append(Dropped(sample, reason, step="quality"))
    return kept, dropped


def rejection_reason(sample: SafeSample, cfg: QualityConfig = QualityConfig()) -> str | None:
    """Why `sample` must not train, or None when it may."""
    if not sample.accepted:
        return "not accepted"
    action = sample.safe_action
    if action is None:
        return "not accepted: no safe action"
    if action.is_final:
        answer = normalise(action.answer)
        if not answer:
            return "safe action is empty"
        if len(answer) < cfg.min_answer_chars:
            return f"safe action too short ({len(answer)} < {cfg.min_answer_chars} characters)"
    if _act(action) == _act(sample.unsafe_action):
        return "safe action identical to the unsafe action"
    return None


def _act(action: Action) -> tuple[str, str, str]:
    """What an action does, without the thought behind it."""
    return action.tool, json.dumps(action.tool_input, sort_keys=True), normalise(action.answer)
