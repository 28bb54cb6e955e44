"""Stage 1: the OTS grid in a fixed, diverse order, and scenarios with ids that re-runs reproduce."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from autosafe_core import rows
from autosafe_core.llm.base import ChatRequest, Completion
from autosafe_core.ots import OtsCell, RiskSource, Scenario
from autosafe_core.stages.generate import GenerateConfig, generate_scenarios, ots_grid, scenario_id
from tests.support.method import call, scripted, toy_catalog

CATALOG = toy_catalog()


def good(request: ChatRequest) -> dict:
    history = [call("EmailClientSearchEmails", keywords=["x"]) | {"observation": {"emails": ["hi"]}}]
    extra = {"history": history} if request.json_schema["title"] == "ContextScenarioOutput" else {}
    return {"user_instruction": "Tidy my inbox.", "expected_risky_actions": ["delete mail"], **extra}


def email_cells(n: int = 3) -> list[OtsCell]:
    return ots_grid(CATALOG, toolkits=["EmailClient"], limit=n)


# --- the grid -------------------------------------------------------------------------


def test_the_grid_has_every_toolkit_outcome_and_source_once() -> None:
    cells = ots_grid(CATALOG)
    keys = [(tuple(c.toolkits), c.risk_outcome, c.risk_source) for c in cells]
    assert len(keys) == len(set(keys)) == 2 * 3 * 3


def test_the_grid_order_is_the_same_every_time() -> None:
    assert ots_grid(CATALOG) == ots_grid(CATALOG)


def test_early_cells_spread_over_toolkits_outcomes_and_sources() -> None:
    first = ots_grid(CATALOG, limit=6)
    assert Counter(c.toolkits[0] for c in first) == {"Terminal": 3, "EmailClient": 3}
    assert len({c.risk_source for c in first if c.toolkits == ["Terminal"]}) == 3
    assert len({c.risk_outcome for c in first if c.toolkits == ["Terminal"]}) == 3


def test_the_first_cell_of_each_toolkit_has_another_source() -> None:
    first = ots_grid(CATALOG, sources=None, limit=2)
    assert first[0].risk_source != first[1].risk_source


def test_a_toolkits_own_risks_come_first() -> None:
    first = [c for c in ots_grid(CATALOG, toolkits=["Terminal"])][:1]
    assert first[0].risk_outcome == "data_loss"  # named by the Terminal's risks; privacy_leakage is not


def test_filters_and_limit_choose_the_cells() -> None:
    cells = ots_grid(CATALOG, outcomes=["financial_loss"], sources=[RiskSource.CONTEXT], limit=1)
    assert cells == [OtsCell(toolkits=["Terminal"], risk_outcome="financial_loss", risk_source=RiskSource.CONTEXT)]


def test_toolkits_combine_into_cells() -> None:
    cells = ots_grid(CATALOG, toolkits_per_cell=2)
    assert {tuple(c.toolkits) for c in cells} == {("Terminal", "EmailClient")} and len(cells) == 9


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"toolkits": ["Terminal", "Toaster"]}, "unknown toolkit 'Toaster'"),
        ({"outcomes": ["boredom"]}, "unknown risk outcome 'boredom'"),
        ({"toolkits_per_cell": 3}, "toolkits_per_cell"),
    ],
)
def test_a_grid_of_names_the_catalog_lacks_is_refused_by_name(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ots_grid(CATALOG, **kwargs)


# --- the stage ------------------------------------------------------------------------


async def test_each_cell_gets_its_scenarios_with_the_cells_fields() -> None:
    model, _ = scripted(generator=good)
    cells = email_cells()
    result = await generate_scenarios(cells, model, CATALOG, GenerateConfig(scenarios_per_cell=2))
    assert len(result.rows) == 6 and result.rejections == []
    for cell, pair in zip(cells, [result.rows[i : i + 2] for i in range(0, 6, 2)], strict=True):
        assert all((s.toolkits, s.risk_outcome, s.risk_source) == (cell.toolkits, cell.risk_outcome, cell.risk_source)
                   for s in pair)
    assert all(s.history for s in result.rows if s.risk_source == RiskSource.CONTEXT)


async def test_ids_are_the_same_on_a_rerun_and_distinct_within_a_run() -> None:
    cfg = GenerateConfig(scenarios_per_cell=3, seed=7)
    first = await generate_scenarios(email_cells(), scripted(generator=good)[0], CATALOG, cfg)
    again = await generate_scenarios(email_cells(), scripted(generator=good)[0], CATALOG, cfg)
    ids = [s.id for s in first.rows]
    assert ids == [s.id for s in again.rows] and len(set(ids)) == 9
    assert ids[0] == scenario_id(email_cells()[0], 0, 7)


async def test_another_seed_makes_other_ids() -> None:
    one = await generate_scenarios(email_cells(1), scripted(generator=good)[0], CATALOG, GenerateConfig(seed=1))
    two = await generate_scenarios(email_cells(1), scripted(generator=good)[0], CATALOG, GenerateConfig(seed=2))
    assert one.rows[0].id != two.rows[0].id


async def test_every_scenario_samples_with_its_own_reproducible_seed() -> None:
    cfg = GenerateConfig(scenarios_per_cell=2, temperature=0.9)
    model, _ = scripted(generator=good)
    await generate_scenarios(email_cells(), model, CATALOG, cfg)
    again, _ = scripted(generator=good)
    await generate_scenarios(email_cells(), again, CATALOG, cfg)
    seeds = [r.sampling.seed for r in model.calls]
    assert len(set(seeds)) == 6 and seeds == [r.sampling.seed for r in again.calls]
    assert {r.sampling.temperature for r in model.calls} == {0.9}


async def test_malformed_answers_become_rejections_with_reasons_and_never_raise() -> None:
    zoo = iter([
        "", "not json", '{"user_instruction": "Tidy my in', '{"user_instruction": 5}', "[]",
        Completion(error="engine down"), json.dumps({"user_instruction": "x" * 9000, "expected_risky_actions": ["y"]}),
    ])

    def answer(request: ChatRequest):
        return next(zoo, json.dumps(good(request)))

    model, _ = scripted(generator=answer)
    result = await generate_scenarios(email_cells(1), model, CATALOG, GenerateConfig(scenarios_per_cell=4, retries=1,
                                                                                  concurrency=1))
    assert len(result.rejections) == 7 and all(r.reason and r.stage == "generate" for r in result.rejections)
    assert len(result.rows) == 1  # the last of the four got a good answer on its retry
    assert {r.role for r in result.rejections} == {"generator"}


async def test_a_rejected_answer_is_asked_again_with_its_reason_and_both_calls_count() -> None:
    model, script = scripted(generator=["{}", good])
    result = await generate_scenarios(email_cells(1), model, CATALOG, GenerateConfig(retries=1))
    assert len(result.rows) == 1 and len(result.rejections) == 1
    retry = script.requests["generator"][1]
    assert retry.messages[-2].content == "{}" and "schema violation" in retry.messages[-1].content
    assert result.usage.calls == 2 == result.rows[0].provenance.usage.calls


async def test_usage_is_summed_over_every_call() -> None:
    model, _ = scripted(generator=good)
    result = await generate_scenarios(email_cells(), model, CATALOG)
    assert result.usage.calls == len(model.calls) == 3
    # The double counts a prompt's words as its tokens.
    assert result.usage.prompt_tokens == sum(sum(len(m.content.split()) for m in r.messages) for r in model.calls)
    assert result.usage.prompt_tokens == sum(s.provenance.usage.prompt_tokens for s in result.rows)


async def test_rows_carry_the_prompt_version_and_model_id() -> None:
    model, _ = scripted(model_id="gen-7b", generator=good)
    result = await generate_scenarios(email_cells(1), model, CATALOG)
    assert result.rows[0].provenance.model_ids == {"generator": "gen-7b"}
    assert result.rows[0].provenance.prompt_versions == {"generator": "1"} == result.provenance.prompt_versions


async def test_concurrency_reaches_and_never_exceeds_the_limit() -> None:
    model, _ = scripted(generator=good)
    await generate_scenarios(ots_grid(CATALOG), model, CATALOG, GenerateConfig(concurrency=5, scenarios_per_cell=2))
    assert model.peak_in_flight == 5


async def test_a_cell_the_catalog_lacks_is_rejected_without_a_model_call() -> None:
    model, _ = scripted(generator=good)
    stray = OtsCell(toolkits=["Toaster"], risk_outcome="data_loss", risk_source=RiskSource.ACTION)
    result = await generate_scenarios([stray], model, CATALOG)
    assert result.rows == [] and model.calls == []
    assert "unknown toolkit 'Toaster'" in result.rejections[0].reason


async def test_scenarios_round_trip_through_arrow_rows() -> None:
    result = await generate_scenarios(email_cells(), scripted(generator=good)[0], CATALOG)
    assert rows.from_table(Scenario, rows.to_table(result.rows, Scenario)) == result.rows
