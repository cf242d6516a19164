"""Chat completions with a model's configured MCP tools (`mcp.models.<name>`, docs/mcp.md).

`with_tools` adds the servers' tools to a request (named `server__tool`); in `execute` mode, `execute` runs the
tool loop: the model is asked (never streamed), the MCP calls it makes are run and their results sent back, until
it answers without one (or with a call of the client's own, or of a tool that needs approval, which goes back
to the client), at most
`mcp.max_tool_rounds` times with the tools offered and once more without them. The calls made are returned
for the `x-manifold-mcp-calls` response header.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from manifold.errors import InvalidRequestError
from manifold.mcp.manager import McpServer, ToolInfo

Functions = dict[str, tuple[McpServer, ToolInfo]]
CALLS_HEADER = "x-manifold-mcp-calls"


def chat_tools(functions: Functions) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {
                "name": name,
                "description": tool.description or "",
                "parameters": tool.input_schema or {"type": "object", "properties": {}},
            },
        }
        for name, (_, tool) in functions.items()
    ]


def with_tools(raw: dict[str, Any], functions: Functions) -> dict[str, Any]:
    """The request with the MCP tools after its own (400 naming `tools` when one of its own has such a name)."""
    own = raw.get("tools") or []
    for i, tool in enumerate(own if isinstance(own, list) else ()):
        name = (tool.get("function") or {}).get("name") if isinstance(tool, dict) else None
        if name in functions:
            raise InvalidRequestError(
                f"The tool name '{name}' is taken by a configured MCP tool of this model; rename yours.",
                param=f"tools[{i}].function.name",
                code="invalid_value",
            )
    if not functions:
        return raw
    return {**raw, "tools": [*own, *chat_tools(functions)]}


def add_usage(total: dict[str, Any] | None, usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Two chat `usage` objects summed (the turns of one tool loop)."""
    if not isinstance(usage, dict):
        return total
    if total is None:
        return json.loads(json.dumps(usage))  # type: ignore[no-any-return]
    out: dict[str, Any] = dict(total)
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        out[key] = int(out.get(key) or 0) + int(usage.get(key) or 0)
    for key, inner in (("prompt_tokens_details", "cached_tokens"), ("completion_tokens_details", "reasoning_tokens")):
        a, b = out.get(key) or {}, usage.get(key) or {}
        if a or b:
            out[key] = {**a, inner: int(a.get(inner) or 0) + int(b.get(inner) or 0)}
    return out


async def run_call(server: McpServer, tool: str, arguments: str) -> tuple[str, bool]:
    """Run one call from its JSON arguments: (what the model reads, whether it succeeded)."""
    try:
        parsed = json.loads(arguments or "{}")
    except ValueError as exc:
        return f"Error: the arguments are not valid JSON: {exc}", False
    if not isinstance(parsed, dict):
        return "Error: the arguments must be a JSON object.", False
    outcome = await server.call(tool, parsed)
    if outcome.error is not None:
        return f"Error: {outcome.error}", False
    return outcome.output or "", True


def _runs_here(functions: Functions, name: Any) -> bool:
    """Whether the gateway runs the call itself: a configured tool that does not need approval (the client, who
    gets the call back, approves by running it through `POST /mcp/tools/call`)."""
    found = functions.get(name) if isinstance(name, str) else None
    return found is not None and not found[0].requires_approval(found[1].name)


async def execute(
    raw: dict[str, Any],
    functions: Functions,
    chat: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]],
    max_rounds: int,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The tool loop: the final completion (its usage the sum of every turn's) and the calls made."""
    base = {k: v for k, v in raw.items() if k not in ("stream", "stream_options")}
    own_tools = list(raw.get("tools") or [])
    messages = list(raw["messages"])
    made: list[dict[str, Any]] = []
    usage: dict[str, Any] | None = None
    for round_ in range(max_rounds + 1):
        tools = [*own_tools, *(chat_tools(functions) if round_ < max_rounds else [])]
        body = {**base, "messages": messages}
        if tools:
            body["tools"] = tools
        else:
            body.pop("tools", None)
            body.pop("tool_choice", None)
            body.pop("parallel_tool_calls", None)
        completion = await chat(body)
        usage = add_usage(usage, completion.get("usage"))
        choices = completion.get("choices") or [{}]
        message = choices[0].get("message") or {}
        calls = message.get("tool_calls") or []
        mine = [c for c in calls if _runs_here(functions, (c.get("function") or {}).get("name"))]
        if not mine or len(mine) != len(calls):
            break  # an answer, a call of the client's own or one that needs approval: the client gets it
        messages.append({"role": "assistant", "content": message.get("content"), "tool_calls": calls})
        for call in mine:
            name = call["function"]["name"]
            server, tool = functions[name]
            text, ok = await run_call(server, tool.name, call["function"].get("arguments") or "")
            made.append({"name": name, "status": "completed" if ok else "failed"})
            messages.append({"role": "tool", "tool_call_id": call.get("id"), "content": text})
    if usage is not None:
        completion["usage"] = usage
    return completion, made
