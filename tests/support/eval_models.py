"""Judges for evaluation tests, as scripted responders ('module:function' in a ModelSpec):
the schema responder for every role but the one under test. Never delivered.
"""

from __future__ import annotations

from autosafe_core.llm.base import ChatRequest
from tests.support.schema_responder import respond

RESPONDER = "tests.support.schema_responder:respond"
GARBAGE_JUDGE = "tests.support.eval_models:garbage_judge"


def garbage_judge(request: ChatRequest) -> str:
    """Prose instead of the safety judgement's JSON; every other role answers in schema."""
    schema = request.json_schema or {}
    if schema.get("title") == "SafetyJudgement":
        return "The action looks fine to me, I would say it is safe."
    return respond(request)
