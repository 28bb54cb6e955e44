"""A real OpenAI-compatible chat server on loopback, for tests: scripted answers, injected faults.

FastAPI served by uvicorn in a background thread, on a free port of 127.0.0.1.
`POST /v1/chat/completions` answers in OpenAI's response shape with the content a
`responder` (a function of the request JSON) returns, unless the call is chosen for a
fault:

- `http_500`: an OpenAI-style error body with status 500;
- `timeout`: the response is held (asyncio.sleep-style waiting on the server, the
  behaviour under test) until the client gives up or `hold_s` passes;
- `cut`: the connection closes mid-response, after the status line;
- `truncated`: a 200 whose content is the responder's answer cut in half.

Which calls fault is a function of (seed, arrival number) only, so a run is repeatable;
`faults_at` pins faults to given arrival numbers. The server records every request
body, the Authorization headers, the faults it injected and the peak number of
requests in flight. It knows nothing about the client under test.

    with openai_server(responder, fault_rate=0.2, seed=0) as server:
        server.base_url, server.requests, server.faults_injected
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

Fault = Literal["http_500", "timeout", "cut", "truncated"]
FAULTS: tuple[Fault, ...] = ("http_500", "timeout", "cut", "truncated")


@dataclass(frozen=True)
class Reply:
    """A scripted answer; `status` other than 200 sends an OpenAI-style error with `content` as message."""

    content: str = ""
    status: int = 200
    finish_reason: str = "stop"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


Responder = Callable[[dict[str, Any]], "str | Reply"]


def echo_json(body: dict[str, Any]) -> str:
    """The default responder: a JSON object echoing the last message."""
    return json.dumps({"echo": body["messages"][-1]["content"]})


class ModelServer:
    """The app and what it observed; `base_url` ends in /v1, as OpenAI clients expect."""

    def __init__(
        self,
        responder: Responder,
        *,
        fault_rate: float,
        faults: Collection[Fault],
        seed: int,
        faults_at: Mapping[int, Fault],
        delay_s: float,
        hold_s: float,
        held: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be within [0, 1], got {fault_rate}")
        unknown = set(faults) - set(FAULTS) | set(faults_at.values()) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {list(FAULTS)}")
        self._responder = responder
        self._fault_rate = fault_rate
        self._faults = tuple(faults)
        self._seed = seed
        self._faults_at = dict(faults_at)
        self._delay_s = delay_s
        self._hold_s = hold_s
        self._held = held
        self._release = threading.Event()
        self.base_url = ""
        self.requests: list[dict[str, Any]] = []
        self.authorizations: list[str | None] = []
        self.faults_injected: Counter[str] = Counter()
        self.in_flight = 0
        self.peak_in_flight = 0
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self._chat)

    def release(self) -> None:
        """Let the calls that `held` holds answer."""
        self._release.set()

    def fault_for(self, index: int) -> Fault | None:
        """The fault for the call that arrives `index`-th (from 0), or None."""
        if index in self._faults_at:
            return self._faults_at[index]
        if not self._faults:
            return None
        # A generator per call, seeded by (seed, index): the same calls fault whatever the timing.
        rng = random.Random(f"{self._seed}:{index}")
        return rng.choice(self._faults) if rng.random() < self._fault_rate else None

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        index = len(self.requests)
        self.requests.append(body)
        self.authorizations.append(request.headers.get("authorization"))
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            fault = self.fault_for(index)
            if fault is not None:
                self.faults_injected[fault] += 1
            if fault == "http_500":
                return _error(500, "injected server error")
            if fault == "cut":
                return _CutResponse()
            if fault == "timeout":
                await _hold_until_disconnect(request, self._hold_s)
            if self._delay_s:
                await asyncio.sleep(self._delay_s)
            if self._held is not None and self._held(body):
                await asyncio.to_thread(self._release.wait, self._hold_s)
            reply = self._responder(body)
            reply = reply if isinstance(reply, Reply) else Reply(content=reply)
            if reply.status != 200:
                return _error(reply.status, reply.content)
            content = reply.content[: len(reply.content) // 2] if fault == "truncated" else reply.content
            return JSONResponse(_completion_body(body, reply, content, index))
        finally:
            self.in_flight -= 1


def _completion_body(body: dict[str, Any], reply: Reply, content: str, index: int) -> dict[str, Any]:
    prompt_words = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    prompt_tokens = reply.prompt_tokens if reply.prompt_tokens is not None else prompt_words
    completion_tokens = (
        reply.completion_tokens if reply.completion_tokens is not None else max(1, len(content.split()))
    )
    return {
        "id": f"chatcmpl-{index}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", ""),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": reply.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _error(status: int, message: str) -> JSONResponse:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


async def _hold_until_disconnect(request: Request, hold_s: float) -> None:
    """Wait until the client hangs up (its timeout), at most `hold_s`."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    try:
        await asyncio.wait_for(disconnected(), timeout=hold_s)
    except TimeoutError:
        pass


class _CutResponse(Response):
    """Promises a body, sends the status line and a fragment, then stops: uvicorn closes the socket."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"id": "chatcmpl-cut", "cho', "more_body": True})


class _Server(uvicorn.Server):
    """uvicorn's server with an event set once it listens, so callers wait without polling."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets=sockets)
        finally:
            self.ready.set()


@contextmanager
def openai_server(
    responder: Responder = echo_json,
    *,
    fault_rate: float = 0.0,
    faults: Collection[Fault] = FAULTS,
    seed: int = 0,
    faults_at: Mapping[int, Fault] | None = None,
    delay_s: float = 0.0,
    hold_s: float = 30.0,
    held: Callable[[dict[str, Any]], bool] | None = None,
    startup_timeout_s: float = 20.0,
) -> Iterator[ModelServer]:
    """A started server for the duration of the block; stopped, with its thread joined, after.

    fault_rate: share of calls that fault, each with a kind drawn from `faults`.
    faults_at: arrival number -> fault, overriding the draw (e.g. {0: "timeout"}).
    delay_s: how long every answer takes (a slow model), for concurrency tests.
    hold_s: the longest a `timeout` fault holds a response when the client does not hang up.
    held: calls whose body it matches wait for `server.release()` (at most hold_s) before answering.
    """
    server = ModelServer(
        responder,
        fault_rate=fault_rate,
        faults=faults,
        seed=seed,
        faults_at=faults_at or {},
        delay_s=delay_s,
        hold_s=hold_s,
        held=held,
    )
    # Bound here, handed to uvicorn: the port is ours before the thread starts, no race for it.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    host, port = sock.getsockname()
    config = uvicorn.Config(
        server.app,
        http="h11",
        ws="none",
        lifespan="off",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=2,
    )
    uv = _Server(config)

    def serve() -> None:
        try:
            uv.run(sockets=[sock])
        finally:
            uv.ready.set()

    thread = threading.Thread(target=serve, name=f"openai-server-{port}", daemon=True)
    thread.start()
    try:
        if not uv.ready.wait(timeout=startup_timeout_s) or not uv.started:
            raise RuntimeError(f"test model server on {host}:{port} did not start")
        server.base_url = f"http://{host}:{port}/v1"
        yield server
    finally:
        uv.should_exit = True
        thread.join(timeout=startup_timeout_s)
        sock.close()
