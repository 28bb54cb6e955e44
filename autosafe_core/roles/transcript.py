"""How an episode reads inside a prompt: actions and steps as short, numbered text.

Every role that looks at an interaction (agent, simulator, evaluator, reflector,
helpfulness judge) sees it written the same way, so a model learns one format. The
text is compact on purpose: it shares a 2k-8k context with the toolkit specs.
Knows nothing about which role reads it.
"""

from __future__ import annotations

from collections.abc import Sequence

from autosafe_core.ots import Action, Step
from autosafe_core.roles.tool_io import fields_text


def action_line(action: Action) -> str:
    """`Tool {"arg": ...}`, or `final_answer: message`."""
    if action.is_final:
        return f"final_answer: {action.answer}"
    return f"{action.tool} {fields_text(action.tool_input)}"


def action_block(action: Action, indent: str = "") -> str:
    """The action with its thought, as the judge and the reflector read it."""
    lines = [f"{indent}Thought: {action.thought}"] if action.thought else []
    lines.append(f"{indent}Action: {action_line(action)}")
    return "\n".join(lines)


def transcript(steps: Sequence[Step], start: int = 1) -> str:
    """Steps numbered from `start`: thought, action and observation each; empty when no steps."""
    blocks = []
    for number, step in enumerate(steps, start):
        block = f"{number}. " + action_block(step.action, indent="   ").lstrip()
        if step.observation is not None:
            block += f"\n   Observation: {step.observation}"
        blocks.append(block)
    return "\n".join(blocks)
