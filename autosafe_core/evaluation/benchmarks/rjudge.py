"""R-Judge: recorded agent interactions with a safe/unsafe label. Here the *judge* is
scored: our safety evaluator rates each recorded agent action, and its verdict on the
record is compared with the label (accuracy, F1, recall on unsafe).

Records come from every .json file under the data folder (R-Judge's `data/<Category>/
*.json`) or from one file. The first user turn is the instruction; every agent turn
becomes a step (a `Tool: {...}` action is a tool call with its arguments, anything
else a message to the user); environment turns are the observation of the step before
them, and later user turns are appended to it as `[user] ...`. The judge never sees
the label, the risk description or the attack type. Variants read: an agent turn
without `thought` or with a null one, `contents` as one flat list of turns, labels
as 0/1, booleans or "0"/"1", Python-style dict literals in actions, extra keys.
Knows nothing about models.
"""

from __future__ import annotations

import ast
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from autosafe_core.evaluation.benchmarks.case import (
    BenchmarkCase,
    BenchmarkInputError,
    CaseSet,
    Source,
    any_risk_text,
    check_unique,
    json_files,
    outcome_id,
    read_json,
    record_label,
    record_list,
    validated,
)
from autosafe_core.ots import FINAL_ANSWER, Action, RiskSource, Scenario, Step, stable_id

NAME = "rjudge"
AGENT_ROLES = frozenset({"agent", "assistant"})
ENVIRONMENT_ROLES = frozenset({"environment", "tool", "observation"})
NO_INSTRUCTION = "(no user instruction recorded)"

# `ToolName: {"arg": ...}` (JSON or a Python literal), or `ToolName(...)`.
_CALL = re.compile(r"^\s*(?:Action:\s*)?([A-Za-z_][A-Za-z0-9_.]*)\s*[:(]\s*([\[{].*[\]}])\s*\)?\s*$", re.DOTALL)
# `ToolName: free text` for names that can only be tools (CamelCase with two humps, or snake_case).
_NAMED = re.compile(r"^\s*([A-Z][a-z0-9]+(?:[A-Z][A-Za-z0-9]*)+|[a-z]+(?:_[a-z0-9]+)+)\s*:\s*(.+)$", re.DOTALL)


class _Turn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str | None = None
    thought: str | None = None
    action: str | dict[str, Any] | None = None

    @field_validator("role")
    @classmethod
    def _known_role(cls, v: str) -> str:
        role = v.strip().lower()
        if role != "user" and role not in AGENT_ROLES | ENVIRONMENT_ROLES:
            raise ValueError(f"unknown role {v!r}; expected user, agent or environment")
        return role


class RJudgeRecord(BaseModel):
    """One R-Judge record as the public files spell it."""

    model_config = ConfigDict(extra="ignore")
    id: int | str
    scenario: str = ""
    profile: str = ""
    contents: list[list[_Turn]] = Field(min_length=1, description="Interactions, each a list of turns.")
    label: int
    risk_description: str = ""
    attack_type: str = ""
    risk_type: str | None = None

    @field_validator("contents", mode="before")
    @classmethod
    def _nested(cls, v: Any) -> Any:
        # Some copies give one flat list of turns instead of a list of interactions.
        if isinstance(v, list) and v and all(isinstance(t, dict) for t in v):
            return [v]
        return v

    @field_validator("label", mode="before")
    @classmethod
    def _zero_or_one(cls, v: Any) -> int:
        if isinstance(v, bool):
            return int(v)
        if isinstance(v, str) and v.strip() in ("0", "1"):
            return int(v.strip())
        if v in (0, 1):
            return int(v)
        raise ValueError(f"expected 0 (safe) or 1 (unsafe), got {v!r}")

    def turns(self) -> list[_Turn]:
        return [turn for interaction in self.contents for turn in interaction]


def load(source: Source) -> CaseSet:
    """Every record in every .json file under the data folder (or in the data file)."""
    data = source.data_path(NAME, "R-Judge's data folder (Category/*.json) or one of its files")
    root = data if data.is_dir() else data.parent
    unmapped: Counter[str] = Counter()
    cases, where = [], {}
    for path in json_files(data):
        records = record_list(path, read_json(path), "R-Judge records")
        prefix = "/".join(path.relative_to(root).with_suffix("").parts)
        for i, raw in enumerate(records):
            label = record_label(raw, i, "id")
            record = validated(RJudgeRecord, raw, path, label)
            case = _case(record, f"{prefix}/{record.id}", path, label, source, unmapped)
            where.setdefault(case.case_id, f"{path}: {label}")
            cases.append(case)
    if not cases:
        raise BenchmarkInputError(f"{data}: no R-Judge records")
    check_unique(cases, where)
    return CaseSet(benchmark=NAME, cases=cases, origin=str(data), unmapped_outcomes=unmapped)


def _case(
    record: RJudgeRecord, case_id: str, path: Path, label: str, source: Source, unmapped: Counter[str]
) -> BenchmarkCase:
    instruction, steps = _episode(record.turns())
    if not steps:
        raise BenchmarkInputError(f"{path}: {label}: field 'contents': no agent turn to judge")
    if record.profile.strip():
        instruction += f"\n(The agent: {record.profile.strip()})"
    scenario = Scenario(
        id=stable_id(NAME, case_id),
        # The judge never reads toolkit names; the scenario needs one, so it is the record's application.
        toolkits=[record.scenario.strip() or case_id.split("/", 1)[0]],
        risk_outcome=any_risk_text(source.catalog),
        risk_source=RiskSource.ACTION,
        user_instruction=instruction,
    )
    return BenchmarkCase(
        benchmark=NAME,
        case_id=case_id,
        scenario=scenario,
        recorded=steps,
        label_safe=record.label == 0,
        risk_outcome=outcome_id(source.catalog, [record.risk_type], unmapped) if record.risk_type else None,
        details={
            "scenario": record.scenario,
            "attack_type": record.attack_type,
            "risk_description": record.risk_description,
        },
    )


def _episode(turns: list[_Turn]) -> tuple[str, list[Step]]:
    """(instruction, steps) of a record's turns, in order."""
    instruction: list[str] = []
    steps: list[Step] = []
    for turn in turns:
        text = (turn.content or "").strip()
        if turn.role in AGENT_ROLES:
            action = parse_action(turn.action, turn.thought)
            if action is not None:
                steps.append(Step(action=action))
        elif not text:
            continue
        elif not steps:
            instruction.append(text if turn.role == "user" else f"[environment] {text}")
        else:
            note = text if turn.role in ENVIRONMENT_ROLES else f"[user] {text}"
            last = steps[-1]
            steps[-1] = last.model_copy(update={"observation": f"{last.observation}\n{note}" if last.observation else note})
    return "\n".join(instruction) or NO_INSTRUCTION, steps


def parse_action(action: str | dict[str, Any] | None, thought: str | None = None) -> Action | None:
    """An agent turn's action as ours: a tool call with its arguments, or a message to the user."""
    thought = (thought or "").strip()
    if isinstance(action, dict):
        name = action.get("name") or action.get("tool")
        if isinstance(name, str) and name.strip():
            args = action.get("arguments", action.get("tool_input", action.get("input", {})))
            return Action(thought=thought, tool=name.strip(), tool_input=_arguments(args))
        action = json.dumps(action, ensure_ascii=False)
    text = (action or "").strip()
    if not text:
        return Action(thought=thought, tool=FINAL_ANSWER, answer="") if thought else None
    call = _CALL.match(text)
    if call:
        return Action(thought=thought, tool=call.group(1), tool_input=_arguments(_literal(call.group(2))))
    named = _NAMED.match(text)
    if named:
        return Action(thought=thought, tool=named.group(1), tool_input={"input": named.group(2).strip()})
    return Action(thought=thought, tool=FINAL_ANSWER, answer=text)


def _literal(text: str) -> Any:
    """JSON, else a Python literal (R-Judge writes both), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def _arguments(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        value = _literal(value)
    return value if isinstance(value, dict) else {"input": value}
