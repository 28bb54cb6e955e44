"""The transformers backend: batched, schema-constrained chat completions on the CPU.

Two models: a tiny random llama (built from a config, SmolLM2's tokenizer) isolates
batching, budgets, grammars and failures in seconds; the real SmolLM2-135M-Instruct
shows the embedded default answers chat requests with schema-valid JSON.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Literal

import pytest
import torch
from pydantic import BaseModel, Field
from transformers import AutoTokenizer, LlamaForCausalLM

from autosafe_core.llm.base import ChatRequest, Message, SamplingParams
from autosafe_core.llm.registry import ModelSpec
from autosafe_core.llm.smollm2 import default_cache_dir, ensure_smollm2
from autosafe_core.llm.transformers_backend import TransformersChatModel
from tests.support.tiny_llama import tiny_config


class Judgement(BaseModel):
    """A small output schema in the shape of the roles': bounded strings and an enum."""

    action: str = Field(max_length=24)
    risk: Literal["low", "medium", "high"]
    reason: str = Field(max_length=40)


SCHEMA = Judgement.model_json_schema()


def ask(text: str, *, schema: bool = True, **sampling: object) -> ChatRequest:
    return ChatRequest(
        messages=(Message(role="user", content=text),),
        sampling=SamplingParams(**{"max_tokens": 96, **sampling}),
        json_schema=SCHEMA if schema else None,
    )


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    return ensure_smollm2(default_cache_dir())


@pytest.fixture(scope="module")
def tiny_parts(smollm2_dir: Path) -> tuple[LlamaForCausalLM, object]:
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    config = tiny_config(
        len(tokenizer),
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config), tokenizer


@pytest.fixture
async def tiny(tiny_parts):
    """A fresh backend per test (its own worker and counters) over the shared tiny model."""
    model, tokenizer = tiny_parts
    # A wide batch window: callers started together always land in one batch.
    backend = TransformersChatModel(model, tokenizer, model_id="tiny", max_batch_size=4, batch_wait_ms=300)
    yield backend
    await backend.aclose()


@pytest.fixture(scope="module")
def smollm2():
    spec = ModelSpec(options={"device": "cpu", "max_batch_size": 8, "batch_wait_ms": 300})
    backend = TransformersChatModel.from_spec(spec)
    yield backend
    asyncio.run(backend.aclose())


# --- batching, budgets, grammars, failures (tiny random model) ------------------------------


async def test_concurrent_callers_are_coalesced_up_to_max_batch_size(tiny: TransformersChatModel) -> None:
    results = await asyncio.gather(*(tiny.complete([ask(f"q{i}", schema=False, max_tokens=4)]) for i in range(6)))
    assert all(c.ok for (c,) in results)
    assert (tiny.batches_run, tiny.rows_run) == (2, 6)


async def test_requests_with_and_without_a_schema_share_one_batch(tiny: TransformersChatModel) -> None:
    completions = await tiny.complete([ask("a"), ask("b", schema=False, max_tokens=5)])
    assert all(c.ok for c in completions)
    assert tiny.batches_run == 1


async def test_a_grammar_holds_even_a_random_model_to_the_schema(tiny: TransformersChatModel) -> None:
    completions = await tiny.complete([ask(f"judge {i}", max_tokens=200) for i in range(3)])
    for completion in completions:
        assert completion.finish_reason == "stop", completion.text
        Judgement.model_validate_json(completion.text)


async def test_every_request_keeps_its_own_token_budget(tiny: TransformersChatModel) -> None:
    short, long = await tiny.complete(
        [ask("a", schema=False, max_tokens=3, ignore_eos=True), ask("b", schema=False, max_tokens=11, ignore_eos=True)]
    )
    assert (short.completion_tokens, short.finish_reason) == (3, "length")
    assert (long.completion_tokens, long.finish_reason) == (11, "length")


async def test_a_seeded_sampled_request_draws_the_same_tokens_in_any_batch(tiny: TransformersChatModel) -> None:
    seeded = ask("same", schema=False, max_tokens=12, temperature=1.0, seed=7)
    (alone,) = await tiny.complete([seeded])
    _, batched, _ = await tiny.complete(
        [ask("x", schema=False, temperature=1.0, seed=1), seeded, ask("a longer prompt than the others", schema=False)]
    )
    assert batched.text == alone.text


async def test_different_seeds_draw_different_tokens(tiny: TransformersChatModel) -> None:
    a, b = await tiny.complete([ask("same", schema=False, max_tokens=12, temperature=1.0, seed=s) for s in (1, 2)])
    assert a.text != b.text


async def test_a_failed_forward_pass_is_reported_in_each_completion_and_the_worker_survives(
    tiny: TransformersChatModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(**_: object) -> None:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(tiny.model, "forward", broken)
    failed = await tiny.complete([ask("a"), ask("b")])
    assert [c.ok for c in failed] == [False, False]
    assert all("out of memory" in (c.error or "") for c in failed)
    monkeypatch.undo()
    (recovered,) = await tiny.complete([ask("c", schema=False, max_tokens=2)])
    assert recovered.ok


async def test_a_cancelled_request_leaves_the_batch_while_the_others_finish(
    tiny: TransformersChatModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    long, short = tiny.complete_each(
        [ask("a", schema=False, max_tokens=200, ignore_eos=True), ask("b", schema=False, max_tokens=6, ignore_eos=True)]
    )
    loop, cancelled = asyncio.get_running_loop(), threading.Event()
    long.add_done_callback(lambda _: cancelled.set())
    rows_per_pass: list[int] = []
    forward = tiny.model.forward

    def counting(**kwargs):
        rows_per_pass.append(kwargs["input_ids"].shape[0])
        if len(rows_per_pass) == 3:  # the caller gives up on the long one during the third pass
            loop.call_soon_threadsafe(long.cancel)
            assert cancelled.wait(30)
        return forward(**kwargs)

    monkeypatch.setattr(tiny.model, "forward", counting)
    done = await short
    assert long.cancelled() and tiny.withdrawn == 1
    assert (done.completion_tokens, done.finish_reason) == (6, "length")
    assert rows_per_pass == [2, 2, 2, 1, 1, 1]  # not 200 passes: the long row left after its third token


async def test_a_request_cancelled_before_its_batch_starts_is_never_decoded(tiny: TransformersChatModel) -> None:
    dropped, kept = tiny.complete_each([ask("a", schema=False, max_tokens=50), ask("b", schema=False, max_tokens=3)])
    dropped.cancel()  # within the batch window (300 ms): the batch is not gathered yet
    assert (await kept).ok
    assert (tiny.rows_run, tiny.withdrawn) == (1, 1)


async def test_an_uncompilable_schema_fails_only_its_own_request(tiny: TransformersChatModel) -> None:
    bad = ChatRequest(messages=(Message(role="user", content="x"),), json_schema={"$ref": "#/$defs/Missing"})
    broken, fine = await tiny.complete([bad, ask("y", schema=False, max_tokens=3)])
    assert broken.error is not None and "json_schema" in broken.error
    assert fine.ok


async def test_a_request_beyond_the_context_fails_only_itself(tiny: TransformersChatModel) -> None:
    too_long, fine = await tiny.complete([ask("x", schema=False, max_tokens=5000), ask("y", schema=False, max_tokens=3)])
    assert too_long.error is not None and "exceeds the model's context of 1024 tokens" in too_long.error
    assert fine.ok


async def test_each_schema_is_compiled_once(tiny: TransformersChatModel) -> None:
    await tiny.complete([ask("a", max_tokens=4), ask("b", max_tokens=4)])
    await tiny.complete([ask("c", max_tokens=4)])
    assert len(tiny.grammars) == 1


async def test_after_aclose_the_worker_has_stopped_and_calls_fail_softly(tiny_parts) -> None:
    model, tokenizer = tiny_parts
    backend = TransformersChatModel(model, tokenizer, model_id="tiny")
    await backend.aclose()
    assert not backend._worker.is_alive()
    (completion,) = await backend.complete([ask("late")])
    assert completion.error == "model is closed"


async def test_a_lora_adapter_is_merged_on_top_and_named_in_the_model_id(tiny_parts, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    model, tokenizer = tiny_parts
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)  # random B: it shows
    get_peft_model(LlamaForCausalLM.from_pretrained(tmp_path / "base"), lora).save_pretrained(tmp_path / "safety-lora")
    spec = {"model": str(tmp_path / "base"), "options": {"device": "cpu"}}
    base = TransformersChatModel.from_spec(ModelSpec(**spec))
    tuned = TransformersChatModel.from_spec(ModelSpec(**spec, adapter=str(tmp_path / "safety-lora")))
    request = ask("same prompt", schema=False, max_tokens=8, ignore_eos=True)
    ((plain,), (adapted,)) = await asyncio.gather(base.complete([request]), tuned.complete([request]))
    await base.aclose()
    await tuned.aclose()
    assert tuned.model_id == f"{tmp_path / 'base'}+safety-lora"
    assert adapted.ok and adapted.text != plain.text


def test_an_unknown_option_is_a_one_line_error() -> None:
    with pytest.raises(ValueError, match=r"^model options\.max_batch: Extra inputs are not permitted$"):
        TransformersChatModel.from_spec(ModelSpec(options={"max_batch": 4}))


def test_a_model_that_is_not_on_disk_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^model '.*nowhere': cannot load: "):
        TransformersChatModel.from_spec(ModelSpec(model=str(tmp_path / "nowhere")))


# --- the real embedded default (SmolLM2-135M-Instruct) -----------------------------------------


@pytest.mark.slow
async def test_smollm2_answers_a_schema_request_with_json_that_validates(smollm2: TransformersChatModel) -> None:
    (completion,) = await smollm2.complete(
        [ask("The agent wants to delete every file in the home folder. Judge the risk.")]
    )
    assert completion.ok and completion.finish_reason == "stop"
    judgement = Judgement.model_validate_json(completion.text)
    assert judgement.risk in ("low", "medium", "high")


@pytest.mark.slow
async def test_smollm2_serves_concurrent_calls_in_fewer_batches_than_calls(smollm2: TransformersChatModel) -> None:
    before = smollm2.batches_run
    results = await asyncio.gather(*(smollm2.complete([ask(f"Judge action number {i}.")]) for i in range(4)))
    assert all(c.ok for (c,) in results)
    assert smollm2.batches_run - before < 4


@pytest.mark.slow
async def test_smollm2_counts_prompt_and_completion_tokens(smollm2: TransformersChatModel) -> None:
    (completion,) = await smollm2.complete([ask("Judge: the agent reads the calendar.")])
    assert completion.prompt_tokens > 0 and completion.completion_tokens > 0
    assert completion.model_id == "smollm2-135m-instruct"


@pytest.mark.slow
async def test_smollm2_stops_with_reason_length_at_a_tiny_max_tokens(smollm2: TransformersChatModel) -> None:
    (completion,) = await smollm2.complete([ask("Judge: the agent wires money.", max_tokens=3)])
    assert (completion.finish_reason, completion.completion_tokens) == ("length", 3)


@pytest.mark.slow
async def test_smollm2_answers_a_plain_request_without_schema(smollm2: TransformersChatModel) -> None:
    (completion,) = await smollm2.complete([ask("Say hello in one short sentence.", schema=False, max_tokens=24)])
    assert completion.ok and completion.text.strip()


@pytest.mark.slow
async def test_smollm2_greedy_answer_is_the_same_alone_and_in_a_batch(smollm2: TransformersChatModel) -> None:
    request = ask("Hi", schema=False, max_tokens=16)
    (alone,) = await smollm2.complete([request])
    longer = ask("A much longer prompt about firewalls and their rules.", schema=False, max_tokens=16)
    _, batched = await smollm2.complete([longer, request])
    assert batched.text == alone.text
