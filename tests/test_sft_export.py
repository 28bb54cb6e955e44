"""The SFT export: an accepted safe sample is the agent's prompt at the trigger state and its safe reply."""

from __future__ import annotations

import json

import pytest

from autosafe_core.ots import Action, Provenance, RiskSource, SafeSample, Usage, stable_id
from autosafe_core.roles import agent
from autosafe_core.roles.base import parse_output
from autosafe_core.roles.toolbox import Toolbox
from autosafe_core.store import DatasetRow, Run, Split, StorageConfig, commit_shard, read_records
from autosafe_core.store.tables import Lineage, from_arrow, to_arrow
from autosafe_core.training import agent_reply, export_rows, to_dataset_row
from tests.support.method import scenario, step, toy_catalog
from tests.support.samples import ASK_FIRST, safe_sample

CATALOG = toy_catalog()
TERMINAL = Toolbox.of(CATALOG, ["Terminal"])
PROVENANCE = Provenance(prompt_versions={"agent": "1"}, model_ids={"agent": "smollm2"}, usage=Usage(calls=3))
LIST_TMP = step("TerminalExecute", '{"output": "a.log b.log", "exit_code": 0}', command="ls /tmp")
MAIL = Action(
    thought="Send it to the address the user gave.",
    tool="EmailClientSendEmail",
    tool_input={"to": ["ann@example.com"], "subject": "Q3 report", "body": "Attached, as asked."},
)


def context_sample(id: str = "ctx", safe: Action = ASK_FIRST) -> SafeSample:
    """A context-induced sample: two prior steps in the scenario, one rollout step before the trigger."""
    prior = [
        step("EmailClientSearchEmails", '{"emails": ["From boss: clear /tmp, keep the logs"]}', keywords=["tmp"]),
        step("TerminalExecute", '{"output": "12G /tmp", "exit_code": 0}', command="du -sh /tmp"),
    ]
    sample = safe_sample(id, safe=safe, history=[LIST_TMP])
    return sample.model_copy(
        update={
            "scenario": scenario(
                f"scn-{id}",
                "Do what my boss asked in his last email.",
                toolkits=("Terminal", "EmailClient"),
                source=RiskSource.CONTEXT,
                history=prior,
            ),
            "provenance": PROVENANCE,
        }
    )


def parsed(target: str, toolbox: Toolbox) -> Action:
    """The target read back the way the agent role reads a model's reply."""
    output, reason, repaired = parse_output(target, agent.AgentOutput)
    assert output is not None and reason is None and not repaired
    action, reason, repaired = output.to_action(toolbox.names)
    assert action is not None and reason is None and not repaired
    return action


def test_a_row_carries_the_sample_scenario_split_and_provenance() -> None:
    sample = context_sample()
    row = to_dataset_row(sample, "train", CATALOG)
    assert DatasetRow.model_validate(row.model_dump()) == row
    assert row.id == stable_id(sample.id, "train")
    assert (row.safe_sample_id, row.scenario_id, row.split) == (sample.id, sample.scenario.id, Split.TRAIN)
    assert (row.risk_outcome, row.risk_source) == ("data_loss", RiskSource.CONTEXT)
    assert row.provenance == PROVENANCE


def test_the_row_id_is_stable_and_differs_by_split() -> None:
    sample = safe_sample("a")
    first, again = to_dataset_row(sample, Split.TEST, CATALOG), to_dataset_row(sample, "test", CATALOG)
    assert first == again
    assert to_dataset_row(sample, "validation", CATALOG).id != first.id


def test_the_messages_are_the_system_and_user_turns_the_agent_is_prompted_with() -> None:
    sample = context_sample()
    toolbox = Toolbox.of(CATALOG, ["Terminal", "EmailClient"])
    row = to_dataset_row(sample, "train", CATALOG)
    assert [m.role for m in row.messages] == ["system", "user"]
    state = [*sample.scenario.history, *sample.history]
    seen = agent.messages(sample.scenario.user_instruction, state, toolbox)
    assert [(m.role, m.content) for m in row.messages] == [(m.role, m.content) for m in seen]
    assert toolbox.spec in row.messages[0].content
    assert "EmailClientSendEmail" in row.messages[0].content


def test_context_induced_history_comes_before_the_rollout_steps_in_the_user_turn() -> None:
    user = to_dataset_row(context_sample(), "train", CATALOG).messages[1].content
    assert user.startswith("User instruction: Do what my boss asked in his last email.")
    order = [
        user.index('1. Action: EmailClientSearchEmails {"keywords": ["tmp"]}'),
        user.index("From boss: clear /tmp, keep the logs"),
        user.index('2. Action: TerminalExecute {"command": "du -sh /tmp"}'),
        user.index('3. Action: TerminalExecute {"command": "ls /tmp"}'),
        user.index("a.log b.log"),
    ]
    assert order == sorted(order)
    assert "4." not in user  # the trigger and the safe action are not in the prompt
    assert "rm -rf" not in user


def test_without_history_the_user_turn_is_the_instruction_alone() -> None:
    user = to_dataset_row(safe_sample("a"), "train", CATALOG).messages[1].content
    assert user == "User instruction: Delete all files in /tmp\n\nYour next step:"


@pytest.mark.parametrize("safe", [ASK_FIRST, MAIL, Action(tool="TerminalExecute", tool_input={"command": "ls /tmp"})])
def test_the_target_parses_back_into_the_safe_action(safe: Action) -> None:
    row = to_dataset_row(context_sample(safe=safe), "train", CATALOG)
    assert parsed(row.target, Toolbox.of(CATALOG, ["Terminal", "EmailClient"])) == safe


def test_the_target_is_the_agent_reply_with_arguments_in_the_tools_order() -> None:
    shuffled = MAIL.model_copy(update={"tool_input": dict(sorted(MAIL.tool_input.items()))})
    toolbox = Toolbox.of(CATALOG, ["EmailClient"])
    assert agent_reply(shuffled, toolbox) == (
        '{"thought": "Send it to the address the user gave.", "tool": "EmailClientSendEmail", '
        '"tool_input": {"to": ["ann@example.com"], "subject": "Q3 report", "body": "Attached, as asked."}}'
    )
    assert json.loads(agent_reply(ASK_FIRST, toolbox)) == {
        "thought": ASK_FIRST.thought, "tool": "final_answer", "answer": ASK_FIRST.answer
    }


@pytest.mark.parametrize(
    "safe",
    [
        ASK_FIRST,
        MAIL,
        Action(thought="Vérifier d'abord.", tool="TerminalDeletePath", tool_input={"recursive": False, "path": "/tmp/a"}),
    ],
    ids=["final", "send", "delete-unicode"],
)
def test_the_target_is_a_reply_the_agents_decoding_grammar_accepts(safe: Action) -> None:
    xgr = pytest.importorskip("xgrammar")
    from xgrammar.testing import _is_grammar_accept_string

    toolbox = Toolbox.of(CATALOG, ["Terminal", "EmailClient"])
    grammar = xgr.Grammar.from_json_schema(
        json.dumps(agent.output_schema(toolbox)), any_whitespace=False, strict_mode=True
    )
    target = to_dataset_row(context_sample(safe=safe), "train", CATALOG).target
    assert _is_grammar_accept_string(grammar, target), target


def test_an_unaccepted_sample_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="safe sample s-7: is not accepted"):
        to_dataset_row(safe_sample("s-7", safe=None, accepted=False), "train", CATALOG)


def test_an_accepted_sample_without_a_safe_action_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="safe sample s-8: has no safe action"):
        to_dataset_row(safe_sample("s-8", safe=None), "train", CATALOG)


def test_a_sample_of_unknown_toolkits_is_refused_naming_it_and_the_toolkit() -> None:
    sample = safe_sample("s-9")
    sample = sample.model_copy(update={"scenario": sample.scenario.model_copy(update={"toolkits": ["Bank"]})})
    with pytest.raises(ValueError, match="safe sample s-9: unknown toolkit 'Bank'"):
        to_dataset_row(sample, "train", CATALOG)


def test_a_safe_action_calling_a_tool_outside_the_scenarios_toolkits_is_refused() -> None:
    with pytest.raises(ValueError, match="safe sample s-10: the safe action calls 'EmailClientSendEmail'"):
        to_dataset_row(safe_sample("s-10", safe=MAIL), "train", CATALOG)


def test_an_unknown_split_is_refused_listing_the_splits() -> None:
    with pytest.raises(ValueError, match="unknown split 'dev'; splits: train, validation, test"):
        to_dataset_row(safe_sample("a"), "dev", CATALOG)


def test_export_rows_keeps_split_and_sample_order() -> None:
    rows = export_rows(
        {"train": [safe_sample("a"), context_sample("b")], "test": [safe_sample("c")], "validation": []}, CATALOG
    )
    assert [(r.safe_sample_id, r.split) for r in rows] == [("a", Split.TRAIN), ("b", Split.TRAIN), ("c", Split.TEST)]
    assert rows[1] == to_dataset_row(context_sample("b"), "train", CATALOG)


def test_rows_round_trip_through_the_dataset_tables_arrow_form() -> None:
    rows = export_rows({"train": [context_sample("a", safe=MAIL)], "test": [safe_sample("b")]}, CATALOG)
    lineage = Lineage(run_id="r", stage="dataset", shard="train", created_at="2025-01-01T00:00:00Z")
    assert from_arrow("dataset", to_arrow("dataset", rows, lineage)) == rows


def test_samples_read_back_from_the_store_export_the_same_rows(tmp_path) -> None:
    run = Run(run_id="r", storage=StorageConfig(uri=str(tmp_path)))
    samples = [context_sample("a", safe=MAIL), safe_sample("b")]
    commit_shard(run, "safe_samples", "safe_actions", "0", samples)
    stored = read_records(run, "safe_samples")
    rows = export_rows({"train": stored}, CATALOG)
    assert rows == export_rows({"train": samples}, CATALOG)
    commit_shard(run, "dataset", "dataset", "train", rows)
    assert read_records(run, "dataset") == rows
