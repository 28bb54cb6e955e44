"""ToolEmu's test cases: an underspecified instruction over named toolkits, run in our
simulated environment and scored like ToolEmu (safety 0-3, helpfulness 0-3).

A case names its toolkits; their specs come from ToolEmu's toolkit files found next to
the cases (a file's folder, or anywhere under a folder given as data), else from our
catalog by the same name. The judge sees the case's own potential risky outcomes and
actions and its underspecifications, as ToolEmu's evaluator does; the row's risk
outcome is the first outcome type that normalises onto our taxonomy. Variants read:
cases without `name`, underspecifications as one flat list or with a key missing, a
`User Instruction` given per mode ({"Standard": ...}), extra keys. Knows nothing about
models.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from autosafe_core.catalog import read_catalog_files
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
from autosafe_core.ots import RiskSource, Scenario, Toolkit, stable_id

NAME = "toolemu"
_CASE_KEYS = frozenset({"User Instruction", "Toolkits"})
_TOOLKIT_KEYS = frozenset({"toolkit", "tools"})


class _Underspecifications(BaseModel):
    model_config = ConfigDict(extra="ignore")
    task_information: list[str] = Field(default_factory=list, alias="Task Information")
    safety_constraints: list[str] = Field(default_factory=list, alias="Safety & Security Constraints")


class ToolEmuCase(BaseModel):
    """One record of ToolEmu's case list, as the public files spell it."""

    model_config = ConfigDict(extra="ignore")
    name: str | int | None = None
    toolkits: list[str] = Field(alias="Toolkits", min_length=1)
    user_instruction: str | dict[str, str] = Field(alias="User Instruction")
    underspecifications: _Underspecifications | list[str] = Field(
        default_factory=_Underspecifications, alias="Underspecifications"
    )
    expected_achievements: list[str] = Field(default_factory=list, alias="Expected Achievements")
    risky_outcomes: list[str] = Field(default_factory=list, alias="Potential Risky Outcomes")
    risky_actions: list[str] = Field(default_factory=list, alias="Potential Risky Actions")

    def instruction(self) -> str:
        if isinstance(self.user_instruction, str):
            return self.user_instruction.strip()
        by_mode = {k.lower(): v for k, v in self.user_instruction.items()}
        return (by_mode.get("standard") or next(iter(by_mode.values()), "")).strip()

    def underspecified(self) -> list[str]:
        if isinstance(self.underspecifications, list):
            return list(self.underspecifications)
        return [f"task information: {t}" for t in self.underspecifications.task_information] + [
            f"safety constraint: {t}" for t in self.underspecifications.safety_constraints
        ]


def load(source: Source) -> CaseSet:
    """Every case in the data file (or in every case file under the data folder)."""
    data = source.data_path(NAME, "ToolEmu's test cases (a JSON list, e.g. all_cases.json) or their folder")
    case_files, spec_files = _classify(data)
    if not case_files:
        raise BenchmarkInputError(f"{data}: no ToolEmu case list (a JSON list of objects with 'User Instruction')")
    specs = _toolkit_specs(spec_files)
    unmapped: Counter[str] = Counter()
    cases: list[BenchmarkCase] = []
    where: dict[str, str] = {}
    for path, records in case_files:
        for i, raw in enumerate(records):
            label = record_label(raw, i, "name")
            case = _case(validated(ToolEmuCase, raw, path, label), i, path, label, specs, source, unmapped)
            where.setdefault(case.case_id, f"{path}: {label}")
            cases.append(case)
    check_unique(cases, where)
    origin = ", ".join(str(p) for p, _ in case_files)
    return CaseSet(benchmark=NAME, cases=cases, origin=origin, unmapped_outcomes=unmapped)


def _classify(data: Path) -> tuple[list[tuple[Path, list[Any]]], list[Path]]:
    """(case files with their records, toolkit spec files): a folder's files by their shape;
    a file is the case list, and the toolkit files beside it are its specs."""
    if data.is_file():
        records = record_list(data, read_json(data), "ToolEmu cases")
        siblings = [p for p in sorted(data.parent.glob("*.json")) if p != data and _is_spec_file(p)]
        return [(data, records)], siblings
    cases, specs = [], []
    for path in json_files(data):
        value = read_json(path)
        if _is_case_list(value):
            cases.append((path, value))
        elif _has_toolkits(value):
            specs.append(path)
    return cases, specs


def _is_case_list(value: Any) -> bool:
    return isinstance(value, list) and any(isinstance(i, dict) and _CASE_KEYS & i.keys() for i in value)


def _has_toolkits(value: Any) -> bool:
    items = value if isinstance(value, list) else [value]
    return any(isinstance(i, dict) and _TOOLKIT_KEYS <= i.keys() for i in items)


def _is_spec_file(path: Path) -> bool:
    try:
        return _has_toolkits(read_json(path))
    except BenchmarkInputError:
        return False  # a file beside the cases that is not JSON is not ours to judge


def _toolkit_specs(paths: list[Path]) -> dict[str, Toolkit]:
    if not paths:
        return {}
    files = read_catalog_files(paths)
    if files.errors:
        raise BenchmarkInputError(files.errors[0])
    return {kit.toolkit: kit for kit in files.toolkits}


def _case(
    raw: ToolEmuCase,
    index: int,
    path: Path,
    label: str,
    specs: dict[str, Toolkit],
    source: Source,
    unmapped: Counter[str],
) -> BenchmarkCase:
    instruction = raw.instruction()
    if not instruction:
        raise BenchmarkInputError(f"{path}: {label}: field 'User Instruction': empty")
    kits = []
    for name in raw.toolkits:
        kit = specs.get(name) or source.catalog.toolkits.get(name)
        if kit is None:
            raise BenchmarkInputError(
                f"{path}: {label}: field 'Toolkits': unknown toolkit {name!r}; put ToolEmu's toolkit specs "
                "(all_toolkits.json) beside the cases, or name a toolkit of the catalog"
            )
        kits.append(kit)
    case_id = str(raw.name) if raw.name is not None and str(raw.name).strip() else f"case-{index}"
    scenario = Scenario(
        id=stable_id(NAME, case_id),
        toolkits=[k.toolkit for k in kits],
        risk_outcome="; ".join(raw.risky_outcomes) or any_risk_text(source.catalog),
        # ToolEmu names no OTS source; the scenario needs one, the row leaves it empty.
        risk_source=RiskSource.ACTION,
        user_instruction=instruction,
        expected_risky_actions=raw.risky_actions,
        underspecifications=raw.underspecified(),
    )
    return BenchmarkCase(
        benchmark=NAME,
        case_id=case_id,
        scenario=scenario,
        toolkits=kits,
        risk_outcome=outcome_id(source.catalog, raw.risky_outcomes, unmapped),
        details={
            "expected_achievements": raw.expected_achievements,
            "potential_risky_outcomes": raw.risky_outcomes,
        },
    )
