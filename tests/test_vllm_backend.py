"""The vLLM backend keeps the `ChatModel` contract: schema-valid JSON, token counts,
finish reasons. Runs where vllm and a GPU are; elsewhere only the import test runs.

The engine runs SmolLM2's config and tokenizer with dummy (random) weights: the grammar
alone must make even random weights answer with JSON that validates.
`AUTOSAFE_VLLM_TEST_MODEL` names the directory to take config and tokenizer from (a
machine without the registry, such as the GPU box); by default, the converted SmolLM2.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import Literal

import pytest
import pytest_asyncio
from pydantic import BaseModel

from autosafe_core.llm.base import ChatRequest, Message, SamplingParams
from autosafe_core.llm.registry import ModelSpec

HAVE_VLLM = importlib.util.find_spec("vllm") is not None


def _why_not() -> str | None:
    if not HAVE_VLLM:
        return "vllm is not installed here"
    import torch

    return None if torch.cuda.is_available() else "vllm needs a GPU; none here"


WHY_NOT = _why_not()
needs_vllm = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")


class Judgement(BaseModel):
    # No free-text field: the backend drops string maxLength for vLLM (schema_compat), so on
    # random weights a free string runs to max_tokens; choices and booleans always close.
    action: Literal["read", "write", "send", "delete"]
    risk: Literal["low", "medium", "high"]
    reversible: bool


def ask(text: str, *, schema: bool = True, **sampling: object) -> ChatRequest:
    return ChatRequest(
        messages=(Message(role="user", content=text),),
        sampling=SamplingParams(**{"max_tokens": 200, **sampling}),
        json_schema=Judgement.model_json_schema() if schema else None,
    )


def _model_dir(tmp: Path) -> Path:
    """A directory with SmolLM2's config and tokenizer and no weights."""
    configured = os.environ.get("AUTOSAFE_VLLM_TEST_MODEL")
    if configured:
        source = Path(configured)
    else:
        from autosafe_core.llm.smollm2 import default_cache_dir, ensure_smollm2

        source = ensure_smollm2(default_cache_dir())
    target = tmp / "model"
    target.mkdir()
    for item in source.iterdir():
        if item.suffix != ".safetensors":  # dummy weights: only the shapes matter
            shutil.copy(item, target / item.name)
    return target


def _random_lora(model_dir: Path, out: Path) -> Path:
    """A LoRA adapter with random (non-zero) weights for the model in `model_dir`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    lora = LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(out)
    return out


def _spec(model_dir: Path, adapter: Path | None = None) -> ModelSpec:
    options = {
        "load_format": "dummy",
        "max_model_len": 2048,
        "gpu_memory_utilization": 0.3,  # two test engines share the GPU
        "enforce_eager": True,  # no CUDA-graph capture: a test engine starts sooner
        "seed": 0,
    }
    return ModelSpec(backend="vllm", model=str(model_dir), adapter=str(adapter) if adapter else None, options=options)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _model_dir(tmp_path_factory.mktemp("vllm"))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(model_dir: Path):
    from autosafe_core.llm.vllm_backend import VLLMChatModel

    model = VLLMChatModel.from_spec(_spec(model_dir))
    yield model
    await model.aclose()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lora_engine(model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from autosafe_core.llm.vllm_backend import VLLMChatModel

    adapter = _random_lora(model_dir, tmp_path_factory.mktemp("lora") / "safety-lora")
    model = VLLMChatModel.from_spec(_spec(model_dir, adapter))
    yield model
    await model.aclose()


def test_the_module_imports_without_vllm() -> None:
    module = importlib.import_module("autosafe_core.llm.vllm_backend")
    assert hasattr(module, "VLLMChatModel")
    if not HAVE_VLLM:
        assert "vllm" not in sys.modules


@needs_vllm
@pytest.mark.asyncio(loop_scope="module")
async def test_concurrent_schema_requests_come_back_as_json_that_validates(engine) -> None:
    completions = await asyncio.gather(*(engine.complete([ask(f"Judge action {i}.")]) for i in range(8)))
    for (completion,) in completions:
        assert completion.ok, completion.error
        assert completion.finish_reason == "stop", completion.text
        Judgement.model_validate_json(completion.text)


@needs_vllm
@pytest.mark.asyncio(loop_scope="module")
async def test_token_counts_are_reported(engine) -> None:
    (completion,) = await engine.complete([ask("Judge: the agent reads the calendar.")])
    assert completion.prompt_tokens > 0 and completion.completion_tokens > 0


@needs_vllm
@pytest.mark.asyncio(loop_scope="module")
async def test_a_tiny_max_tokens_ends_with_reason_length(engine) -> None:
    (completion,) = await engine.complete([ask("Judge: the agent wires money.", max_tokens=3)])
    assert (completion.finish_reason, completion.completion_tokens) == ("length", 3)


@needs_vllm
@pytest.mark.asyncio(loop_scope="module")
async def test_ignore_eos_generates_exactly_max_tokens(engine) -> None:
    (completion,) = await engine.complete([ask("Hello", schema=False, max_tokens=17, ignore_eos=True)])
    assert (completion.finish_reason, completion.completion_tokens) == ("length", 17)


@needs_vllm
@pytest.mark.asyncio(loop_scope="module")
async def test_a_bad_schema_fails_only_its_own_request(engine) -> None:
    bad = ChatRequest(messages=(Message(role="user", content="x"),), json_schema={"type": "nonsense"})
    broken, fine = await engine.complete([bad, ask("y", schema=False, max_tokens=4)])
    assert broken.error is not None
    assert fine.ok


@needs_vllm
@pytest.mark.asyncio(loop_scope="module")
async def test_a_cancelled_request_is_aborted_in_the_engine(engine) -> None:
    # What the engine pool does when a caller gives up (a safe-action candidate made moot).
    long, short = engine.complete_each(
        [ask("Hello", schema=False, max_tokens=1500, ignore_eos=True), ask("Hi", schema=False, max_tokens=4)]
    )
    assert (await short).ok
    assert not long.done()
    long.cancel()
    with pytest.raises(asyncio.CancelledError):
        await long
    # The request's task ends only after vLLM's abort: nothing of it is left to compute.
    assert engine.engine.output_processor.get_num_unfinished_requests() == 0


class _StatsEngine:
    """Only what the stats loop touches of an `AsyncLLM`: a test double for its logic."""

    def __init__(self) -> None:
        self.logged = asyncio.Event()
        self.calls = 0
        self.shut = False

    def get_tokenizer(self) -> None:
        return None

    async def do_log_stats(self) -> None:
        self.calls += 1
        self.logged.set()

    def shutdown(self) -> None:
        self.shut = True


@pytest.mark.asyncio
async def test_an_engine_with_stats_on_logs_them_until_closed(monkeypatch) -> None:
    from autosafe_core.llm import vllm_backend

    monkeypatch.setattr(vllm_backend, "STATS_INTERVAL_S", 0.001)
    engine = _StatsEngine()
    model = vllm_backend.VLLMChatModel(engine, model_id="m", log_stats=True)
    model.complete_each([])  # the first requests start the loop on this event loop
    await asyncio.wait_for(engine.logged.wait(), timeout=5)
    task = model._stats_task
    await model.aclose()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.shut and engine.calls >= 1


@pytest.mark.asyncio
async def test_an_engine_with_stats_off_starts_no_loop() -> None:
    from autosafe_core.llm import vllm_backend

    model = vllm_backend.VLLMChatModel(_StatsEngine(), model_id="m")
    await model.complete([])
    assert model._stats_task is None


@needs_vllm
@pytest.mark.asyncio(loop_scope="module")
async def test_a_lora_adapter_serves_every_request_and_is_named_in_the_model_id(lora_engine) -> None:
    (completion,) = await lora_engine.complete([ask("Judge: the agent shares a password.")])
    assert lora_engine.model_id.endswith("+safety-lora")
    assert completion.ok, completion.error
    Judgement.model_validate_json(completion.text)
