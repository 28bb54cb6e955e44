"""A responder whose every call raises: an engine that has broken (tests of the engine pool)."""

from __future__ import annotations

from autosafe_core.llm.base import ChatRequest


def respond(request: ChatRequest) -> str:
    raise RuntimeError("engine broke")
