"""How toolkits read inside a prompt: one signature line and one summary line per tool.

Compact on purpose, since the same text goes to a 135M model on a CPU and to 7B models:
`?` marks an optional parameter, and the detailed form (for the environment simulator)
adds parameter descriptions and exceptions. Knows nothing about catalogs or files.
"""

from __future__ import annotations

from collections.abc import Iterable

from autosafe_core.ots import Tool, Toolkit


def render_toolkits(toolkits: Iterable[Toolkit], *, detailed: bool = False) -> str:
    """The toolkits as prompt text, one block each, separated by a blank line."""
    return "\n\n".join(_render_toolkit(kit, detailed) for kit in toolkits)


def _render_toolkit(kit: Toolkit, detailed: bool) -> str:
    lines = [f"{kit.name_for_model}: {kit.description_for_model}"]
    for tool in kit.tools:
        lines.append(f"- {_signature(kit.name_for_model + tool.name, tool)}")
        lines.append(f"  {tool.summary}")
        if detailed:
            lines.extend(_details(tool))
    return "\n".join(lines)


def _signature(called_name: str, tool: Tool) -> str:
    params = ", ".join(f"{p.name}{'' if p.required else '?'}: {p.type}" for p in tool.parameters)
    signature = f"{called_name}({params})"
    if tool.returns:
        signature += " -> {" + ", ".join(f"{r.name}: {r.type}" for r in tool.returns) + "}"
    return signature


def _details(tool: Tool) -> list[str]:
    lines = [f"    {p.name}: {p.description}" for p in tool.parameters if p.description]
    lines += [f"    returns {r.name}: {r.description}" for r in tool.returns if r.description]
    lines += [f"    raises {e.name}: {e.description}" for e in tool.exceptions]
    return lines
