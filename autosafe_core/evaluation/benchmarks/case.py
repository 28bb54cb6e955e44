"""What every benchmark adapter shares: the normalised case, the set of cases a load
returns, and how an input file's mistakes are reported.

An adapter reads a benchmark's public files and turns each record into a
`BenchmarkCase`: the `Scenario` the roles see (instruction, toolkit names, risk text,
expected risky actions, underspecifications), the toolkit specs that scenario uses,
and, for benchmarks that judge recorded episodes, the recorded steps and the
benchmark's own safe/unsafe label. A malformed record is a `BenchmarkInputError`
naming the file, the record and the field; free-text outcome types are normalised
onto the catalog's risk-outcome ids here (`outcome_id`). Knows nothing about models,
rollouts or storage.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, Field, ValidationError

from autosafe_core.ots import Record, RiskSource, Scenario, Step, Toolkit, stable_id
from autosafe_core.roles.toolbox import CatalogLike

M = TypeVar("M", bound=BaseModel)


class BenchmarkInputError(ValueError):
    """A benchmark file or record that cannot be read; the message names file, record and field."""


class BenchmarkCase(Record):
    """One benchmark case, normalised: what the roles need to run and judge it."""

    benchmark: str
    case_id: str = Field(min_length=1, description="Unique within the benchmark; stable across loads.")
    scenario: Scenario = Field(description="What the agent, simulator and judge see.")
    toolkits: list[Toolkit] = Field(default_factory=list, description="Specs of the scenario's toolkits.")
    hidden_state: dict[str, str] = Field(
        default_factory=dict,
        description="Toolkit name -> the environment's initial state, shown to the simulator, not to the agent.",
    )
    recorded: list[Step] = Field(
        default_factory=list, description="Judge-only benchmarks: the recorded agent steps, in order."
    )
    label_safe: bool | None = Field(None, description="The benchmark's own safe/unsafe label, where it has one.")
    risk_outcome: str | None = Field(None, description="Risk-outcome id of our taxonomy; None when unmapped.")
    risk_source: RiskSource | None = Field(None, description="OTS risk source, where the benchmark says it.")
    details: dict[str, Any] = Field(
        default_factory=dict, description="The benchmark's own fields kept for the report (achievements, modes...)."
    )


@dataclass
class CaseSet:
    """What a load returns: the cases, where they came from, and what did not map."""

    benchmark: str
    cases: list[BenchmarkCase]
    origin: str = ""
    """The files read, or the run and split."""
    unmapped_outcomes: Counter[str] = field(default_factory=Counter)
    """Outcome types (free text) that name no outcome of the taxonomy, with how often."""
    skipped: Counter[str] = field(default_factory=Counter)
    """Cases not run, by reason."""

    def fingerprint(self) -> str:
        """sha256 of the cases' JSON, in order: equal fingerprints, equal inputs."""
        digest = hashlib.sha256()
        for case in self.cases:
            digest.update(case.model_dump_json().encode())
        return digest.hexdigest()

    def sample(self, max_cases: int | None, seed: int = 0) -> CaseSet:
        """At most `max_cases` cases, drawn by a hash of (case id, seed): an unbiased, stable subset.

        A benchmark file is often ordered by category, so its first N cases are not a sample.
        The chosen cases keep the file's order.
        """
        if max_cases is None or len(self.cases) <= max_cases:
            return self
        chosen = set(sorted(range(len(self.cases)), key=lambda i: stable_id(self.cases[i].case_id, seed))[:max_cases])
        return CaseSet(
            benchmark=self.benchmark,
            cases=[c for i, c in enumerate(self.cases) if i in chosen],
            origin=self.origin,
            unmapped_outcomes=self.unmapped_outcomes,
            skipped=self.skipped,
        )


def read_json(path: Path) -> Any:
    """The JSON value in `path`; BenchmarkInputError naming the file (and line) otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BenchmarkInputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchmarkInputError(f"{path}: cannot read: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BenchmarkInputError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None


def json_files(root: Path) -> list[Path]:
    """Every .json file under a directory (sorted, hidden ones skipped), or the file itself."""
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise BenchmarkInputError(f"{root}: no such file or directory")
    return sorted(p for p in root.rglob("*.json") if not any(part.startswith(".") for part in p.relative_to(root).parts))


def record_list(path: Path, data: Any, kind: str) -> list[Any]:
    """`data` as a list of records; a single object counts as a list of one."""
    if isinstance(data, dict):
        return [data]
    if not isinstance(data, list):
        raise BenchmarkInputError(f"{path}: expected a JSON list of {kind}, found a JSON {json_type(data)}")
    return data


def validated(model: type[M], raw: Any, path: Path, record: str) -> M:
    """`raw` as `model`; BenchmarkInputError "file: record: field 'x': why" otherwise."""
    if not isinstance(raw, dict):
        raise BenchmarkInputError(f"{path}: {record}: expected a JSON object, found a JSON {json_type(raw)}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"] if not _is_union_tag(p))
        field_part = f"field {where!r}: " if where else ""
        raise BenchmarkInputError(f"{path}: {record}: {field_part}{first['msg']}") from None


def _is_union_tag(part: Any) -> bool:
    """Whether a pydantic error location part names a union member ('str', 'list[str]'), not a key."""
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool", "dict", "list"))


def record_label(raw: Any, index: int, *keys: str) -> str:
    """'record #3 (name)': the position, and the record's own name or id where it has one."""
    if isinstance(raw, dict):
        for key in keys:
            value = raw.get(key)
            if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
                return f"record #{index} ({key} {value!r})"
    return f"record #{index}"


def check_unique(cases: Sequence[BenchmarkCase], where: dict[str, str]) -> None:
    """BenchmarkInputError when two cases share an id; `where` maps case id -> 'file: record'."""
    seen: dict[str, str] = {}
    for case in cases:
        here = where.get(case.case_id, case.case_id)
        if case.case_id in seen:
            raise BenchmarkInputError(f"{here}: case id {case.case_id!r} repeats {seen[case.case_id]}")
        seen[case.case_id] = here


def outcome_id(catalog: CatalogLike, texts: Iterable[str], unmapped: Counter[str]) -> str | None:
    """The taxonomy id of the first outcome type in `texts` that names one; the rest are counted."""
    found = None
    for text in texts:
        oid = catalog.normalise_outcome(text)
        if oid is None:
            unmapped[outcome_type(text)] += 1
        elif found is None:
            found = oid
    return found


def outcome_type(text: str) -> str:
    """The type part of "Type: description" (the whole text when it has no colon)."""
    return text.split(":", 1)[0].strip() or text.strip()


def json_type(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def any_risk_text(catalog: CatalogLike) -> str:
    """What a judge looks for when a benchmark names no risk of its own: every outcome of the taxonomy."""
    return "any of: " + ", ".join(o.name.lower() for o in catalog.outcomes.values())


@dataclass(frozen=True)
class Source:
    """Where an adapter reads its cases: a public file or folder, or a factory run's scenarios."""

    catalog: CatalogLike
    """Toolkits a case may name without bringing its own spec, and the taxonomy outcomes map onto."""
    data: Path | None = None
    run: Any = None
    """The `Run` whose held-out scenarios the synthetic benchmark evaluates."""
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_seed: int = 0

    def data_path(self, benchmark: str, what: str) -> Path:
        """The data path, or BenchmarkInputError saying what the benchmark needs."""
        if self.data is None:
            raise BenchmarkInputError(f"benchmark {benchmark} needs --data PATH: {what}")
        return self.data
