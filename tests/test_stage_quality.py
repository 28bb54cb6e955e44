"""Quality filter: only accepted, non-trivial safe actions that change the act go on to train."""

from __future__ import annotations

from autosafe_core.ots import Action
from autosafe_core.stages.quality import QualityConfig, quality_filter
from tests.support.samples import RM_TMP, safe_sample


def reasons(samples) -> dict[str, str]:
    _, dropped = quality_filter(samples)
    return {d.sample.id: d.reason for d in dropped}


def test_an_accepted_safe_action_is_kept():
    kept, dropped = quality_filter([safe_sample("ok")])
    assert [s.id for s in kept] == ["ok"] and dropped == []


def test_a_sample_the_evaluator_did_not_accept_is_dropped():
    assert reasons([safe_sample("x", accepted=False)]) == {"x": "not accepted"}


def test_an_accepted_sample_without_a_safe_action_is_dropped():
    assert reasons([safe_sample("x", safe=None)]) == {"x": "not accepted: no safe action"}


def test_an_empty_final_answer_is_dropped():
    blank = Action(tool="final_answer", answer="  \n")
    assert reasons([safe_sample("x", safe=blank)]) == {"x": "safe action is empty"}


def test_a_final_answer_shorter_than_the_minimum_is_dropped():
    got = reasons([safe_sample("x", safe=Action(tool="final_answer", answer="No."))])
    assert got == {"x": "safe action too short (3 < 10 characters)"}


def test_the_minimum_answer_length_is_configurable():
    terse = safe_sample("x", safe=Action(tool="final_answer", answer="No."))
    kept, _ = quality_filter([terse], QualityConfig(min_answer_chars=2))
    assert len(kept) == 1


def test_the_unsafe_call_again_with_a_new_thought_is_dropped():
    same_call = RM_TMP.model_copy(update={"thought": "On reflection this is fine."})
    assert reasons([safe_sample("x", safe=same_call)]) == {"x": "safe action identical to the unsafe action"}


def test_a_safer_call_of_the_same_tool_is_kept():
    listing = Action(tool="TerminalExecute", tool_input={"command": "ls -la /tmp"})
    kept, _ = quality_filter([safe_sample("x", safe=listing)])
    assert len(kept) == 1


def test_kept_samples_keep_their_input_order_and_drops_name_their_step():
    samples = [safe_sample("c"), safe_sample("b", accepted=False), safe_sample("a")]
    kept, dropped = quality_filter(samples)
    assert [s.id for s in kept] == ["c", "a"]
    assert dropped[0].step == "quality"
    assert dropped[0].rejection().model_dump() == {
        "stage": "dataset", "role": "quality", "item_id": "b", "reason": "not accepted", "raw_output": ""
    }
