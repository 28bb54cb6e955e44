"""Models by configuration: a spec names the backend, `build_model` makes it, and a
`cache_dir` puts the response cache in front without changing the model's identity.
"""

from __future__ import annotations

import json

from autosafe_core.llm.base import ChatRequest, Message
from autosafe_core.llm.cache import CachedChatModel
from autosafe_core.llm.openai_backend import OpenAIChatModel
from autosafe_core.llm.registry import ModelSpec, build_model
from autosafe_core.llm.scripted import ScriptedModel
from tests.support.openai_server import openai_server

RESPONDER = "tests.test_registry:shout"


def shout(request: ChatRequest) -> str:
    """The responder a scripted spec names."""
    return request.messages[-1].content.upper()


def hello() -> list[ChatRequest]:
    return [ChatRequest(messages=(Message(role="user", content="hello"),))]


async def test_a_scripted_spec_builds_the_named_responder():
    model = build_model(ModelSpec(backend="scripted", model=RESPONDER))
    (completion,) = await model.complete(hello())
    assert isinstance(model, ScriptedModel) and model.model_id == RESPONDER
    assert completion.text == "HELLO"


async def test_an_openai_spec_builds_a_client_of_the_served_endpoint(monkeypatch):
    monkeypatch.setenv("AUTOSAFE_TEST_REGISTRY_KEY", "sk-registry")
    with openai_server() as server:
        spec = ModelSpec(
            backend="openai",
            model="served-model",
            base_url=server.base_url,
            api_key_env="AUTOSAFE_TEST_REGISTRY_KEY",
            max_concurrency=7,
            max_retries=2,
            timeout_s=5.0,
        )
        model = build_model(spec)
        (completion,) = await model.complete(hello())
        await model.aclose()
    assert isinstance(model, OpenAIChatModel) and model.model_id == "served-model"
    assert (model.max_concurrency, model.max_retries, model.timeout_s) == (7, 2, 5.0)
    assert json.loads(completion.text) == {"echo": "hello"}
    assert server.requests[0]["model"] == "served-model"
    assert server.authorizations == ["Bearer sk-registry"]


async def test_a_cache_dir_wraps_the_model_in_the_cache(tmp_path):
    model = build_model(ModelSpec(backend="scripted", model=RESPONDER, cache_dir=tmp_path / "cache"))
    assert isinstance(model, CachedChatModel) and isinstance(model.inner, ScriptedModel)
    assert model.model_id == RESPONDER
    await model.complete(hello())
    await model.complete(hello())
    assert (model.hits, model.misses) == (1, 1) and len(model.inner.calls) == 1


async def test_an_openai_spec_with_a_cache_dir_asks_the_server_once(tmp_path):
    with openai_server() as server:
        spec = ModelSpec(backend="openai", model="served-model", base_url=server.base_url, cache_dir=tmp_path)
        model = build_model(spec)
        first = await model.complete(hello())
        again = await model.complete(hello())
        await model.aclose()
    assert isinstance(model, CachedChatModel) and isinstance(model.inner, OpenAIChatModel)
    assert len(server.requests) == 1 and again[0].cached and again[0].text == first[0].text


def test_no_cache_dir_means_no_cache():
    model = build_model(ModelSpec(backend="scripted", model=RESPONDER))
    assert not isinstance(model, CachedChatModel)
