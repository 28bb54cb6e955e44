"""A model behind any OpenAI-compatible chat endpoint: `vllm serve`, hosted APIs.

The network edge of the llm package. It sends each request of a batch concurrently,
at most `max_concurrency` in flight; retries what is transient (HTTP 5xx and 429,
timeouts, cut connections, and a 200 whose JSON answer stops short) with jittered
exponential backoff; and turns what still fails into `Completion.error`, so
`complete()` never raises. The API key is read once, from the environment, and goes
only into the client's Authorization header: errors and logs have it masked.

It knows nothing about roles, prompts or caching; it does not repair answers (the
roles do), and an answer cut by `max_tokens` (finish_reason "length") is returned as
it is, because asking again would spend the same budget on the same cut.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

import openai
from openai import AsyncOpenAI
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from autosafe_core.llm.base import ChatModel, ChatRequest, Completion
from autosafe_core.llm.schema_compat import for_vllm
from autosafe_core.llm.registry import ModelSpec

log = logging.getLogger(__name__)

PLACEHOLDER_KEY = "EMPTY"
"""Sent when the key variable is unset: local servers (vLLM) check no key, yet the client wants one."""

_OPTIONS = {"backoff_s": float, "max_backoff_s": float}
"""`ModelSpec.options` this backend understands."""


@dataclass
class CallStats:
    """What the backend did, for run manifests: requests answered, retries spent, failures left."""

    calls: int = 0
    retries: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class IncompleteAnswer(Exception):
    """A 200 whose content is not the complete JSON the request's schema asks for."""


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 429) or exc.status_code >= 500
    # APITimeoutError is an APIConnectionError; a 200 with a body of the wrong shape is transient too.
    return isinstance(exc, (openai.APIConnectionError, openai.APIResponseValidationError, IncompleteAnswer))


def _complete_json(text: str, schema: dict[str, Any]) -> bool:
    """Whether `text` parses as JSON of the schema's top-level type (validation is the roles' job)."""
    try:
        value = json.loads(text)
    except ValueError:
        return False
    expected = {"object": dict, "array": list}.get(schema.get("type", ""))
    return expected is None or isinstance(value, expected)


def _schema_name(schema: dict[str, Any]) -> str:
    """OpenAI wants a name of [a-zA-Z0-9_-]{1,64}; the schema's title when it has one."""
    name = re.sub(r"[^a-zA-Z0-9_-]", "_", str(schema.get("title", "")))[:64]
    return name or "output"


class OpenAIChatModel(ChatModel):
    """Chat completions from an OpenAI-compatible server, with retries and bounded concurrency."""

    streams = True

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 4,
        max_concurrency: int = 64,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
    ) -> None:
        """model: the name the server serves; base_url: None means OpenAI's own API.

        backoff_s, max_backoff_s: scale and cap of the jittered exponential wait between attempts.
        """
        self.model_id = model
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.max_concurrency = max_concurrency
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.stats = CallStats()
        self._api_key = api_key or PLACEHOLDER_KEY
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: AsyncOpenAI | None = None
        self._semaphore: asyncio.Semaphore | None = None

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> OpenAIChatModel:
        """The backend `spec` describes; the key is read now from the variable `spec.api_key_env`."""
        if spec.adapter is not None:
            raise ValueError(
                f"model {spec.model!r}: the openai backend cannot load adapter {spec.adapter!r}; "
                "serve the adapter under its own model name and put that name in `model`"
            )
        options: dict[str, Any] = {}
        for name, value in spec.options.items():
            if name not in _OPTIONS:
                raise ValueError(
                    f"model {spec.model!r}: unknown option {name!r} for the openai backend; "
                    f"known: {sorted(_OPTIONS)}"
                )
            options[name] = _OPTIONS[name](value)
        return cls(
            spec.model,
            base_url=spec.base_url,
            api_key=os.environ.get(spec.api_key_env),
            timeout_s=spec.timeout_s,
            max_retries=spec.max_retries,
            max_concurrency=spec.max_concurrency,
            **options,
        )

    def __repr__(self) -> str:
        return f"OpenAIChatModel(model={self.model_id!r}, base_url={self.base_url!r})"

    async def complete(self, requests: list[ChatRequest]) -> list[Completion]:
        return list(await asyncio.gather(*(self._complete_one(r) for r in requests)))

    def complete_each(self, requests: list[ChatRequest]) -> list[asyncio.Future[Completion]]:
        # Each request is its own HTTP call: each finishes on its own, and the engine pool
        # hands it back then, not when the batch's slowest call (or retry) is done.
        return [asyncio.ensure_future(self._complete_one(r)) for r in requests]

    async def aclose(self) -> None:
        if self._client is not None and self._loop is asyncio.get_running_loop():
            await self._client.close()
        self._client = self._semaphore = self._loop = None

    def _session(self) -> tuple[AsyncOpenAI, asyncio.Semaphore]:
        """The client and semaphore of the running event loop.

        Connections and semaphores belong to one loop; a caller that runs each batch under
        its own `asyncio.run` (a notebook, a script) gets a fresh pair instead of a
        "different loop" error, and should `aclose()` before each loop ends.
        """
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._client is None or self._semaphore is None:
            self._loop = loop
            self._client = AsyncOpenAI(
                api_key=self._api_key,
                base_url=self.base_url,
                timeout=self.timeout_s,
                max_retries=0,  # tenacity retries, so the counts and the backoff are ours
            )
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
        return self._client, self._semaphore

    async def _complete_one(self, request: ChatRequest) -> Completion:
        client, semaphore = self._session()
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=wait_random_exponential(multiplier=self.backoff_s, max=self.max_backoff_s),
            retry=retry_if_exception(_retryable),
            before_sleep=self._on_retry,
            reraise=True,
        )
        try:
            completion = await retrying(self._attempt, client, semaphore, request)
        except Exception as exc:  # noqa: BLE001 - one failed request must not sink the batch
            self.stats.errors += 1
            completion = Completion(
                error=self._describe(exc), finish_reason="error", model_id=self.model_id
            )
        self.stats.calls += 1
        return completion

    async def _attempt(
        self, client: AsyncOpenAI, semaphore: asyncio.Semaphore, request: ChatRequest
    ) -> Completion:
        # The slot is held for the HTTP call only, not across backoff waits.
        async with semaphore:
            response = await client.chat.completions.create(**self._arguments(request))
        if response.usage is not None:
            # Tokens of failed attempts were spent too.
            self.stats.prompt_tokens += response.usage.prompt_tokens
            self.stats.completion_tokens += response.usage.completion_tokens
        if not response.choices:
            raise IncompleteAnswer("response has no choices")
        choice = response.choices[0]
        text = choice.message.content or ""
        finish_reason = choice.finish_reason or "stop"
        schema = request.json_schema
        if schema is not None and finish_reason != "length" and not _complete_json(text, schema):
            raise IncompleteAnswer(
                f"finish_reason {finish_reason!r} but content is not complete JSON ({len(text)} chars)"
            )
        return Completion(
            text=text,
            prompt_tokens=response.usage.prompt_tokens if response.usage else 0,
            completion_tokens=response.usage.completion_tokens if response.usage else 0,
            finish_reason=finish_reason,
            model_id=self.model_id,
        )

    def _arguments(self, request: ChatRequest) -> dict[str, Any]:
        sampling = request.sampling
        arguments: dict[str, Any] = {
            "model": self.model_id,
            "messages": [m.model_dump() for m in request.messages],
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
        }
        if sampling.seed is not None:
            arguments["seed"] = sampling.seed
        if sampling.ignore_eos:
            # vLLM's extension; hosted APIs reject unknown fields, so it is sent only when asked for.
            arguments["extra_body"] = {"ignore_eos": True}
        if request.json_schema is not None:
            arguments["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": _schema_name(request.json_schema),
                    # vLLM's server refuses what its engine refuses; the roles validate replies in full.
                    "schema": for_vllm(request.json_schema),
                    "strict": False,
                },
            }
        return arguments

    def _on_retry(self, state: RetryCallState) -> None:
        self.stats.retries += 1
        exc = state.outcome.exception() if state.outcome is not None else None
        log.info(
            "%s: attempt %d failed (%s); retrying", self.model_id, state.attempt_number, self._describe(exc)
        )

    def _describe(self, exc: BaseException | None) -> str:
        """One line: the kind and the message, the key masked (some servers echo it back)."""
        if exc is None:
            return "unknown error"
        kind = type(exc).__name__
        if isinstance(exc, openai.APIStatusError):
            kind = f"{kind} (HTTP {exc.status_code})"
        message = " ".join(str(exc).split())
        if self._api_key != PLACEHOLDER_KEY:
            message = message.replace(self._api_key, "***")
        if len(message) > 300:
            message = message[:300] + "..."
        return f"{kind}: {message}" if message else kind
