"""The OpenAI-compatible backend against a real HTTP server on loopback.

What goes on the wire (schema, sampling, key), how many requests are in flight,
which failures are retried and which are not, and that every failure ends as a
`Completion.error` with the key masked, never as an exception.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from autosafe_core.llm.base import ChatRequest, Message, SamplingParams
from autosafe_core.llm.openai_backend import PLACEHOLDER_KEY, OpenAIChatModel
from autosafe_core.llm.registry import ModelSpec
from tests.support.openai_server import FAULTS, Reply, openai_server

KEY_ENV = "AUTOSAFE_TEST_OPENAI_KEY"
SECRET = "sk-test-4f9c2e7a1b8d6350"
SCHEMA = {
    "title": "Verdict",
    "type": "object",
    "properties": {"echo": {"type": "string"}},
    "required": ["echo"],
}


def model_for(base_url: str, **overrides) -> OpenAIChatModel:
    """A backend built from a spec, as the factory builds it, with test-sized timeouts and backoff."""
    fields = {
        "backend": "openai",
        "model": "served-model",
        "base_url": base_url,
        "api_key_env": KEY_ENV,
        "timeout_s": 1.0,
        "max_retries": 4,
        "options": {"backoff_s": 0.01, "max_backoff_s": 0.05},
    } | overrides
    return OpenAIChatModel.from_spec(ModelSpec(**fields))


def ask(text: str, schema: dict | None = SCHEMA, **sampling) -> ChatRequest:
    return ChatRequest(
        messages=(Message(role="system", content="answer in JSON"), Message(role="user", content=text)),
        sampling=SamplingParams(**sampling),
        json_schema=schema,
    )


def fail_first(status: int, message: str = "try later"):
    """A responder that answers the first call with an HTTP error, then echoes."""
    calls = []

    def responder(body: dict) -> str | Reply:
        calls.append(body)
        if len(calls) == 1:
            return Reply(content=message, status=status)
        return json.dumps({"echo": body["messages"][-1]["content"]})

    return responder


async def test_a_schema_request_carries_the_schema_as_response_format():
    with openai_server() as server:
        model = model_for(server.base_url)
        (completion,) = await model.complete([ask("hello")])
        await model.aclose()
    assert completion.ok and json.loads(completion.text) == {"echo": "hello"}
    assert server.requests[0]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "Verdict", "schema": SCHEMA, "strict": False},
    }


async def test_a_free_text_request_carries_no_response_format():
    with openai_server(lambda body: "plain words") as server:
        model = model_for(server.base_url)
        (completion,) = await model.complete([ask("hello", schema=None)])
        await model.aclose()
    assert completion.text == "plain words"
    assert "response_format" not in server.requests[0]


async def test_sampling_parameters_go_on_the_wire_and_ignore_eos_goes_as_vllm_extra():
    with openai_server() as server:
        model = model_for(server.base_url)
        await model.complete([ask("a", temperature=0.7, top_p=0.9, max_tokens=33, seed=5, ignore_eos=True)])
        await model.complete([ask("b")])
        await model.aclose()
    sampled, default = server.requests
    sent = (sampled["temperature"], sampled["top_p"], sampled["max_tokens"], sampled["seed"])
    assert sent == (0.7, 0.9, 33, 5)
    assert sampled["ignore_eos"] is True
    assert "seed" not in default and "ignore_eos" not in default
    assert [m["role"] for m in sampled["messages"]] == ["system", "user"]


async def test_token_counts_and_finish_reason_come_from_the_response():
    reply = Reply(content='{"echo": "x"}', prompt_tokens=17, completion_tokens=4)
    with openai_server(lambda body: reply) as server:
        model = model_for(server.base_url)
        (completion,) = await model.complete([ask("x")])
        await model.aclose()
    assert (completion.prompt_tokens, completion.completion_tokens) == (17, 4)
    assert completion.finish_reason == "stop" and completion.model_id == "served-model"
    assert (model.stats.calls, model.stats.prompt_tokens, model.stats.completion_tokens) == (1, 17, 4)


async def test_a_batch_answers_in_order():
    with openai_server() as server:
        model = model_for(server.base_url)
        completions = await model.complete([ask(f"q{i}") for i in range(12)])
        await model.aclose()
    assert [json.loads(c.text)["echo"] for c in completions] == [f"q{i}" for i in range(12)]


async def test_each_request_of_a_batch_is_handed_back_when_its_own_call_ends():
    def slow(body: dict) -> bool:
        return body["messages"][-1]["content"] == "slow"

    with openai_server(held=slow) as server:
        model = model_for(server.base_url, timeout_s=30.0)
        assert model.streams  # so the engine pool streams a batch back, not waiting for its slowest
        held, fast = model.complete_each([ask("slow"), ask("fast")])
        assert json.loads((await fast).text) == {"echo": "fast"}
        assert not held.done()  # still held by the server: the fast one did not wait for it
        server.release()
        assert json.loads((await held).text) == {"echo": "slow"}
        await model.aclose()


async def test_requests_in_flight_never_exceed_max_concurrency():
    with openai_server(delay_s=0.1) as server:
        model = model_for(server.base_url, max_concurrency=3)
        completions = await model.complete([ask(f"q{i}") for i in range(15)])
        await model.aclose()
    assert all(c.ok for c in completions)
    assert server.peak_in_flight <= 3
    assert server.peak_in_flight > 1, "the batch should run concurrently, not one by one"


async def test_a_fifth_of_calls_failing_every_way_still_ends_with_every_completion_ok():
    with openai_server(fault_rate=0.2, seed=0, hold_s=5.0) as server:
        model = model_for(server.base_url, max_retries=8, timeout_s=0.5)
        completions = await model.complete([ask(f"q{i}") for i in range(50)])
        await model.aclose()
    assert all(c.ok for c in completions), [c.error for c in completions if not c.ok]
    assert [json.loads(c.text)["echo"] for c in completions] == [f"q{i}" for i in range(50)]
    assert set(server.faults_injected) == set(FAULTS)
    # Every attempt reaches the server; a slow answer may time out unplanned, so retries >= faults.
    assert len(server.requests) == 50 + model.stats.retries
    assert model.stats.retries >= server.faults_injected.total() > 0
    assert model.stats.errors == 0 and model.stats.calls == 50


@pytest.mark.parametrize("fault", FAULTS)
async def test_each_transient_fault_is_retried(fault):
    with openai_server(faults_at={0: fault}, hold_s=5.0) as server:
        model = model_for(server.base_url, timeout_s=0.5)
        (completion,) = await model.complete([ask("hello")])
        await model.aclose()
    assert completion.ok and json.loads(completion.text) == {"echo": "hello"}
    assert len(server.requests) == 2 and model.stats.retries == 1


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
async def test_retryable_http_statuses_are_retried(status):
    with openai_server(fail_first(status)) as server:
        model = model_for(server.base_url)
        (completion,) = await model.complete([ask("hello")])
        await model.aclose()
    assert completion.ok and len(server.requests) == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_client_errors_are_not_retried(status):
    with openai_server(fail_first(status, "bad request")) as server:
        model = model_for(server.base_url)
        (completion,) = await model.complete([ask("hello")])
        await model.aclose()
    assert not completion.ok and f"(HTTP {status})" in completion.error
    assert len(server.requests) == 1 and model.stats.retries == 0 and model.stats.errors == 1


async def test_a_server_that_always_fails_yields_an_error_after_max_retries_plus_one_attempts():
    with openai_server(fault_rate=1.0, faults=["http_500"]) as server:
        model = model_for(server.base_url, max_retries=3)
        (completion,) = await model.complete([ask("hello")])
        await model.aclose()
    assert not completion.ok and completion.text == ""
    assert completion.error.startswith("InternalServerError (HTTP 500): ")
    assert "\n" not in completion.error
    assert len(server.requests) == 4
    assert (model.stats.retries, model.stats.errors, model.stats.calls) == (3, 1, 1)


async def test_an_answer_that_stays_truncated_ends_as_an_error():
    with openai_server(fault_rate=1.0, faults=["truncated"]) as server:
        model = model_for(server.base_url, max_retries=2)
        (completion,) = await model.complete([ask("hello")])
        await model.aclose()
    assert completion.error.startswith("IncompleteAnswer: ")
    assert len(server.requests) == 3


async def test_an_answer_cut_by_max_tokens_is_returned_as_it_is_without_retrying():
    with openai_server(lambda body: Reply(content='{"echo": "hel', finish_reason="length")) as server:
        model = model_for(server.base_url)
        (completion,) = await model.complete([ask("hello")])
        await model.aclose()
    assert completion.ok and completion.text == '{"echo": "hel' and completion.finish_reason == "length"
    assert len(server.requests) == 1


async def test_free_text_is_not_checked_for_json():
    with openai_server(lambda body: "not json {") as server:
        model = model_for(server.base_url)
        (completion,) = await model.complete([ask("hello", schema=None)])
        await model.aclose()
    assert completion.ok and len(server.requests) == 1


def test_one_model_serves_successive_event_loops():
    """A notebook or a script may run each batch under its own asyncio.run with one model."""

    async def one_batch(model: OpenAIChatModel, text: str):
        try:
            return await model.complete([ask(text)])
        finally:
            await model.aclose()

    with openai_server() as server:
        model = model_for(server.base_url)
        first = asyncio.run(one_batch(model, "one"))
        second = asyncio.run(one_batch(model, "two"))
    assert first[0].ok and second[0].ok, (first[0].error, second[0].error)


async def test_an_unreachable_server_yields_a_connection_error():
    with openai_server() as server:
        base_url = server.base_url
    model = model_for(base_url, max_retries=1)
    (completion,) = await model.complete([ask("hello")])
    await model.aclose()
    assert completion.error.startswith("APIConnectionError: ")


async def test_the_key_is_read_from_the_named_variable_and_sent_as_bearer_token(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    with openai_server() as server:
        model = model_for(server.base_url)
        await model.complete([ask("hello")])
        await model.aclose()
    assert server.authorizations == [f"Bearer {SECRET}"]


async def test_an_unset_key_variable_sends_a_placeholder_for_local_servers(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with openai_server() as server:
        model = model_for(server.base_url)
        (completion,) = await model.complete([ask("hello")])
        await model.aclose()
    assert completion.ok and server.authorizations == [f"Bearer {PLACEHOLDER_KEY}"]


async def test_the_key_never_reaches_errors_or_logs_even_when_the_server_echoes_it(monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, SECRET)
    caplog.set_level(logging.DEBUG)
    for name in ("openai", "httpx", "httpx2", "httpcore", "httpcore2", "autosafe_core"):
        caplog.set_level(logging.DEBUG, logger=name)
    echo_key = f"Incorrect API key provided: {SECRET}"
    with (
        openai_server(fail_first(503, echo_key)) as retried,
        openai_server(fail_first(401, echo_key)) as refused,
    ):
        for server in (retried, refused):
            model = model_for(server.base_url)
            (completion,) = await model.complete([ask("hello")])
            await model.aclose()
            assert SECRET not in repr(completion) and SECRET not in repr(model)
    assert not completion.ok and "Incorrect API key provided: ***" in completion.error
    assert "retrying" in caplog.text, "the retry should have been logged"
    assert SECRET not in caplog.text


def test_an_adapter_is_refused_with_a_pointer_to_serving_it_by_name():
    with pytest.raises(ValueError, match="serve the adapter under its own model name"):
        model_for("http://127.0.0.1:1/v1", adapter="adapters/run-1")


def test_an_unknown_option_is_refused_naming_it():
    with pytest.raises(ValueError, match="unknown option 'temperature'"):
        model_for("http://127.0.0.1:1/v1", options={"temperature": 0.3})
