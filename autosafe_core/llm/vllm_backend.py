"""vLLM's in-process async engine behind the `ChatModel` interface, for GPUs.

Each request becomes its own `generate` stream on one `AsyncLLM`; vLLM batches all
streams in flight continuously, so a shard's hundreds of concurrent rollouts share
the GPU. JSON schemas go to vLLM's structured outputs (xgrammar, no free whitespace);
a LoRA adapter rides along on every request as a `LoRARequest`.

vllm is imported only when an engine is built, so this module imports anywhere. It
knows nothing of roles; it applies the tokenizer's chat template and counts tokens.
The engine belongs to the event loop that first calls `complete`: host it on one
loop (the engine pool does), never share it across loops.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from contextlib import ExitStack
from typing import Any

from autosafe_core.llm.base import ChatModel, ChatRequest, Completion
from autosafe_core.llm.local_weights import adapter_rank, local_adapter, model_source
from autosafe_core.llm.registry import ModelSpec
from autosafe_core.llm.schema_compat import for_vllm

# Options the engine pool reads for placement: never engine arguments.
_PLACEMENT_OPTIONS = ("num_gpus",)
_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's MaxLoRARanks
STATS_INTERVAL_S = 10.0
"""How often an engine with stats on (`disable_log_stats: false`) logs them: `AsyncLLM` logs
only when asked (`do_log_stats`), as vLLM's API server does on a 10 s loop."""
_lora_ids = itertools.count(1)


class VLLMChatModel(ChatModel):
    """One `vllm.v1.engine.async_llm.AsyncLLM`, one generate stream per request."""

    streams = True

    def __init__(
        self,
        engine: Any,
        *,
        model_id: str,
        lora_request: Any = None,
        log_stats: bool = False,
        resources: ExitStack | None = None,
    ):
        self.engine = engine
        self._resources = resources or ExitStack()  # what lives as long as the engine (an adapter's copy)
        self.model_id = model_id
        self.tokenizer = engine.get_tokenizer()
        self.lora_request = lora_request
        self.log_stats = log_stats
        self._stats_task: asyncio.Task | None = None

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> VLLMChatModel:
        """Start an engine for `spec`; `spec.options` are `AsyncEngineArgs` fields
        (e.g. tensor_parallel_size, max_model_len, gpu_memory_utilization, load_format)."""
        from vllm.config import StructuredOutputsConfig
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.lora.request import LoRARequest
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        # A process that has touched CUDA (a test asking torch for GPUs, a Ray actor) cannot
        # fork engine workers; spawned ones always work.
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        args = {k: v for k, v in spec.options.items() if k not in _PLACEMENT_OPTIONS}
        structured = {"backend": "xgrammar", "disable_any_whitespace": True, **args.pop("structured_outputs_config", {})}
        args["structured_outputs_config"] = StructuredOutputsConfig(**structured)
        args.setdefault("disable_log_stats", True)
        model_id, lora_request = spec.model, None
        with ExitStack() as resources:
            if spec.adapter:
                # vLLM reads the adapter when a request first names it (and again if evicted).
                adapter = resources.enter_context(local_adapter(spec.adapter))
                rank = adapter_rank(adapter)
                args.setdefault("enable_lora", True)
                args.setdefault("max_lora_rank", next((r for r in _LORA_RANKS if r >= rank), rank))
                lora_request = LoRARequest(lora_name=adapter.name, lora_int_id=next(_lora_ids), lora_path=str(adapter))
                model_id = f"{spec.model}+{adapter.name}"
            try:
                engine_args = AsyncEngineArgs(model=model_source(spec.model), **args)
            except TypeError as exc:
                raise ValueError(f"model options: not an AsyncEngineArgs field: {exc}") from None
            # vLLM sizes its batches by usage context: the default engine context gets 128
            # sequences and 2,048 tokens per step, the offline `LLM` class 1,024 and 16,384 on
            # a large GPU. The factory is offline batch work: ask for the latter.
            engine = AsyncLLM.from_engine_args(engine_args, usage_context=UsageContext.LLM_CLASS)
            return cls(
                engine,
                model_id=model_id,
                lora_request=lora_request,
                log_stats=not args["disable_log_stats"],
                resources=resources.pop_all(),
            )

    async def complete(self, requests: list[ChatRequest]) -> list[Completion]:
        self._start_stats()
        return list(await asyncio.gather(*(self._complete_one(r) for r in requests)))

    def complete_each(self, requests: list[ChatRequest]) -> list[asyncio.Future[Completion]]:
        self._start_stats()
        return [asyncio.ensure_future(self._complete_one(r)) for r in requests]

    def _start_stats(self) -> None:
        """On the engine's loop, with its first requests: log its stats every `STATS_INTERVAL_S`."""
        if self.log_stats and self._stats_task is None:
            self._stats_task = asyncio.ensure_future(self._log_stats_forever())

    async def _log_stats_forever(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL_S)
            await self.engine.do_log_stats()

    async def _complete_one(self, request: ChatRequest) -> Completion:
        from vllm.inputs import TokensPrompt

        try:
            prompt_ids = self._prompt_ids(request)
            # The renderer checks the prompt against max_model_len and shapes it for the engine.
            (prompt,) = await self.engine.renderer.render_cmpl_async([TokensPrompt(prompt_token_ids=prompt_ids)])
            final = None
            stream = self.engine.generate(
                prompt,
                self._sampling(request),
                request_id=uuid.uuid4().hex,
                lora_request=self.lora_request,
            )
            async for output in stream:
                final = output
            if final is None or not final.outputs:
                return Completion(model_id=self.model_id, error="engine returned no output")
            out = final.outputs[0]
            return Completion(
                text=out.text,
                prompt_tokens=len(final.prompt_token_ids or prompt_ids),
                completion_tokens=len(out.token_ids),
                finish_reason="length" if out.finish_reason == "length" else "stop",
                model_id=self.model_id,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one failed request fails its own completion only
            cause = exc.__cause__ or exc
            return Completion(model_id=self.model_id, error=f"vllm: {type(cause).__name__}: {cause}")

    def _prompt_ids(self, request: ChatRequest) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            [m.model_dump() for m in request.messages], tokenize=False, add_generation_prompt=True
        )
        # The template already holds every special token the model expects.
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    @staticmethod
    def _sampling(request: ChatRequest) -> Any:
        from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

        s = request.sampling
        return SamplingParams(
            temperature=s.temperature,
            top_p=s.top_p,
            max_tokens=s.max_tokens,
            seed=s.seed,
            ignore_eos=s.ignore_eos,
            structured_outputs=(
                StructuredOutputsParams(json=for_vllm(request.json_schema)) if request.json_schema is not None else None
            ),
            output_kind=RequestOutputKind.FINAL_ONLY,
        )

    async def aclose(self) -> None:
        if self._stats_task is not None:
            self._stats_task.cancel()
        self.engine.shutdown()
        self._resources.close()
