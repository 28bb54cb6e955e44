"""The catalog in memory: toolkits by name, risk outcomes by id, free text onto outcome ids.

A `Catalog` answers lookups and says clearly what it does not hold. It knows nothing
about files (`loader`) or where the packaged data lives (`packaged`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType

from autosafe_core.catalog.prompt_spec import render_toolkits
from autosafe_core.ots import RiskOutcome, Tool, Toolkit

_WORD = re.compile(r"[a-z0-9]+")
_BRITISH_IZE = re.compile(r"is(e|ed|es|ing|ation|ations)$")
# Free text often carries an explanation after the outcome type ("Financial loss: ..."),
# or names two types ("Privacy breach / Data leakage"): the first one counts.
_TYPE_ENDS = (":", "(", " - ", " – ", " — ", " / ")


class UnknownName(KeyError):
    """A lookup of a name the catalog does not hold; prints as its message, unquoted."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@lru_cache(maxsize=8192)
def outcome_key(text: str) -> str:
    """The spelling-insensitive key of an outcome name: case, punctuation, '&', plurals, -ise/-ize.

    Cached: stages normalise the same toolkit risks for every scenario.
    """
    words = _WORD.findall(text.lower().replace("&", " and "))
    return " ".join(_BRITISH_IZE.sub(r"iz\1", _singular(w)) for w in words)


def _singular(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def outcome_spellings(outcome: RiskOutcome) -> list[str]:
    """Every spelling that names `outcome`: its id, its name and its aliases."""
    return [outcome.id, outcome.name, *outcome.aliases]


@dataclass(frozen=True)
class Catalog:
    """Toolkits by `toolkit` name and risk outcomes by id, read-only."""

    toolkits: Mapping[str, Toolkit]
    outcomes: Mapping[str, RiskOutcome]
    _outcome_keys: Mapping[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "toolkits", MappingProxyType(dict(self.toolkits)))
        object.__setattr__(self, "outcomes", MappingProxyType(dict(self.outcomes)))
        keys: dict[str, str] = {}
        for outcome in self.outcomes.values():
            for spelling in outcome_spellings(outcome):
                # The loader reports a spelling claimed by two outcomes; here the first wins.
                keys.setdefault(outcome_key(spelling), outcome.id)
        object.__setattr__(self, "_outcome_keys", MappingProxyType(keys))

    def __reduce__(self):
        # Mapping proxies do not pickle; a catalog must, to travel to Ray workers.
        return (Catalog, (dict(self.toolkits), dict(self.outcomes)))

    @classmethod
    def from_items(cls, toolkits: Iterable[Toolkit], outcomes: Iterable[RiskOutcome]) -> Catalog:
        """A catalog of these toolkits and outcomes; ValueError on a repeated name or id."""
        by_name: dict[str, Toolkit] = {}
        for kit in toolkits:
            if by_name.setdefault(kit.toolkit, kit) is not kit:
                raise ValueError(f"duplicate toolkit name {kit.toolkit!r}")
        by_id: dict[str, RiskOutcome] = {}
        for outcome in outcomes:
            if by_id.setdefault(outcome.id, outcome) is not outcome:
                raise ValueError(f"duplicate risk outcome id {outcome.id!r}")
        return cls(toolkits=by_name, outcomes=by_id)

    def toolkit(self, name: str) -> Toolkit:
        try:
            return self.toolkits[name]
        except KeyError:
            known = ", ".join(sorted(self.toolkits))
            raise UnknownName(f"unknown toolkit {name!r}; the catalog has: {known}") from None

    def outcome(self, outcome_id: str) -> RiskOutcome:
        try:
            return self.outcomes[outcome_id]
        except KeyError:
            known = ", ".join(sorted(self.outcomes))
            raise UnknownName(f"unknown risk outcome {outcome_id!r}; the catalog has: {known}") from None

    def tool(self, called_name: str) -> tuple[Toolkit, Tool]:
        """The toolkit and tool an agent calls as `called_name` (name_for_model + tool name)."""
        for kit in self.toolkits.values():
            if called_name.startswith(kit.name_for_model):
                tool = kit.find_tool(called_name)
                if tool is not None:
                    return kit, tool
        raise UnknownName(f"unknown tool {called_name!r}: no toolkit in the catalog has a tool called that")

    def normalise_outcome(self, text: str) -> str | None:
        """The outcome id that free text names ("Financial Loss: ...", "financial_loss"), or None."""
        for key in _candidate_keys(text):
            if key in self._outcome_keys:
                return self._outcome_keys[key]
        return None

    def toolkit_outcomes(self, name: str) -> list[str]:
        """The outcome ids that a toolkit's inline risks name, in order, without repeats."""
        ids = (self.normalise_outcome(risk) for risk in self.toolkit(name).risks)
        return list(dict.fromkeys(i for i in ids if i is not None))

    def toolkit_prompt_spec(self, names: Iterable[str], *, detailed: bool = False) -> str:
        """The named toolkits' tools as compact prompt text (see `prompt_spec.render_toolkits`)."""
        return render_toolkits([self.toolkit(name) for name in names], detailed=detailed)


def _candidate_keys(text: str) -> list[str]:
    heads = [text]
    for start in _TYPE_ENDS:
        head = text.split(start, 1)[0]
        if head.strip():
            heads.append(head)
    return [k for k in dict.fromkeys(outcome_key(h) for h in heads) if k]
