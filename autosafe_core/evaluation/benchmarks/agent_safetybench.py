"""Agent-SafetyBench (thu-coai): an instruction over environments with tools and an
initial state, run in our simulated environment, each trajectory judged safe or unsafe.

The benchmark's own Python environments execute its tools; here nothing executes: the
simulator writes every observation. It sees each environment's initial state (the
case's `parameters`), the agent does not, as with the real environments. Tool specs
come from `environments/<Name>.json` (OpenAI function style), looked up beside the
case file and one folder up (the repository's layout: `data/released_data.json`,
`environments/`). Function names become ToolEmu-style tool names (`send_email` ->
`EmailSendEmail` in environment `Email`). A case without any tool is a content-only
case: there is no environment to simulate, so it is skipped and counted, not run.

Variants read: `failure_modes` as "1,5", a list or a number; `risks` as one string;
an environment without `tools` (all of its tools) or without `parameters`;
function specs wrapped as {"type": "function", "function": {...}}; extra keys.
Knows nothing about models.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from autosafe_core.evaluation.benchmarks.case import (
    BenchmarkCase,
    BenchmarkInputError,
    CaseSet,
    Source,
    any_risk_text,
    check_unique,
    json_type,
    outcome_id,
    read_json,
    record_label,
    record_list,
    validated,
)
from autosafe_core.ots import RiskSource, Scenario, Tool, Toolkit, ToolParameter, stable_id

NAME = "agent_safetybench"
ENVIRONMENTS = "environments"
NO_TOOLS = "no tools: a content-only case has no environment to simulate"
STATE_CHARS = 2000
"""The initial state shown to the simulator, at most; it shares the prompt with the tool spec."""


class _Environment(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = ""
    tools: list[str] | None = None
    parameters: dict[str, Any] | None = None


class AgentSafetyBenchCase(BaseModel):
    """One case of Agent-SafetyBench's released data."""

    model_config = ConfigDict(extra="ignore")
    id: int | str
    risks: list[str] | str = Field(default_factory=list)
    instruction: str = Field(min_length=1)
    environments: list[_Environment] = Field(default_factory=list)
    failure_modes: str | int | list[int | str] = ""
    fulfillable: int | bool | None = None

    def risk_list(self) -> list[str]:
        return [self.risks] if isinstance(self.risks, str) else list(self.risks)

    def failure_mode_list(self) -> list[int]:
        items = self.failure_modes if isinstance(self.failure_modes, list) else str(self.failure_modes).split(",")
        return [int(i) for i in (str(x).strip() for x in items) if i.isdigit()]


class _Function(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1)
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)


def load(source: Source) -> CaseSet:
    """Every case of the released data file (or of the case files in the data folder)."""
    data = source.data_path(NAME, "Agent-SafetyBench's released_data.json (with environments/ beside it)")
    files = [data] if data.is_file() else _case_files(data)
    specs = _Specs(_spec_folders(data))
    unmapped: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    cases, where = [], {}
    for path in files:
        for i, raw in enumerate(record_list(path, read_json(path), "Agent-SafetyBench cases")):
            label = record_label(raw, i, "id")
            case = _case(validated(AgentSafetyBenchCase, raw, path, label), path, label, specs, source, unmapped)
            if case is None:
                skipped[NO_TOOLS] += 1
                continue
            where.setdefault(case.case_id, f"{path}: {label}")
            cases.append(case)
    check_unique(cases, where)
    return CaseSet(
        benchmark=NAME, cases=cases, origin=", ".join(map(str, files)), unmapped_outcomes=unmapped, skipped=skipped
    )


def _case_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise BenchmarkInputError(f"{folder}: no such file or directory")
    found = [
        p for p in sorted(folder.glob("*.json")) if isinstance(v := read_json(p), list) and v and _looks_like_cases(v)
    ]
    if not found:
        raise BenchmarkInputError(f"{folder}: no Agent-SafetyBench case list (objects with 'instruction' and 'environments')")
    return found


def _looks_like_cases(items: list[Any]) -> bool:
    return any(isinstance(i, dict) and {"instruction", "environments"} <= i.keys() for i in items)


def _spec_folders(data: Path) -> list[Path]:
    base = data if data.is_dir() else data.parent
    return [base / ENVIRONMENTS, base.parent / ENVIRONMENTS]


class _Specs:
    """Environment tool specs by name, read once each."""

    def __init__(self, folders: list[Path]):
        self.folders = folders
        self.found: dict[str, tuple[Path, list[_Function]]] = {}

    def get(self, env: str, where: str) -> tuple[Path, list[_Function]]:
        if env not in self.found:
            path = next((f / f"{env}.json" for f in self.folders if (f / f"{env}.json").is_file()), None)
            if path is None:
                looked = " and ".join(str(f) for f in self.folders)
                raise BenchmarkInputError(f"{where}: environment {env!r}: no {env}.json in {looked}")
            items = read_json(path)
            if not isinstance(items, list):
                raise BenchmarkInputError(f"{path}: expected a JSON list of function specs, found a JSON {json_type(items)}")
            functions = []
            for i, raw in enumerate(items):
                if isinstance(raw, dict) and isinstance(raw.get("function"), dict):
                    raw = raw["function"]
                functions.append(validated(_Function, raw, path, record_label(raw, i, "name")))
            self.found[env] = (path, functions)
        return self.found[env]


def _case(
    raw: AgentSafetyBenchCase, path: Path, label: str, specs: _Specs, source: Source, unmapped: Counter[str]
) -> BenchmarkCase | None:
    kits, states = [], {}
    for env in raw.environments:
        if not env.name.strip() or env.tools == []:
            continue
        spec_path, functions = specs.get(env.name.strip(), f"{path}: {label}")
        kit = _toolkit(env, functions, spec_path, f"{path}: {label}")
        kits.append(kit)
        if env.parameters:
            states[kit.toolkit] = _state_text(env.parameters)
    if not kits:
        return None
    risks = raw.risk_list()
    fulfillable = None if raw.fulfillable is None else bool(raw.fulfillable)
    case_id = str(raw.id)
    scenario = Scenario(
        id=stable_id(NAME, case_id),
        toolkits=[k.toolkit for k in kits],
        risk_outcome="; ".join(risks) or any_risk_text(source.catalog),
        # Unfulfillable: the instruction itself is the danger. Otherwise the benchmark does not say.
        risk_source=RiskSource.INSTRUCTION if fulfillable is False else RiskSource.ACTION,
        user_instruction=raw.instruction.strip(),
    )
    return BenchmarkCase(
        benchmark=NAME,
        case_id=case_id,
        scenario=scenario,
        toolkits=kits,
        hidden_state=states,
        risk_outcome=outcome_id(source.catalog, risks, unmapped),
        risk_source=RiskSource.INSTRUCTION if fulfillable is False else None,
        details={"risks": risks, "failure_modes": raw.failure_mode_list(), "fulfillable": fulfillable},
    )


def _toolkit(env: _Environment, functions: list[_Function], spec_path: Path, where: str) -> Toolkit:
    by_name = {f.name: f for f in functions}
    wanted = env.tools if env.tools is not None else list(by_name)
    missing = [t for t in wanted if t not in by_name]
    if missing:
        raise BenchmarkInputError(f"{where}: environment {env.name!r}: tool {missing[0]!r} is not in {spec_path}")
    name = _identifier(env.name)
    tools = [_tool(by_name[t]) for t in wanted]
    if not tools:
        raise BenchmarkInputError(f"{spec_path}: environment {env.name!r} has no function specs")
    return Toolkit(
        toolkit=name,
        name_for_model=name,
        name_for_human=env.name,
        description_for_model=f"The {env.name} environment.",
        tools=tools,
    )


def _tool(function: _Function) -> Tool:
    schema = function.parameters
    required = set(schema.get("required") or [])
    properties = schema.get("properties") or {}
    params = [
        ToolParameter(
            name=pname,
            type=_type_name(prop),
            description=str(prop.get("description", "")) if isinstance(prop, dict) else "",
            required=pname in required,
        )
        for pname, prop in properties.items()
    ]
    return Tool(name=_pascal(function.name), summary=function.description.strip() or function.name, parameters=params)


def _type_name(prop: Any) -> str:
    kind = prop.get("type") if isinstance(prop, dict) else None
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    return kind if isinstance(kind, str) and kind else "any"


def _pascal(name: str) -> str:
    """`send_email` -> `SendEmail`: ToolEmu-style, so the called name reads `EmailSendEmail`."""
    words = [w for w in re.split(r"[^A-Za-z0-9]+", name) if w]
    out = "".join(w[:1].upper() + w[1:] for w in words)
    return out if out[:1].isalpha() else f"Tool{out}"


def _identifier(name: str) -> str:
    out = re.sub(r"[^A-Za-z0-9_]", "_", name.strip())
    return out if out[:1].isalpha() else f"Env{out}"


def _state_text(parameters: dict[str, Any]) -> str:
    text = json.dumps(parameters, ensure_ascii=False, separators=(", ", ": "), default=str)
    return text if len(text) <= STATE_CHARS else text[:STATE_CHARS] + " ...(truncated)"
