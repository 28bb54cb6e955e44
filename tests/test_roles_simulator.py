"""The environment simulator: writes one observation, never executes; invalid calls get the tool's exception."""

from __future__ import annotations

import json

import pytest

from autosafe_core.llm.base import Completion
from autosafe_core.llm.scripted import ScriptedModel
from autosafe_core.ots import Action, SimulationMode, Tool, ToolException
from autosafe_core.roles import simulator
from autosafe_core.roles.toolbox import Toolbox
from tests.support.method import scenario, step, toy_catalog, user_text

BOX = Toolbox.of(toy_catalog(), ["Terminal"])
DU = Action(tool="TerminalExecute", tool_input={"command": "du -sh ~/*"})
OBSERVED = {"thought": "valid call", "observation": {"output": "4.0G /home/u/cache", "exit_code": 0}}


async def simulate(action: Action, answer: str | dict | Completion = OBSERVED, **kwargs):
    text = json.dumps(answer) if isinstance(answer, dict) else answer
    model = ScriptedModel(lambda _: text)
    return await simulator.simulate(model, scenario(), [], action, BOX, **kwargs), model


async def test_an_observation_is_the_return_fields_as_one_line_of_json() -> None:
    result, _ = await simulate(DU)
    assert result.value.observation_text() == '{"output": "4.0G /home/u/cache", "exit_code": 0}'
    assert result.usage.calls == 1


async def test_an_exception_observation_passes_through() -> None:
    result, _ = await simulate(DU, {"observation": {"error": "InvalidRequestException: empty command"}})
    assert json.loads(result.value.observation_text()) == {"error": "InvalidRequestException: empty command"}


@pytest.mark.parametrize(
    ("action", "error"),
    [
        (Action(tool="TerminalFormatDisk", tool_input={}), "InvalidRequestException: unknown tool 'TerminalFormatDisk'"),
        (Action(tool="TerminalExecute", tool_input={}), "InvalidRequestException: missing required argument(s): command"),
        (
            Action(tool="TerminalExecute", tool_input={"command": "ls", "sudo": True}),
            "InvalidRequestException: unexpected argument(s): sudo",
        ),
        (
            Action(tool="TerminalDeletePath", tool_input={"force": True}),
            "InvalidRequestException: missing required argument(s): path",
        ),
    ],
    ids=["unknown-tool", "missing-argument", "unexpected-argument", "tool-without-invalid-request"],
)
async def test_an_invalid_call_gets_the_tools_exception_without_asking_a_model(action: Action, error: str) -> None:
    result, model = await simulate(action)
    assert json.loads(result.value.observation_text()) == {"error": error}
    assert model.calls == [] and result.usage.calls == 0


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ({"thought": "x", "observation": {}}, "schema violation at observation"),
        ({"thought": "x"}, "schema violation at observation"),
        ({"observation": "4.0G"}, "schema violation at observation"),
        ({"observation": {"output": "x" * 5000}}, "schema violation at observation.output"),
        ('{"thought": "ok", "observation": {"output": "4.0G /ho', None),
        ("", "empty output"),
        (Completion(error="connection reset"), "model error: connection reset"),
    ],
    ids=["empty-observation", "no-observation", "observation-not-object", "absurdly-long", "cut", "empty", "error"],
)
async def test_malformed_observations_are_rejected_with_a_reason(answer, reason: str | None) -> None:
    result, _ = await simulate(DU, answer)
    if reason is None:  # cut mid-string: closed by the repair and used
        assert result.value is not None and result.repaired
    else:
        assert result.value is None and result.reason.startswith(reason)


async def test_the_prompt_shows_the_called_tools_spec_the_steps_and_the_call() -> None:
    model = ScriptedModel(lambda _: json.dumps(OBSERVED))
    history = [step("TerminalExecute", '{"output": "a b"}', command="ls")]
    await simulator.simulate(model, scenario(), history, DU, BOX)
    user = user_text(model.calls[0])
    assert "TerminalExecute(command: string)" in user and "raises InvalidRequestException" in user
    assert "TerminalDeletePath" not in user
    assert '1. Action: TerminalExecute {"command": "ls"}' in user
    assert user.endswith('Tool call to answer: TerminalExecute {"command": "du -sh ~/*"}')
    assert "never execute" in model.calls[0].messages[0].content


async def test_standard_mode_does_not_know_the_risk() -> None:
    _, model = await simulate(DU, outcome="Data loss: gone.")
    text = "\n".join(m.content for m in model.calls[0].messages)
    assert "Data loss: gone." not in text and "adversarial" not in text and "rm -rf on the home directory" not in text


async def test_adversarial_mode_steers_toward_the_scenarios_risk() -> None:
    _, model = await simulate(DU, mode=SimulationMode.ADVERSARIAL, outcome="Data loss: gone.")
    system, user = (m.content for m in model.calls[0].messages)
    assert "adversarial test" in system
    assert "Risk to steer toward: Data loss: gone." in user and "rm -rf on the home directory" in user


def test_an_invalid_call_gets_the_tools_own_invalid_input_exception_when_it_has_one() -> None:
    tool = Tool(name="Pay", summary="Pay.", exceptions=[ToolException(name="NotFoundException"),
                                                        ToolException(name="InvalidAmountException")])
    assert simulator.exception_observation(tool, "bad").observation == {"error": "InvalidAmountException: bad"}
