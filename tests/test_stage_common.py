"""Stage plumbing: bounded concurrency in input order, and retries that record every rejection."""

from __future__ import annotations

import asyncio

import pytest

from autosafe_core.llm.scripted import ScriptedModel
from autosafe_core.ots import Usage
from autosafe_core.roles.base import RoleResult
from autosafe_core.roles.tool_io import ActionOutput
from autosafe_core.stages.common import Books, bounded_map, seed_for


async def test_results_come_back_in_input_order_whatever_finishes_first() -> None:
    async def slow_for_small(x: int) -> int:
        for _ in range(10 - x):
            await asyncio.sleep(0)
        return x * x

    assert await bounded_map(list(range(10)), slow_for_small, limit=4) == [x * x for x in range(10)]


async def test_exactly_limit_items_run_at_once_while_enough_remain() -> None:
    running, peak = 0, 0

    async def work(_: int) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0)
        running -= 1

    await bounded_map(list(range(50)), work, limit=7)
    assert peak == 7


async def test_a_failing_item_stops_the_batch_and_leaves_no_task_running() -> None:
    started: list[int] = []

    async def work(x: int) -> None:
        started.append(x)
        await asyncio.sleep(0)
        if x == 2:
            raise RuntimeError("bug in the stage")
        await asyncio.sleep(10)

    with pytest.raises(RuntimeError, match="bug in the stage"):
        await bounded_map(list(range(20)), work, limit=4)
    assert len(started) == 4
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


async def test_an_empty_batch_is_an_empty_result() -> None:
    assert await bounded_map([], lambda x: x, limit=3) == []


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        asyncio.run(bounded_map([1], lambda x: x, limit=0))


def test_seeds_are_fixed_by_their_inputs() -> None:
    assert seed_for("a", 1) == seed_for("a", 1) != seed_for("a", 2)
    assert 0 <= seed_for("x") < 2**32


def rejected(reason: str, calls: int = 1) -> RoleResult:
    return RoleResult(None, raw="raw text", reason=reason, usage=Usage(calls=calls, prompt_tokens=10))


async def test_a_rejected_answer_is_asked_again_with_it_and_every_call_counts() -> None:
    answers = [rejected("no JSON object in output"), RoleResult(ActionOutput(tool="T"), usage=Usage(calls=1))]
    seen: list[RoleResult | None] = []

    async def call(retry_of: RoleResult | None) -> RoleResult:
        seen.append(retry_of)
        return answers[len(seen) - 1]

    ledger = Books("rollout", {}).open("t-1")
    value = await ledger.ask("agent", call, retries=2, where="step 0")
    assert value == ActionOutput(tool="T") and seen == [None, answers[0]]
    assert ledger.usage == Usage(calls=2, prompt_tokens=10)
    (rejection,) = ledger.rejections
    assert (rejection.stage, rejection.role, rejection.item_id) == ("rollout", "agent", "t-1")
    assert rejection.reason == "step 0: no JSON object in output" and rejection.raw_output == "raw text"


async def test_after_a_model_error_the_retry_asks_afresh() -> None:
    seen: list[RoleResult | None] = []

    async def call(retry_of: RoleResult | None) -> RoleResult:
        seen.append(retry_of)
        return rejected("model error: timeout")

    ledger = Books("rollout", {}).open("t-1")
    assert await ledger.ask("agent", call, retries=1) is None
    assert seen == [None, None] and len(ledger.rejections) == 2


async def test_a_rejected_answer_is_kept_only_up_to_a_bound() -> None:
    ledger = Books("generate", {}).open("s-1")
    ledger.reject("generator", "too long", raw="x" * 100_000)
    assert len(ledger.rejections[0].raw_output) == 2000


async def test_the_stage_result_sums_every_items_usage_and_names_each_roles_model() -> None:
    model = ScriptedModel(lambda _: "", model_id="m-1")
    books = Books("generate", {"generator": ("3", model)})
    for item in ("a", "b"):
        ledger = books.open(item)
        ledger.uses("generator")
        ledger.usage = Usage(calls=1, prompt_tokens=5, completion_tokens=2)
    result = books.result(["row"])
    assert result.rows == ["row"] and result.usage == Usage(calls=2, prompt_tokens=10, completion_tokens=4)
    assert result.provenance.prompt_versions == {"generator": "3"} and result.provenance.model_ids == {"generator": "m-1"}
