"""The one interface every model backend implements: a batch of chat requests in,
completions with token counts out.

Like vLLM's `LLM.generate`, the surface is tiny; batching, queues, HTTP and grammars
stay inside the backends. A backend never raises for one bad request: the failure
goes into that request's `Completion.error`, so one broken call cannot sink a shard.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from abc import ABC, abstractmethod
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema


class Message(BaseModel):
    model_config = ConfigDict(frozen=True)
    role: Literal["system", "user", "assistant", "tool"]
    content: str


class SamplingParams(BaseModel):
    model_config = ConfigDict(frozen=True)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(256, ge=1)
    seed: int | None = None
    ignore_eos: bool = Field(False, description="Benchmark mode: always generate max_tokens.")


def _schema_as_given(value: Any) -> dict[str, Any] | None:
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"json_schema must be a JSON object, got {type(value).__name__}")
    return value


JsonSchema = Annotated[
    dict[str, Any] | None, PlainValidator(_schema_as_given), WithJsonSchema({"type": ["object", "null"]})
]
"""A decoding schema, kept as the very object given: roles reuse one schema per toolbox,
and a copy per call would cost a deep walk of it and hide the sharing from the wire."""


class ChatRequest(BaseModel):
    """One chat call; `json_schema` asks the backend to constrain decoding to it."""

    model_config = ConfigDict(frozen=True)
    messages: tuple[Message, ...]
    sampling: SamplingParams = SamplingParams()
    json_schema: JsonSchema = None

    def cache_key(self, model_id: str) -> str:
        """Content address of (model id, messages, sampling, schema)."""
        blob = json.dumps(
            {"model": model_id, "request": self.model_dump(mode="json")},
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(blob.encode()).hexdigest()


class Completion(BaseModel):
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    model_id: str = ""
    cached: bool = False
    error: str | None = Field(None, description="Why the call failed; text is then empty.")

    @property
    def ok(self) -> bool:
        return self.error is None


class ChatModel(ABC):
    """An LLM engine behind one async batch call."""

    model_id: str
    streams: bool = False
    """Whether requests of one batch finish at different times (`complete_each`): then the engine
    pool streams each back as it finishes; otherwise one reply per batch costs less."""

    @abstractmethod
    async def complete(self, requests: list[ChatRequest]) -> list[Completion]:
        """One completion per request, in order; failures in `Completion.error`."""

    def complete_each(self, requests: list[ChatRequest]) -> list[asyncio.Future[Completion]]:
        """One future per request, each done when its own completion is (the engine pool streams
        them back as they finish). Cancelling one withdraws its request where the engine can
        (vLLM aborts it, the transformers decode loop drops its row); here, by default, they
        all finish with one `complete` call, which is cancelled once every one of them is."""
        whole = asyncio.ensure_future(self.complete(requests))
        loop = asyncio.get_running_loop()
        each: list[asyncio.Future[Completion]] = [loop.create_future() for _ in requests]

        def settle(done: asyncio.Future[list[Completion]]) -> None:
            waiting = [(i, f) for i, f in enumerate(each) if not f.done()]
            if done.cancelled():
                for _, f in waiting:
                    f.cancel()
            elif done.exception() is not None:
                for _, f in waiting:
                    f.set_exception(done.exception())
            else:
                completions = done.result()
                for i, f in waiting:
                    f.set_result(completions[i])

        def withdraw(_: asyncio.Future[Completion]) -> None:
            if not whole.done() and all(f.cancelled() for f in each):
                whole.cancel()

        whole.add_done_callback(settle)
        for f in each:
            f.add_done_callback(withdraw)
        return each

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release engines, threads and connections."""
