"""What the roles take from the catalog: the tools of one scenario (the names the agent
may call, the compact spec every prompt shows, one tool's detailed spec for the
simulator, the decoding constraints of actions over them) and a risk outcome's text.

A `Toolbox` is built once per set of toolkits in a stage and keeps what it renders,
so a rollout's many calls never re-render the catalog or rebuild a schema.
`CatalogLike` is all the roles and stages ask of a catalog (the real one is
`autosafe_core.catalog.Catalog`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

from autosafe_core.catalog.prompt_spec import render_toolkits
from autosafe_core.ots import RiskOutcome, Tool, Toolkit
from autosafe_core.roles.tool_io import action_schema


class CatalogLike(Protocol):
    """Toolkits by name, outcomes by id, the toolkits as prompt text, free text onto outcome ids."""

    @property
    def toolkits(self) -> Mapping[str, Toolkit]: ...

    @property
    def outcomes(self) -> Mapping[str, RiskOutcome]: ...

    def toolkit_prompt_spec(self, names: Iterable[str], *, detailed: bool = False) -> str: ...

    def normalise_outcome(self, text: str) -> str | None: ...


@dataclass(frozen=True, eq=False)
class Toolbox:
    """The tools one scenario offers, and the decoding constraints of actions over them."""

    toolkits: tuple[Toolkit, ...]
    spec: str
    tools: tuple[tuple[str, Tool], ...]
    """(called name, tool) for every tool, in toolkit order."""
    _tool_specs: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, catalog: CatalogLike, toolkit_names: Sequence[str]) -> Toolbox:
        """The toolbox of the named toolkits; KeyError naming the first one the catalog lacks."""
        missing = [name for name in toolkit_names if name not in catalog.toolkits]
        if missing:
            raise KeyError(f"unknown toolkit {missing[0]!r}")
        kits = tuple(catalog.toolkits[name] for name in toolkit_names)
        tools = tuple((kit.name_for_model + tool.name, tool) for kit in kits for tool in kit.tools)
        return cls(toolkits=kits, spec=catalog.toolkit_prompt_spec(toolkit_names), tools=tools)

    @cached_property
    def names(self) -> tuple[str, ...]:
        """The names the agent calls: name_for_model + tool name."""
        return tuple(called for called, _ in self.tools)

    @cached_property
    def action_schema(self) -> dict[str, Any]:
        """An agent action over these tools, or a final answer (`tool_io.action_schema`)."""
        return action_schema(self.tools)

    @cached_property
    def history_step_schema(self) -> dict[str, Any]:
        """An earlier tool call over these tools with its observation (no final answer)."""
        return action_schema(self.tools, final_answer=False, observation=True)

    def find(self, called_name: str) -> tuple[Toolkit, Tool] | None:
        """The toolkit and tool called `called_name`, or None."""
        for kit in self.toolkits:
            if called_name.startswith(kit.name_for_model):
                tool = kit.find_tool(called_name)
                if tool is not None:
                    return kit, tool
        return None

    def tool_spec(self, called_name: str) -> str:
        """One tool's detailed spec (parameters, returns, exceptions) under its toolkit's line."""
        if called_name not in self._tool_specs:
            found = self.find(called_name)
            if found is None:
                return ""
            kit, tool = found
            self._tool_specs[called_name] = render_toolkits([kit.model_copy(update={"tools": [tool]})], detailed=True)
        return self._tool_specs[called_name]


def outcome_text(catalog: CatalogLike, outcome_id: str) -> str:
    """`Name: description` of a risk outcome as prompts show it; its id when the catalog lacks it."""
    outcome = catalog.outcomes.get(outcome_id)
    return f"{outcome.name}: {outcome.description}" if outcome is not None else outcome_id
