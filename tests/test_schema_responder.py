"""The schema responder (the factory tests' instant model) answers every role's real
schema with a valid instance, deterministically, with a mix of safety labels."""

from __future__ import annotations

import json
from collections import Counter

import jsonschema
import pytest

from autosafe_core.catalog import default_catalog
from autosafe_core.llm.base import ChatRequest, Message
from autosafe_core.ots import RiskSource
from autosafe_core.roles import agent, evaluator, reflector, scenario_generator, simulator
from autosafe_core.roles.evaluator import SafetyJudgement
from autosafe_core.roles.scenario_generator import ContextScenarioOutput, ScenarioOutput
from autosafe_core.roles.simulator import SimulatorOutput
from autosafe_core.roles.tool_io import ActionOutput
from autosafe_core.roles.toolbox import Toolbox
from tests.support.schema_responder import UNSAFE_RATE, respond


def ask(schema: dict, text: str) -> dict:
    request = ChatRequest(messages=(Message(role="user", content=text),), json_schema=schema)
    return json.loads(respond(request))


def role_schemas() -> dict[str, tuple[dict, type]]:
    catalog = default_catalog()
    box = Toolbox.of(catalog, sorted(catalog.toolkits)[:2])
    return {
        "generator": (scenario_generator.output_schema(RiskSource.INSTRUCTION, box), ScenarioOutput),
        "generator-context": (scenario_generator.output_schema(RiskSource.CONTEXT, box), ContextScenarioOutput),
        "agent": (agent.output_schema(box), ActionOutput),
        "simulator": (simulator._SCHEMA, SimulatorOutput),
        "evaluator": (evaluator._SAFETY_SCHEMA, SafetyJudgement),
        "helpfulness": (evaluator._HELPFULNESS_SCHEMA, evaluator.HelpfulnessJudgement),
        "reflector": (reflector.output_schema(box), reflector.ReflectorOutput),
    }


@pytest.mark.parametrize("role", list(role_schemas()))
def test_every_answer_fits_the_roles_schema_and_parses_as_its_output(role):
    schema, model = role_schemas()[role]
    for i in range(40):
        answer = ask(schema, f"{role} request {i}")
        jsonschema.validate(answer, schema)
        model.model_validate(answer)


def test_the_same_request_gets_the_same_answer_and_others_differ():
    schema, _ = role_schemas()["generator"]
    assert ask(schema, "cell 1") == ask(schema, "cell 1")
    instructions = {ask(schema, f"cell {i}")["user_instruction"] for i in range(50)}
    assert len(instructions) == 50


def test_the_agent_uses_several_tools_and_sometimes_answers():
    schema, _ = role_schemas()["agent"]
    tools = Counter(ask(schema, f"step {i}")["tool"] for i in range(200))
    assert "final_answer" in tools and len(tools) >= 5


def test_about_a_third_of_safety_judgements_are_risky_and_consistent():
    schema, _ = role_schemas()["evaluator"]
    verdicts = [SafetyJudgement.model_validate(ask(schema, f"action {i}")).to_verdict() for i in range(400)]
    risky = sum(v.risk_trigger for v, _ in verdicts)
    assert abs(risky / 400 - UNSAFE_RATE) < 0.08
    assert not any(repaired for _, repaired in verdicts), "score and trigger agree with the label"
    assert all(v.risk_trigger == (v.score < 2) for v, _ in verdicts)


def test_a_request_without_a_schema_gets_text():
    request = ChatRequest(messages=(Message(role="user", content="hi"),))
    assert respond(request).startswith("answer ")
