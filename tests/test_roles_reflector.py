"""The reflector: a critique of the unsafe action and a revised action that passes the agent's checks."""

from __future__ import annotations

import json

import pytest

from autosafe_core.llm.base import Completion
from autosafe_core.llm.scripted import ScriptedModel
from autosafe_core.ots import FINAL_ANSWER, Action, SafetyLabel, Verdict
from autosafe_core.roles import reflector
from autosafe_core.roles.toolbox import Toolbox
from tests.support.method import call, final, scenario, step, toy_catalog, user_text

BOX = Toolbox.of(toy_catalog(), ["Terminal"])
UNSAFE = Action(thought="clean all", tool="TerminalDeletePath", tool_input={"path": "~", "recursive": True})
VERDICT = Verdict(score=0, label=SafetyLabel.LIKELY_SEVERE_RISK, rationale="Deletes the whole home.", risk_trigger=True)
ASK = final("Deleting ~ cannot be undone. Which folders may I remove?", thought="ask first")


async def reflect(answer: str | dict | Completion):
    text = json.dumps(answer) if isinstance(answer, dict) else answer
    model = ScriptedModel(lambda _: text)
    return await reflector.reflect(model, scenario(), [], UNSAFE, VERDICT, BOX, outcome="Data loss"), model


async def test_a_critique_and_a_question_to_the_user_make_a_reflection() -> None:
    result, _ = await reflect({"critique": "Irreversible and unconfirmed.", "revised_action": ASK})
    assert result.value.critique == "Irreversible and unconfirmed."
    assert result.value.action.tool == FINAL_ANSWER and "Which folders" in result.value.action.answer


async def test_a_safer_tool_call_is_a_revision_too() -> None:
    result, _ = await reflect({"critique": "Check first.", "revised_action": call("TerminalExecute", command="du -sh ~/*")})
    assert result.value.action == Action(tool="TerminalExecute", tool_input={"command": "du -sh ~/*"})


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ({"critique": "x", "revised_action": call("TerminalWipe")}, "revised_action: unknown tool 'TerminalWipe'"),
        ({"critique": "x", "revised_action": final("")}, "revised_action: final_answer with an empty answer"),
        ({"critique": "", "revised_action": ASK}, "schema violation at critique"),
        ({"critique": "x"}, "schema violation at revised_action"),
        ({"critique": "x" * 3000, "revised_action": ASK}, "schema violation at critique"),
        ({"critique": ["x"], "revised_action": ASK}, "schema violation at critique"),
        ('```json\n{"critique": "Irreversible', "schema violation at revised_action"),
        ("", "empty output"),
        (Completion(error="rate limited"), "model error: rate limited"),
    ],
    ids=["unknown-tool", "empty-answer", "empty-critique", "no-action", "absurdly-long", "wrong-type", "cut", "empty", "error"],
)
async def test_unusable_reflections_are_rejected_with_a_reason(answer, reason: str) -> None:
    result, _ = await reflect(answer)
    assert result.value is None and result.reason.startswith(reason)


async def test_the_prompt_shows_the_action_its_verdict_and_the_safe_alternatives() -> None:
    model = ScriptedModel(lambda _: json.dumps({"critique": "x", "revised_action": ASK}))
    history = [step("TerminalExecute", '{"output": "4G"}', command="du")]
    await reflector.reflect(model, scenario(), history, UNSAFE, VERDICT, BOX, outcome="Data loss")
    system, user = (m.content for m in model.calls[0].messages)
    assert "not only a refusal" in system and "confirm or clarify" in system and "read-only" in system
    assert "less risky" in system and "refuse with a reason" in system
    assert 'Action: TerminalDeletePath {"path": "~", "recursive": true}' in user
    assert "Verdict: likely_severe_risk (score 0): Deletes the whole home." in user
    assert '1. Action: TerminalExecute {"command": "du"}' in user
    revised = model.calls[0].json_schema["properties"]["revised_action"]
    assert [v["properties"]["tool"]["const"] for v in revised["anyOf"]] == [*BOX.names, FINAL_ANSWER]
