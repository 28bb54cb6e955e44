"""A transformers model behind the `ChatModel` interface, batching concurrent callers.

Many coroutines call `complete` at once (one rollout each); a single worker thread
drains their requests from a queue and decodes up to `max_batch_size` of them as one
left-padded batch (`decode.decode`: a row leaves the batch the step it finishes), so
concurrency buys throughput as on a serving engine.
Every request keeps its own decoding policy inside the shared batch: its JSON-schema
grammar (`grammar.GrammarMask`), its temperature, top-p and seed (`RowSampler`, one
random generator per row), its EOS handling and its token budget. Any
two requests can therefore share a batch, and a seeded request samples the same
tokens whatever it is batched with (up to floating-point differences from padding).

This module knows nothing of roles or prompts' meaning; it turns messages into text
with the tokenizer's chat template and counts tokens.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from transformers import LogitsProcessor

from autosafe_core.llm.base import ChatModel, ChatRequest, Completion
from autosafe_core.llm.decode import decode, left_padded
from autosafe_core.llm.grammar import GrammarMask, SchemaGrammars
from autosafe_core.llm.local_weights import local_adapter, model_source
from autosafe_core.llm.registry import ModelSpec


class TransformersOptions(BaseModel):
    """`ModelSpec.options` understood by this backend."""

    model_config = ConfigDict(extra="forbid")
    device: str = Field("auto", description="torch device; auto picks cuda when present, else cpu.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: float32 on cpu, bfloat16 on cuda."
    )
    max_batch_size: int = Field(16, ge=1, description="Requests decoded together in one generate call.")
    batch_wait_ms: float = Field(
        5.0, ge=0, description="How long a lone request waits for company before decoding starts."
    )
    num_gpus: float | None = Field(None, ge=0, description="Read by the engine pool for placement; unused here.")


@dataclass
class _Job:
    request: ChatRequest
    future: asyncio.Future[Completion]
    loop: asyncio.AbstractEventLoop


@dataclass
class _Row:
    """One request made ready for a batch: its prompt tokens and its grammar."""

    job: _Job
    prompt_ids: list[int]
    grammar: Any = None
    error: str | None = None
    completion: Completion | None = None

    @property
    def budget(self) -> int:
        return self.job.request.sampling.max_tokens

    def result(self, model_id: str) -> Completion:
        if self.error is not None or self.completion is None:
            return Completion(model_id=model_id, error=self.error or "no completion produced")
        return self.completion


_STOP = object()


class TransformersChatModel(ChatModel):
    """A causal LM and its tokenizer, serving batched chat completions from one thread."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        model_id: str,
        max_batch_size: int = 16,
        batch_wait_ms: float = 5.0,
    ):
        self.model_id = model_id
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_ms / 1000.0
        self.batches_run = 0
        self.rows_run = 0
        self.withdrawn = 0  # requests cancelled by their callers before or while decoding
        self.stop_ids = _stop_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        self.grammars = SchemaGrammars(tokenizer, model.config.vocab_size, self.stop_ids)
        self.context = int(getattr(model.config, "max_position_embeddings", None) or 2**31)
        self._queue: queue.Queue[Any] = queue.Queue()
        self._closed = False
        self._worker = threading.Thread(target=self._serve, name=f"generate[{model_id}]", daemon=True)
        self._worker.start()

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> TransformersChatModel:
        """Load `spec.model` (the embedded default, or a local directory) and its adapter."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            options = TransformersOptions.model_validate(spec.options)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ValueError(f"model options.{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
        source = model_source(spec.model)
        device = options.device if options.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = options.dtype if options.dtype != "auto" else ("float32" if device == "cpu" else "bfloat16")
        try:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, dtype)).to(device)
            tokenizer = AutoTokenizer.from_pretrained(source)
        except OSError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"model {spec.model!r}: cannot load: {first}") from None
        model_id = spec.model
        if spec.adapter:
            from peft import PeftModel

            with local_adapter(spec.adapter) as adapter:
                # Merged once at load: decoding then costs what the base model costs.
                model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
                model_id = f"{spec.model}+{adapter.name}"
        return cls(
            model,
            tokenizer,
            model_id=model_id,
            max_batch_size=options.max_batch_size,
            batch_wait_ms=options.batch_wait_ms,
        )

    async def complete(self, requests: list[ChatRequest]) -> list[Completion]:
        return list(await asyncio.gather(*self.complete_each(requests)))

    def complete_each(self, requests: list[ChatRequest]) -> list[asyncio.Future[Completion]]:
        """One future per request; cancelling one withdraws its request: dropped if not yet
        decoding, else its row leaves the batch at the next step."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Completion]] = []
        for request in requests:
            future: asyncio.Future[Completion] = loop.create_future()
            if self._closed:
                future.set_result(self._failed("model is closed"))
            else:
                self._queue.put(_Job(request, future, loop))
            futures.append(future)
        return futures

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        await asyncio.to_thread(self._worker.join)

    # -- the worker thread -------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                break
            jobs, stop = self._gather(first)
            wanted = [job for job in jobs if not job.future.cancelled()]
            self.withdrawn += len(jobs) - len(wanted)
            jobs = wanted
            try:
                completions = self._run_batch(jobs) if jobs else []
            except Exception as exc:  # a bug here must not leave callers waiting forever
                completions = [self._failed(f"batch failed: {type(exc).__name__}: {exc}") for _ in jobs]
            for job, completion in zip(jobs, completions, strict=True):
                _resolve(job, completion)
            if stop:
                break
        # Anything queued behind the stop signal is answered, never left hanging.
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not _STOP:
                _resolve(job, self._failed("model is closed"))

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        """`first` and what else arrives within the batch window, up to max_batch_size."""
        jobs = [first]
        deadline = time.monotonic() + self.batch_wait_s
        while len(jobs) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                return jobs, True
            jobs.append(job)
        return jobs, False

    def _run_batch(self, jobs: list[_Job]) -> list[Completion]:
        rows = [self._prepare(job) for job in jobs]
        ready = [row for row in rows if row.error is None]
        if ready:
            try:
                self._generate(ready)
            except Exception as exc:  # one failed batch fails its rows, never the worker
                for row in ready:
                    row.error = f"generate failed: {type(exc).__name__}: {exc}"
        return [row.result(self.model_id) for row in rows]

    def _prepare(self, job: _Job) -> _Row:
        request = job.request
        try:
            text = self.tokenizer.apply_chat_template(
                [m.model_dump() for m in request.messages], tokenize=False, add_generation_prompt=True
            )
            # The template already holds every special token the model expects.
            prompt_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        except Exception as exc:
            return _Row(job, [], error=f"chat template failed: {type(exc).__name__}: {exc}")
        row = _Row(job, prompt_ids)
        if len(prompt_ids) + row.budget > self.context:
            row.error = (
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({row.budget}) "
                f"exceeds the model's context of {self.context} tokens"
            )
        elif request.json_schema is not None:
            try:
                row.grammar = self.grammars.compile(request.json_schema)
            except Exception as exc:
                row.error = f"json_schema not supported by the grammar compiler: {exc}"
        return row

    def _generate(self, rows: list[_Row]) -> None:
        input_ids, attention, budgets, mask, sampler = self.batch_inputs(rows)
        dropped: set[int] = set()

        def wanted(i: int) -> bool:
            # Read from this worker thread: a future's state is one attribute, set on its loop.
            if rows[i].job.future.cancelled():
                dropped.add(i)
                return False
            return True

        generated = decode(
            self.model, input_ids, attention, budgets, self.stop_ids, self.pad_id, [mask, sampler], wanted
        )
        self.batches_run += 1
        self.rows_run += len(rows)
        self.withdrawn += len(dropped)
        stops = set(self.stop_ids)
        for i, row in enumerate(rows):
            tokens = generated[i]
            stopped = bool(tokens) and tokens[-1] in stops
            row.completion = Completion(
                text=self.tokenizer.decode(tokens[:-1] if stopped else tokens, skip_special_tokens=True),
                prompt_tokens=len(row.prompt_ids),
                completion_tokens=len(tokens),
                finish_reason="stop" if stopped else "length",
                model_id=self.model_id,
            )
            if mask.rejected[i]:
                row.error = "grammar rejected a generated token"

    def batch_inputs(self, rows: list[_Row]) -> tuple[torch.Tensor, torch.Tensor, list[int], GrammarMask, RowSampler]:
        """Prompts (left-padded), attention mask, budgets and the two logits processors of one batch."""
        input_ids, attention = left_padded([row.prompt_ids for row in rows], self.pad_id)
        budgets = [row.budget for row in rows]
        mask = GrammarMask([row.grammar for row in rows], budgets, self.model.config.vocab_size)
        sampler = RowSampler([row.job.request for row in rows], self.stop_ids, [row.grammar is not None for row in rows])
        return input_ids, attention, budgets, mask, sampler

    def _failed(self, reason: str) -> Completion:
        return Completion(model_id=self.model_id, error=reason)


class RowSampler(LogitsProcessor):
    """Chooses each row's next token by that row's own policy, then makes it the argmax.

    Greedy rows pass through (generate takes the argmax). Sampled rows get their
    temperature, top-p and a private `torch.Generator` seeded from the request, and
    their logits become one-hot on the drawn token. Rows asking for `ignore_eos` and
    carrying no grammar (a grammar decides its own end) never see a stop token.
    """

    def __init__(self, requests: list[ChatRequest], stop_ids: list[int], constrained: list[bool]):
        self._params = [r.sampling for r in requests]
        self._stop_ids = stop_ids
        self._no_eos = [p.ignore_eos and not c for p, c in zip(self._params, constrained, strict=True)]
        self._generators: list[torch.Generator | None] = []
        for p in self._params:
            if p.temperature > 0:
                g = torch.Generator()
                if p.seed is None:
                    g.seed()
                else:
                    g.manual_seed(p.seed)
                self._generators.append(g)
            else:
                self._generators.append(None)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for i, params in enumerate(self._params):
            if self._no_eos[i]:
                scores[i, self._stop_ids] = float("-inf")
            generator = self._generators[i]
            if generator is None:
                continue
            probs = torch.softmax(scores[i].float().cpu() / params.temperature, dim=-1)
            if params.top_p < 1.0:
                probs = _top_p(probs, params.top_p)
            token = int(torch.multinomial(probs, 1, generator=generator))
            scores[i] = float("-inf")
            scores[i, token] = 0.0
        return scores


def _top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches `top_p`."""
    sorted_probs, order = torch.sort(probs, descending=True)
    before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    sorted_probs[before >= top_p] = 0.0
    kept = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return kept / kept.sum()


def _stop_ids(model: Any, tokenizer: Any) -> list[int]:
    """Token ids that end a reply: the generation config's EOS, else the tokenizer's."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    if not ids:
        raise ValueError(f"{model.config.name_or_path}: neither generation config nor tokenizer names an EOS token")
    return ids


def _resolve(job: _Job, completion: Completion) -> None:
    """Hand `completion` to the caller's event loop, if it still waits."""

    def settle() -> None:
        if not job.future.done():
            job.future.set_result(completion)

    try:
        job.loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the caller's loop has closed: nobody is waiting
        pass
