"""Catalog files in, validated toolkits and risk outcomes out, with every error named.

Reads JSON files and directories of them and tells each file's kind by its shape: a
ToolEmu toolkit list (or one toolkit object), a risk-outcome taxonomy (a list of
objects with `id`), or a ToolEmu toolkit risk map ({toolkit name: [risk, ...]}), whose
risks join the toolkits' inline `risks`. ToolEmu's loose variants pass (no category,
parameters without `required`, tools without exceptions, extra keys). Each error is
one line naming file, toolkit, tool and field. `default_catalog` is the packaged data,
read once per process.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from autosafe_core.catalog.data import packaged_outcomes, packaged_root
from autosafe_core.catalog.lookup import Catalog, outcome_key, outcome_spellings
from autosafe_core.ots import RiskOutcome, Toolkit

CatalogPath = str | os.PathLike | Traversable
_TOOLKIT_KEYS = frozenset({"toolkit", "tools", "name_for_model"})
_UNREADABLE = object()  # not None: a file holding `null` is read, then refused for its shape


class CatalogError(ValueError):
    """Catalog files with errors; `errors` holds one line per error."""

    def __init__(self, errors: Iterable[str]):
        self.errors = list(errors)
        more = f" (and {len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
        super().__init__(f"{self.errors[0] if self.errors else 'invalid catalog'}{more}")


@dataclass(frozen=True)
class CatalogFiles:
    """What a set of catalog files holds, and every error found in them."""

    toolkits: tuple[Toolkit, ...] = ()
    outcomes: tuple[RiskOutcome, ...] = ()
    errors: tuple[str, ...] = ()

    @property
    def tool_count(self) -> int:
        return sum(len(kit.tools) for kit in self.toolkits)

    def catalog(self) -> Catalog:
        """The catalog these files make; CatalogError when any file had an error."""
        if self.errors:
            raise CatalogError(self.errors)
        return Catalog.from_items(self.toolkits, self.outcomes)


def validate_path(path: CatalogPath) -> list[str]:
    """Every error in a catalog file, or in all .json files under a directory; [] when valid."""
    return list(read_catalog_files([path]).errors)


def load_catalog(
    toolkit_paths: CatalogPath | Iterable[CatalogPath], outcomes_path: CatalogPath | None = None
) -> Catalog:
    """A catalog of the toolkits (and risk maps) in `toolkit_paths` and the outcomes in `outcomes_path`.

    Without `outcomes_path`, a taxonomy among `toolkit_paths` is used, else the packaged one.
    Raises CatalogError listing every error.
    """
    paths = [toolkit_paths] if isinstance(toolkit_paths, (str, os.PathLike, Traversable)) else list(toolkit_paths)
    files = read_catalog_files(paths + ([outcomes_path] if outcomes_path is not None else []))
    if not files.outcomes and not files.errors:
        files = read_catalog_files([*paths, packaged_outcomes()])
    return files.catalog()


@cache
def default_catalog() -> Catalog:
    """The catalog shipped in the package: our toolkits and the risk-outcome taxonomy."""
    return read_catalog_files([packaged_root()]).catalog()


def normalise_outcome(text: str) -> str | None:
    """The packaged taxonomy's id for free text ("Privacy breach: ...", "financial_loss"), or None."""
    return default_catalog().normalise_outcome(text)


def read_catalog_files(paths: Iterable[CatalogPath]) -> CatalogFiles:
    """Read, validate and cross-check every catalog file under `paths`."""
    reading = _Reading()
    for path in paths:
        for name, node in _json_files(path, reading.errors):
            data = _parse(name, node, reading.errors)
            if data is not _UNREADABLE:
                reading.add(name, data)
    return reading.finish()


# --- finding and parsing files ---------------------------------------------------------


def _json_files(path: CatalogPath, errors: list[str]) -> Iterator[tuple[str, Traversable]]:
    node = path if isinstance(path, Traversable) else Path(path)
    if node.is_file():
        yield str(node), node
    elif node.is_dir():
        found = list(_walk(node))
        if not found:
            errors.append(f"{node}: no .json files in this directory")
        yield from ((str(f), f) for f in found)
    else:
        errors.append(f"{node}: no such file or directory")


def _walk(directory: Traversable) -> Iterator[Traversable]:
    for child in sorted(directory.iterdir(), key=lambda c: c.name):
        if child.name.startswith((".", "__")):
            continue
        if child.is_dir():
            yield from _walk(child)
        elif child.name.endswith(".json"):
            yield child


def _parse(name: str, node: Traversable, errors: list[str]) -> Any:
    try:
        text = node.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        errors.append(f"{name}: cannot read: {e}")
        return _UNREADABLE
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        errors.append(f"{name}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}")
        return _UNREADABLE


# --- validating and cross-checking -----------------------------------------------------


@dataclass
class _Reading:
    """Accumulates valid items with the file each came from, and errors, across files."""

    errors: list[str] = field(default_factory=list)
    toolkits: dict[str, tuple[str, Toolkit]] = field(default_factory=dict)
    outcomes: dict[str, tuple[str, RiskOutcome]] = field(default_factory=dict)
    outcome_keys: dict[str, str] = field(default_factory=dict)
    model_names: dict[str, str] = field(default_factory=dict)
    risk_maps: list[tuple[str, dict[str, list[str]]]] = field(default_factory=list)

    def add(self, name: str, data: Any) -> None:
        if isinstance(data, dict) and _TOOLKIT_KEYS & data.keys():
            self._add_toolkits(name, [data])
        elif isinstance(data, dict) and data and any(isinstance(v, list) for v in data.values()):
            self._add_risk_map(name, data)
        elif isinstance(data, list) and any(isinstance(i, dict) and _TOOLKIT_KEYS & i.keys() for i in data):
            self._add_toolkits(name, data)
        elif isinstance(data, list) and any(isinstance(i, dict) and "id" in i for i in data):
            self._add_outcomes(name, data)
        else:
            shape = "an empty list" if data == [] else "an empty object" if data == {} else f"a JSON {_json_type(data)}"
            self.errors.append(
                f"{name}: not a toolkit, a toolkit list, a risk-outcome list or a toolkit risk map (found {shape})"
            )

    def _add_toolkits(self, name: str, items: list[Any]) -> None:
        for i, raw in enumerate(items):
            label = _label("toolkit", raw, "toolkit", i)
            kit = self._validated(Toolkit, name, label, raw, _toolkit_where)
            if kit is None:
                continue
            self._check_tool_names(name, label, kit)
            if kit.toolkit in self.toolkits:
                where = self._also_in(name, self.toolkits[kit.toolkit][0])
                self.errors.append(f"{name}: {label}: duplicate toolkit name, {where}")
                continue
            if kit.name_for_model in self.model_names:
                other = self.model_names[kit.name_for_model]
                self.errors.append(
                    f"{name}: {label}: name_for_model {kit.name_for_model!r} is also toolkit {other!r}'s, "
                    "so their tool names would collide"
                )
                continue
            self.toolkits[kit.toolkit] = (name, kit)
            self.model_names[kit.name_for_model] = kit.toolkit

    def _check_tool_names(self, name: str, label: str, kit: Toolkit) -> None:
        first: dict[str, int] = {}
        for j, tool in enumerate(kit.tools):
            k = first.setdefault(tool.name, j)
            if k != j:
                where = f"tools[{k}] and tools[{j}]"
                self.errors.append(f"{name}: {label} tool {tool.name!r}: duplicate tool name ({where})")

    def _add_outcomes(self, name: str, items: list[Any]) -> None:
        for i, raw in enumerate(items):
            label = _label("outcome", raw, "id", i)
            outcome = self._validated(RiskOutcome, name, label, raw, lambda _raw, loc: _field(loc))
            if outcome is None:
                continue
            if outcome.id in self.outcomes:
                where = self._also_in(name, self.outcomes[outcome.id][0])
                self.errors.append(f"{name}: {label}: duplicate outcome id, {where}")
                continue
            self.outcomes[outcome.id] = (name, outcome)
            self._claim_spellings(name, label, outcome)

    def _claim_spellings(self, name: str, label: str, outcome: RiskOutcome) -> None:
        """Every spelling must name one outcome only, or normalising free text would be ambiguous."""
        kinds = ["id", "name"] + ["alias"] * len(outcome.aliases)
        for kind, spelling in zip(kinds, outcome_spellings(outcome), strict=True):
            key = outcome_key(spelling)
            if not key:
                self.errors.append(f"{name}: {label} {kind} {spelling!r}: has no letters or digits")
            elif self.outcome_keys.setdefault(key, outcome.id) != outcome.id:
                other = self.outcome_keys[key]
                self.errors.append(f"{name}: {label} {kind} {spelling!r}: already names outcome {other!r}")

    def _add_risk_map(self, name: str, data: dict[str, Any]) -> None:
        risks: dict[str, list[str]] = {}
        for kit_name, entry in data.items():
            if isinstance(entry, list) and all(isinstance(r, str) for r in entry):
                risks[kit_name] = entry
            else:
                self.errors.append(f"{name}: risk map entry {kit_name!r}: expected a list of strings")
        self.risk_maps.append((name, risks))

    def _validated(self, model: type[BaseModel], name: str, label: str, raw: Any, where) -> Any:
        if not isinstance(raw, dict):
            self.errors.append(f"{name}: {label}: expected a JSON object, found a JSON {_json_type(raw)}")
            return None
        try:
            return model.model_validate(raw)
        except ValidationError as e:
            for err in e.errors(include_url=False):
                self.errors.append(f"{name}: {label}{where(raw, err['loc'])}: {err['msg']}")
            return None

    @staticmethod
    def _also_in(name: str, other: str) -> str:
        return "twice in this file" if name == other else f"also in {other}"

    def finish(self) -> CatalogFiles:
        toolkits = {kit_name: kit for kit_name, (_, kit) in self.toolkits.items()}
        for name, risk_map in self.risk_maps:
            for kit_name, risks in risk_map.items():
                if kit_name in toolkits:
                    kit = toolkits[kit_name]
                    merged = list(dict.fromkeys([*kit.risks, *risks]))
                    toolkits[kit_name] = kit.model_copy(update={"risks": merged})
                elif toolkits:
                    self.errors.append(f"{name}: risk map names unknown toolkit {kit_name!r}")
        return CatalogFiles(
            toolkits=tuple(toolkits.values()),
            outcomes=tuple(outcome for _, outcome in self.outcomes.values()),
            errors=tuple(self.errors),
        )


def _label(kind: str, raw: Any, key: str, index: int) -> str:
    value = raw.get(key) if isinstance(raw, dict) else None
    return f"{kind} {value!r}" if isinstance(value, str) and value else f"{kind} #{index}"


def _toolkit_where(raw: dict[str, Any], loc: tuple[Any, ...]) -> str:
    """' tool 'X' field 'parameters[0].type'' for a tool's field, ' field 'category'' for the toolkit's."""
    if len(loc) >= 2 and loc[0] == "tools" and isinstance(loc[1], int):
        tools = raw.get("tools")
        tool = tools[loc[1]] if isinstance(tools, list) and loc[1] < len(tools) else None
        return f" {_label('tool', tool, 'name', loc[1])}{_field(loc[2:])}"
    return _field(loc)


def _field(loc: tuple[Any, ...]) -> str:
    if not loc:
        return ""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return f" field {path!r}"


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
