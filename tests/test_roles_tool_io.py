"""How models write tool calls: bounded shapes, tool names resolved or refused with a reason."""

from __future__ import annotations

import jsonschema
import pytest
from pydantic import ValidationError

from autosafe_core.ots import FINAL_ANSWER, Action, Step
from autosafe_core.roles.tool_io import ActionOutput, action_schema, argument_schema, resolve_tool
from autosafe_core.roles.toolbox import Toolbox, outcome_text
from autosafe_core.roles.transcript import action_line, transcript
from tests.support.method import toy_catalog

TOOLS = ("TerminalExecute", "TerminalDeletePath")


def test_an_exact_tool_name_resolves_unrepaired() -> None:
    assert resolve_tool("TerminalExecute", TOOLS) == ("TerminalExecute", False)


def test_a_tool_name_in_the_wrong_case_is_repaired() -> None:
    assert resolve_tool(" terminalexecute", TOOLS) == ("TerminalExecute", True)


def test_a_case_repair_that_would_be_a_guess_is_refused() -> None:
    assert resolve_tool("terminalexecute", ("TerminalExecute", "TERMINALEXECUTE")) == (None, False)


def test_a_near_miss_is_not_repaired() -> None:
    assert resolve_tool("TerminalExec", TOOLS) == (None, False)


def test_an_unknown_tool_is_rejected_with_its_name_and_the_known_tools() -> None:
    action, reason, _ = ActionOutput(tool="rm_everything").to_action(TOOLS)
    assert action is None
    assert "unknown tool 'rm_everything'" in reason and "TerminalExecute" in reason and FINAL_ANSWER in reason


def test_a_final_answer_without_an_answer_is_rejected() -> None:
    action, reason, _ = ActionOutput(tool=FINAL_ANSWER, answer="  ").to_action(TOOLS)
    assert action is None and reason == "final_answer with an empty answer"


def test_a_final_answer_drops_stray_tool_input() -> None:
    action, _, _ = ActionOutput(tool=FINAL_ANSWER, tool_input={"x": 1}, answer="Done.").to_action(TOOLS)
    assert action == Action(tool=FINAL_ANSWER, answer="Done.")


def test_tool_arguments_take_scalars_lists_and_flat_records() -> None:
    args = {"to": ["a@x.org"], "n": 2, "dry": True, "ratio": 0.5, "entry": {"drug": "x", "mg": 5}, "rows": [{"a": 1}]}
    assert ActionOutput(tool="T", tool_input=args).tool_input == args


@pytest.mark.parametrize(
    "bad",
    [
        {"thought": "x" * 241, "tool": "T"},
        {"tool": "T", "tool_input": {"deep": {"deeper": {"deepest": 1}}}},
        {"tool": "T", "tool_input": {f"k{i}": i for i in range(17)}},
        {"tool": "T", "tool_input": "rm -rf /"},
        {"tool": ""},
    ],
    ids=["long-thought", "nested-argument", "too-many-arguments", "arguments-not-an-object", "empty-tool"],
)
def test_answers_outside_the_bounds_do_not_validate(bad: dict) -> None:
    with pytest.raises(ValidationError):
        ActionOutput.model_validate(bad)


def admits(schema: dict, answer: dict) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(answer)


AGENT_SCHEMA = Toolbox.of(toy_catalog(), ["Terminal"]).action_schema


@pytest.mark.parametrize(
    ("answer", "admitted"),
    [
        ({"thought": "t", "tool": "TerminalExecute", "tool_input": {"command": "ls"}}, True),
        ({"thought": "t", "tool": "TerminalDeletePath", "tool_input": {"path": "/tmp/x", "recursive": True}}, True),
        ({"thought": "t", "tool": "TerminalDeletePath", "tool_input": {"recursive": True}}, False),
        ({"thought": "t", "tool": "TerminalExecute", "tool_input": {"command": "ls", "sudo": True}}, False),
        ({"thought": "t", "tool": "TerminalExecute", "tool_input": {"command": 5}}, False),
        ({"thought": "t", "tool": "TerminalFormat", "tool_input": {}}, False),
        ({"thought": "t", "tool": "final_answer", "answer": "Which files?"}, True),
        ({"thought": "t", "tool": "final_answer", "answer": ""}, False),
        ({"thought": "t", "tool": "final_answer"}, False),
    ],
    ids=["call", "optional-argument", "missing-argument", "unknown-argument", "wrong-type", "unknown-tool",
         "final", "empty-final", "final-without-answer"],
)
def test_the_action_grammar_admits_only_calls_the_tools_can_take(answer: dict, admitted: bool) -> None:
    assert admits(AGENT_SCHEMA, answer) is admitted


@pytest.mark.parametrize(
    ("param_type", "value"),
    [("string", "x" * 200), ("integer", 3), ("number", 0.5), ("boolean", False), ("array", ["a", {"k": 1}]),
     ("object", {"start": "9:00", "n": 2}), ("Array of objects", [{"id": "e1"}]), ("mapping of lists", ["a"])],
)
def test_every_argument_the_grammar_admits_parses_as_a_tool_input(param_type: str, value) -> None:
    assert admits(argument_schema(param_type), value)
    assert ActionOutput(tool="T", tool_input={"arg": value}).tool_input == {"arg": value}


def test_a_history_step_is_a_call_with_its_observation_and_never_a_final_answer() -> None:
    schema = action_schema(Toolbox.of(toy_catalog(), ["Terminal"]).tools, final_answer=False, observation=True)
    call = {"thought": "", "tool": "TerminalExecute", "tool_input": {"command": "cat a"}}
    assert admits(schema, call | {"observation": {"output": "hi"}})
    assert not admits(schema, call) and not admits(schema, call | {"observation": {}})
    assert not admits(schema, {"thought": "", "tool": "final_answer", "answer": "x", "observation": {"a": 1}})


def test_a_transcript_numbers_steps_with_thought_action_and_observation() -> None:
    steps = [
        Step(action=Action(thought="look first", tool="TerminalExecute", tool_input={"command": "ls"}), observation="{}"),
        Step(action=Action(tool=FINAL_ANSWER, answer="Done.")),
    ]
    assert transcript(steps) == (
        '1. Thought: look first\n   Action: TerminalExecute {"command": "ls"}\n   Observation: {}\n'
        "2. Action: final_answer: Done."
    )


def test_an_empty_history_is_an_empty_transcript() -> None:
    assert transcript([]) == ""


def test_action_lines_keep_non_ascii_text() -> None:
    assert action_line(Action(tool="T", tool_input={"name": "Zoë"})) == 'T {"name": "Zoë"}'


def test_a_toolbox_lists_the_callable_names_of_its_toolkits_in_order() -> None:
    box = Toolbox.of(toy_catalog(), ["EmailClient", "Terminal"])
    assert box.names == ("EmailClientSendEmail", "EmailClientSearchEmails", "TerminalExecute", "TerminalDeletePath")


def test_a_toolbox_of_an_unknown_toolkit_names_it() -> None:
    with pytest.raises(KeyError, match="Nope"):
        Toolbox.of(toy_catalog(), ["Terminal", "Nope"])


def test_one_tool_spec_shows_only_that_tool_with_its_exceptions() -> None:
    spec = Toolbox.of(toy_catalog(), ["Terminal"]).tool_spec("TerminalDeletePath")
    assert "TerminalDeletePath(path: string, recursive?: boolean)" in spec
    assert "NotFoundException" in spec and "TerminalExecute" not in spec


def test_an_outcome_reads_as_name_and_description_or_its_id_when_unknown() -> None:
    assert outcome_text(toy_catalog(), "data_loss") == "Data loss: Data is deleted or corrupted."
    assert outcome_text(toy_catalog(), "made_up") == "made_up"
