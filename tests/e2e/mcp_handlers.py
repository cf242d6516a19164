"""A scripted model for the MCP tests (`provider: python`): it decides its tool calls from the last user message.

The user message holds one directive a line: `CALL <function> <json arguments>` calls the function (in order,
one per turn: the nth call once n-1 tool results follow the user message); `LOOP <function> <json>` calls it
every turn for as long as it is offered; `FORCE <function> <json>` calls it whether offered or not. When the
script is done (or the function is not offered), it answers `DONE` followed by each tool result after the user
message, one a line (`NOT OFFERED <function>` for a call it could not make). `TOOLS` answers the names of the
tools it was offered.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content or () if isinstance(p, dict))


def model(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> Iterator[Any]:
    offered = [t["function"]["name"] for t in tools or () if t.get("type") == "function"]
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    script = _text(messages[last_user]["content"])
    results = [_text(m["content"]) for m in messages[last_user + 1 :] if m["role"] == "tool"]
    if script.strip() == "TOOLS":
        yield "TOOLS " + " ".join(offered)
        return
    calls = []
    for line in script.splitlines():
        kind, _, rest = line.partition(" ")
        if kind in ("CALL", "LOOP", "FORCE"):
            name, _, arguments = rest.partition(" ")
            calls.append((kind, name, arguments or "{}"))
    turn = len(results)
    step = calls[turn] if turn < len(calls) else (calls[-1] if calls and calls[-1][0] == "LOOP" else None)
    if step is not None and (step[1] in offered or step[0] == "FORCE"):
        _, name, arguments = step
        yield {"tool_calls": [{"index": 0, "id": f"call_{turn}", "function": {"name": name, "arguments": ""}}]}
        yield {"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]}
        yield {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}
        return
    lines = ["DONE", *results]
    if step is not None:
        lines.append(f"NOT OFFERED {step[1]}")
    yield "\n".join(lines)
