"""The catalog's Terminal toolkit, for real: each tool call becomes a command in a `Sandbox`.

`call(sandbox, action, toolbox)` checks the call against the toolkit spec (the
simulator's own check, so a bad call reads the same in both worlds), runs it, and
returns the observation as the agent reads it: one line of JSON with the tool's
returns (`output` and `exit_code`, `content`, `bytes_written`, `deleted`, `entries`)
or an `error` naming the spec's exception. Paths may be absolute or home-relative
(`~/x` or `x`). Arguments reach the shell as positional parameters, never spliced into
a script. Long outputs keep their head and tail.

Knows nothing about tasks, models or judging.
"""

from __future__ import annotations

from typing import Any

from autosafe_core.evaluation.sandbox import CommandResult, Sandbox
from autosafe_core.ots import Action
from autosafe_core.roles.simulator import invalid_call
from autosafe_core.roles.tool_io import fields_text
from autosafe_core.roles.toolbox import Toolbox

TOOLKIT = "Terminal"
OBSERVATION_CHARS = 2000
"""An observation's output or content, at most: it shares the agent's context with everything else."""
MAX_ENTRIES = 50

_NOT_FOUND, _INVALID = 3, 4
_PATH = 'p=$1; case $p in "~") p=$HOME;; "~/"*) p=$HOME/${p#"~/"};; esac; '
"""Every file tool's first line: `$p` is the path argument with `~` expanded."""

_READ = _PATH + (
    f'if [ ! -e "$p" ]; then echo "no such file: $1"; exit {_NOT_FOUND}; fi; '
    f'if [ -d "$p" ]; then echo "$1 is a directory"; exit {_INVALID}; fi; '
    f'if head -c "$2" -- "$p" | grep -qaP "\\x00"; then echo "$1 is not a text file"; exit {_INVALID}; fi; '
    'head -c "$2" -- "$p"'
)
_WRITE = _PATH + (
    f'd=$(dirname -- "$p"); if [ ! -d "$d" ]; then echo "no such directory: $d"; exit {_INVALID}; fi; '
    'if [ "$2" = append ]; then cat >> "$p"; else cat > "$p"; fi'
)
_DELETE = _PATH + (
    f'if [ ! -e "$p" ] && [ ! -L "$p" ]; then echo "no such file or directory: $1"; exit {_NOT_FOUND}; fi; '
    'n=$(find "$p" 2>/dev/null | wc -l); '
    'if [ -d "$p" ] && [ ! -L "$p" ]; then '
    f'  if [ "$2" = recursive ]; then rm -rf -- "$p" || exit {_INVALID}; '
    f'  else rmdir -- "$p" 2>/dev/null || {{ echo "$1 is not empty; set recursive"; exit {_INVALID}; }}; fi; '
    f'else rm -f -- "$p" || exit {_INVALID}; fi; '
    'echo "$n"'
)
_LIST = _PATH + (
    f'if [ ! -d "$p" ]; then echo "no such directory: $1"; exit {_NOT_FOUND}; fi; '
    'find "$p" -mindepth 1 -maxdepth 1 -printf "%f\\t%y\\t%s\\t%TY-%Tm-%TdT%TH:%TM\\n" | sort'
)


def call(sandbox: Sandbox, action: Action, toolbox: Toolbox) -> str:
    """Run one tool call of the Terminal toolkit in `sandbox`; the observation as text."""
    return fields_text(observe(sandbox, action, toolbox))


def observe(sandbox: Sandbox, action: Action, toolbox: Toolbox) -> dict[str, Any]:
    """The tool's returns, or {"error": "<Exception>: why"}."""
    reason = invalid_call(action, toolbox)
    if reason is not None:
        return _error("InvalidRequestException", reason)
    name = action.tool.removeprefix(TOOLKIT)
    args = action.tool_input
    if name == "Execute":
        return _execute(sandbox, args)
    path = args.get("path")
    if not isinstance(path, str) or not path.strip():
        return _error("InvalidRequestException", "path must be a non-empty string")
    if name == "ReadFile":
        result = sandbox.run(_READ, args=[path, str(_positive_int(args.get("max_bytes"), 100_000))])
        return _error_of(result) or {"content": clip(result.output)}
    if name == "WriteFile":
        content = args.get("content")
        if not isinstance(content, str):
            return _error("InvalidRequestException", "content must be a string")
        mode = "append" if args.get("append") is True else "overwrite"
        result = sandbox.run(_WRITE, args=[path, mode], stdin=content.encode())
        return _error_of(result) or {"bytes_written": len(content.encode())}
    if name == "DeletePath":
        mode = "recursive" if args.get("recursive") is True else "single"
        result = sandbox.run(_DELETE, args=[path, mode])
        return _error_of(result) or {"deleted": int(result.output.split()[-1]) if result.output.split() else 0}
    if name == "ListDirectory":
        result = sandbox.run(_LIST, args=[path])
        return _error_of(result) or {"entries": _entries(result.output, args.get("show_hidden") is True)}
    return _error("InvalidRequestException", f"tool {action.tool!r} is not implemented in the sandbox")


def _execute(sandbox: Sandbox, args: dict[str, Any]) -> dict[str, Any]:
    command = args.get("command")
    if not isinstance(command, str) or not command.strip():
        return _error("InvalidRequestException", "the command is empty")
    cwd = args.get("working_dir") or "~"
    if not isinstance(cwd, str):
        return _error("InvalidRequestException", "working_dir must be a string")
    cwd = "/home/user" + cwd[1:] if cwd.startswith("~") else cwd
    timeout = _positive_int(args.get("timeout_s"), 60)
    check = sandbox.run('test -d "$1"', args=[cwd])
    if check.exit_code != 0:
        return _error("InvalidRequestException", f"the working directory {cwd} does not exist")
    result = sandbox.run(command, cwd=cwd, timeout_s=timeout)
    output = result.output
    if result.timed_out:
        output += f"\n[killed: still running after {min(timeout, sandbox.limits.wall_s):g} s]"
    if result.over_quota:
        output += "\n[killed: the workspace is over its disk quota]"
    code = 124 if result.timed_out else 128 + -result.exit_code if result.exit_code < 0 else result.exit_code
    return {"output": clip(output), "exit_code": code}


def _error_of(result: CommandResult) -> dict[str, Any] | None:
    if result.exit_code == 0 and not result.timed_out:
        return None
    if result.exit_code == _NOT_FOUND:
        return _error("NotFoundException", result.output.strip())
    detail = result.output.strip() or ("timed out" if result.timed_out else f"exit status {result.exit_code}")
    return _error("InvalidRequestException", clip(detail, 300))


def _entries(listing: str, show_hidden: bool) -> list[dict[str, Any]]:
    entries = []
    for line in listing.splitlines():
        parts = line.split("\t")
        if len(parts) != 4 or (parts[0].startswith(".") and not show_hidden):
            continue
        name, kind, size, modified = parts
        entries.append({"name": name, "is_dir": kind == "d", "size_bytes": int(size), "modified": modified})
    if len(entries) > MAX_ENTRIES:
        entries = [*entries[:MAX_ENTRIES], {"name": f"... {len(entries) - MAX_ENTRIES} more entries"}]
    return entries


def _error(exception: str, reason: str) -> dict[str, Any]:
    return {"error": f"{exception}: {reason}"}


def _positive_int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


def clip(text: str, limit: int = OBSERVATION_CHARS) -> str:
    """`text` within `limit` characters: its head and tail, with how much was cut between."""
    if len(text) <= limit:
        return text
    tail = limit // 4
    cut = len(text) - limit
    return f"{text[: limit - tail]}\n[... {cut} characters cut ...]\n{text[-tail:]}"
