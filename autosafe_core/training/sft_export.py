"""D_safe as SFT examples: each accepted safe sample becomes one `DatasetRow`.

The paper tunes the agent on (u, tau_t) -> a_safe. A row is that pair written exactly
as the agent meets it at inference, so a tuned agent is prompted as it was trained:

- `messages` are what `roles.agent.messages` renders for the trigger state, and
  nothing else: the agent prompt's system text with the scenario's toolkit specs, then
  one user turn with the instruction and the steps so far (the scenario's prior
  history, which every role sees for context-induced scenarios, then the rollout's
  steps before the trigger), numbered as `roles.transcript` writes them.
- `target` is the accepted safe action as the agent's reply: the JSON object the agent
  role parses, spelled as its decoding grammar makes the model write it (keys thought,
  tool, then tool_input or answer; arguments in the tool's parameter order; ", " and
  ": " separators; no ASCII escapes). The loss goes on it alone.

Why one user turn and not assistant/tool turns per earlier step: the agent role packs
the history into its user message (rollouts and safe-action sampling call it so, and
a tuned agent runs through the same role). Turns at training time would teach a
prompt the agent never sees. Rendering through the role keeps the two from drifting: if the role moves to
turns, the rows follow.

This module knows nothing about storage, splitting or trainers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from autosafe_core.ots import FINAL_ANSWER, Action, SafeSample, stable_id
from autosafe_core.roles import agent
from autosafe_core.roles.tool_io import fields_text
from autosafe_core.roles.toolbox import CatalogLike, Toolbox
from autosafe_core.store.records import ChatMessage, DatasetRow, Split


def to_dataset_row(sample: SafeSample, split: Split | str, catalog: CatalogLike) -> DatasetRow:
    """The SFT example of one accepted safe sample; ValueError naming the sample if it has none."""
    return _row(sample, _split(split), _toolbox(sample, catalog))


def export_rows(samples_by_split: Mapping[str, Sequence[SafeSample]], catalog: CatalogLike) -> list[DatasetRow]:
    """The SFT examples of every split, in the order given; samples of the same toolkits share one toolbox."""
    toolboxes: dict[tuple[str, ...], Toolbox] = {}
    rows = []
    for name, samples in samples_by_split.items():
        split = _split(name)
        for sample in samples:
            key = tuple(sample.scenario.toolkits)
            if key not in toolboxes:
                toolboxes[key] = _toolbox(sample, catalog)
            rows.append(_row(sample, split, toolboxes[key]))
    return rows


def agent_reply(action: Action, toolbox: Toolbox) -> str:
    """`action` as the agent's JSON reply, in the order and spelling its decoding grammar allows."""
    if action.is_final:
        reply: dict[str, Any] = {"thought": action.thought, "tool": FINAL_ANSWER, "answer": action.answer}
    else:
        found = toolbox.find(action.tool)
        order = [p.name for p in found[1].parameters] if found else []
        # The store keeps tool_input as JSON with sorted keys; the grammar wants the tool's own order.
        args = {name: action.tool_input[name] for name in order if name in action.tool_input}
        args.update(action.tool_input)
        reply = {"thought": action.thought, "tool": action.tool, "tool_input": args}
    return fields_text(reply)


def _row(sample: SafeSample, split: Split, toolbox: Toolbox) -> DatasetRow:
    if not sample.accepted or sample.safe_action is None:
        why = "is not accepted" if not sample.accepted else "has no safe action"
        raise ValueError(f"safe sample {sample.id}: {why}; only accepted samples become SFT examples")
    action = sample.safe_action
    if not action.is_final and action.tool not in toolbox.names:
        raise ValueError(
            f"safe sample {sample.id}: the safe action calls {action.tool!r}, "
            f"which is not a tool of {', '.join(sample.scenario.toolkits)}"
        )
    scenario = sample.scenario
    state = [*scenario.history, *sample.history]  # tau_t as the agent saw it
    messages = agent.messages(scenario.user_instruction, state, toolbox)
    return DatasetRow(
        id=stable_id(sample.id, split.value),
        safe_sample_id=sample.id,
        scenario_id=scenario.id,
        split=split,
        risk_outcome=scenario.risk_outcome,
        risk_source=scenario.risk_source,
        messages=[ChatMessage(role=m.role, content=m.content) for m in messages],
        target=agent_reply(action, toolbox),
        provenance=sample.provenance,
    )


def _toolbox(sample: SafeSample, catalog: CatalogLike) -> Toolbox:
    try:
        return Toolbox.of(catalog, sample.scenario.toolkits)
    except KeyError as exc:
        raise ValueError(f"safe sample {sample.id}: {exc.args[0]} (scenario {sample.scenario.id})") from None


def _split(split: Split | str) -> Split:
    try:
        return Split(split)
    except ValueError:
        raise ValueError(f"unknown split {split!r}; splits: {', '.join(s.value for s in Split)}") from None
