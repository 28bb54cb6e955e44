"""A deterministic model double for unit tests and overhead benchmarks: never delivered.

It answers each request with a function of the request (a `responder`), so tests can
script any output, malformed ones included, and it records the calls and the peak
number in flight, which is how the benchmarks see the concurrency a stage reached.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import lru_cache

from autosafe_core.llm.base import ChatModel, ChatRequest, Completion

Responder = Callable[[ChatRequest], str | Completion]


class ScriptedModel(ChatModel):
    """Answers with `responder(request)`; counts calls and peak concurrency."""

    def __init__(
        self,
        responder: Responder,
        model_id: str = "scripted",
        delay_s: float = 0.0,
        keep_calls: bool = True,
        delays: dict[str, float] | None = None,
    ):
        """keep_calls: keep every request in `calls` (tests inspect them; benchmarks turn it off).
        delays: a call waits `delays[key]` seconds (the longest that applies, else `delay_s`) when
        its last message contains `key`: a slow request beside fast ones, as a real engine has."""
        self.model_id = model_id
        self._responder = responder
        self._delay_s = delay_s
        self._delays = dict(delays or {})
        self.streams = bool(self._delays)
        self._keep_calls = keep_calls
        self.calls: list[ChatRequest] = []
        self.call_count = 0
        self.in_flight = 0
        self.peak_in_flight = 0

    async def complete(self, requests: list[ChatRequest]) -> list[Completion]:
        self.call_count += len(requests)
        if self._keep_calls:
            self.calls.extend(requests)
        self.in_flight += len(requests)
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            # Yield even when instant, so concurrent callers interleave as with a real engine.
            await asyncio.sleep(max((self._delay_of(r) for r in requests), default=self._delay_s))
            return [self._answer(r) for r in requests]
        finally:
            self.in_flight -= len(requests)

    def complete_each(self, requests: list[ChatRequest]) -> list[asyncio.Future[Completion]]:
        if not self._delays:
            return super().complete_each(requests)
        # Requests of different delays finish at different times, as on a real engine.
        return [asyncio.ensure_future(self._one(r)) for r in requests]

    async def _one(self, request: ChatRequest) -> Completion:
        (completion,) = await self.complete([request])
        return completion

    def _delay_of(self, request: ChatRequest) -> float:
        if not self._delays or not request.messages:
            return self._delay_s
        last = request.messages[-1].content
        return max((s for key, s in self._delays.items() if key in last), default=self._delay_s)

    def _answer(self, request: ChatRequest) -> Completion:
        out = self._responder(request)
        if isinstance(out, Completion):
            return out.model_copy(update={"model_id": out.model_id or self.model_id})
        prompt_tokens = sum(_words(m.content) for m in request.messages)
        return Completion(
            text=out,
            prompt_tokens=prompt_tokens,
            completion_tokens=max(1, len(out.split())),
            model_id=self.model_id,
        )


@lru_cache(maxsize=4096)
def _words(text: str) -> int:
    """Whitespace-separated words of `text`: the double's token count. A rollout sends the same
    system prompt at every step, so counts are kept per distinct text."""
    return len(text.split())
