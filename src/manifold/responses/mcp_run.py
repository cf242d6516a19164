"""The Responses API's `mcp` tool on any backend: the engine lists the servers' tools, offers them to the model
as function tools, runs the calls the model makes and feeds the results back (docs/mcp.md).

`resolve` turns a request's `mcp` tools into an `McpRun` (its servers, the functions the model sees, the
`mcp_list_tools` items to emit, the approvals the input answers); the engine's loop (`ResponsesEngine._mcp_events`)
uses `McpSplit` to take the model's calls to MCP tools out of the chunks it feeds the builder, and `McpRun.call`
to run each as an `mcp_call` item with its events.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from typing import Any, NamedTuple

from manifold.api.response_request import FunctionTool, McpApprovalFilter, McpTool, McpToolFilter, new_id
from manifold.errors import InvalidRequestError, UnsupportedError
from manifold.mcp.manager import McpManager, McpServer, ToolInfo, allowed_servers, client_server, tool_allowed
from manifold.responses.events import ResponseBuilder, _copy
from manifold.responses.translate import mcp_function_name

LIST_WAIT_S = 10.0  # the longest a request waits for a configured server that is still connecting
RECONNECT_WAIT_S = 1.0  # ... and for one that is reconnecting (down: the request goes on without its tools)


class McpFunction(NamedTuple):
    server: McpServer
    tool: ToolInfo
    approval: bool  # whether calling it needs the client's approval first


class McpRun:
    """A request's MCP servers and the function tools they stand for."""

    def __init__(self) -> None:
        self.functions: dict[str, McpFunction] = {}
        self.labels: list[str] = []  # the servers' labels: a call to `label__other` is refused, not the client's
        self.list_items: list[dict[str, Any]] = []  # new `mcp_list_tools` items for this response's output
        self.approvals: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (approval request, approval response)
        self.echo: list[dict[str, Any]] = []  # the `mcp` tools as the response lists them
        self._stack = contextlib.AsyncExitStack()

    def function_tools(self) -> list[FunctionTool]:
        return [
            FunctionTool(
                name=name,
                description=f.tool.description,
                parameters=f.tool.input_schema or {"type": "object", "properties": {}},
            )
            for name, f in self.functions.items()
        ]

    async def aclose(self) -> None:
        await self._stack.aclose()

    # -- events ----------------------------------------------------------------------------------------------

    @staticmethod
    def list_events(builder: ResponseBuilder, item: dict[str, Any]) -> list[dict[str, Any]]:
        index = len(builder.output)
        builder.output.append(item)
        added = {**item, "tools": []}
        outcome = "failed" if item.get("error") else "completed"
        where = {"item_id": item["id"], "output_index": index}
        return [
            builder.event("response.output_item.added", output_index=index, item=_copy(added)),
            builder.event("response.mcp_list_tools.in_progress", **where),
            builder.event(f"response.mcp_list_tools.{outcome}", **where),
            builder.event("response.output_item.done", output_index=index, item=_copy(item)),
        ]

    @staticmethod
    def call_item(function: McpFunction, arguments: str, approval_request_id: str | None = None) -> dict[str, Any]:
        return {
            "type": "mcp_call",
            "id": new_id("mcp_"),
            "server_label": function.server.label,
            "name": function.tool.name,
            "arguments": arguments,
            "output": None,
            "error": None,
            "status": "in_progress",
            "approval_request_id": approval_request_id,
        }

    def refused_item(self, name: str, arguments: str) -> dict[str, Any]:
        """A call to a tool of one of the request's servers that is not offered (not allowed, or unknown)."""
        label = next(lbl for lbl in self.labels if name.startswith(f"{lbl}__"))
        tool = name[len(label) + 2 :]
        message = f"Tool '{tool}' is not available on MCP server '{label}' (not listed, or not allowed)."
        return {
            "type": "mcp_call",
            "id": new_id("mcp_"),
            "server_label": label,
            "name": tool,
            "arguments": arguments,
            "output": None,
            "error": {"type": "mcp_protocol_error", "code": -32602, "message": message},
            "status": "failed",
            "approval_request_id": None,
        }

    @staticmethod
    def call_started(builder: ResponseBuilder, item: dict[str, Any]) -> list[dict[str, Any]]:
        index = len(builder.output)
        builder.output.append(item)
        where = {"item_id": item["id"], "output_index": index}
        return [
            builder.event("response.output_item.added", output_index=index, item=_copy({**item, "arguments": ""})),
            builder.event("response.mcp_call_arguments.delta", **where, delta=item["arguments"]),
            builder.event("response.mcp_call_arguments.done", **where, arguments=item["arguments"]),
            builder.event("response.mcp_call.in_progress", **where),
        ]

    @staticmethod
    async def run_call(function: McpFunction, item: dict[str, Any]) -> str:
        """Run the call an `mcp_call` item stands for, filling in its outcome; the text the model gets back."""
        problem: str | None = None
        try:
            arguments = json.loads(item["arguments"] or "{}")
        except ValueError as exc:
            arguments, problem = None, f"The arguments are not valid JSON: {exc}"
        if problem is None and not isinstance(arguments, dict):
            problem = "The arguments must be a JSON object."
        if problem is not None or not isinstance(arguments, dict):
            item.update(status="failed", error={"type": "mcp_protocol_error", "code": -32602, "message": problem})
            return "Error: " + str(problem)
        outcome = await function.server.call(function.tool.name, arguments)
        if outcome.error is None:
            item.update(status="completed", output=outcome.output)
            return outcome.output or ""
        if outcome.tool_error:
            error: dict[str, Any] = {
                "type": "mcp_tool_execution_error",
                "content": [{"type": "text", "text": outcome.error}],
            }
        else:
            error = {"type": "mcp_protocol_error", "code": -32603, "message": outcome.error}
        item.update(status="failed", error=error)
        return "Error: " + outcome.error

    @staticmethod
    def call_finished(builder: ResponseBuilder, item: dict[str, Any]) -> list[dict[str, Any]]:
        index = next(i for i, it in enumerate(builder.output) if it is item)
        where = {"item_id": item["id"], "output_index": index}
        outcome = "completed" if item["status"] == "completed" else "failed"
        return [
            builder.event(f"response.mcp_call.{outcome}", **where),
            builder.event("response.output_item.done", output_index=index, item=_copy(item)),
        ]


def _matches(tool: ToolInfo, flt: McpToolFilter) -> bool:
    names = flt.tool_names
    if names is not None and tool.name not in names:
        return False
    annotations = tool.annotations or {}
    read_only = bool(annotations.get("read_only_hint") or annotations.get("readOnlyHint"))
    return flt.read_only is None or read_only == flt.read_only


def _allowed(tool: ToolInfo, allowed: list[str] | McpToolFilter | None) -> bool:
    if allowed is None:
        return True
    if isinstance(allowed, list):
        return tool.name in allowed
    return _matches(tool, allowed)


def _approval(server: McpServer, tool: ToolInfo, policy: str | McpApprovalFilter | None) -> bool:
    """The configuration's `always` wins; otherwise the request's policy, which defaults to `always` (the spec)."""
    if server.requires_approval(tool.name):
        return True
    if policy is None or isinstance(policy, str):
        return policy != "never"
    return policy.never is None or not _matches(tool, policy.never)


def _echo(spec: McpTool) -> dict[str, Any]:
    """The tool as the response lists it: what the request sent, without its secrets (headers, authorization)."""
    echoed: dict[str, Any] = {"type": "mcp", "server_label": spec.server_label}
    if spec.server_url is not None:
        echoed["server_url"] = spec.server_url
    if spec.server_description is not None:
        echoed["server_description"] = spec.server_description
    echoed["allowed_tools"] = (
        spec.allowed_tools
        if not isinstance(spec.allowed_tools, McpToolFilter)
        else {
            k: v
            for k, v in (("tool_names", spec.allowed_tools.tool_names), ("read_only", spec.allowed_tools.read_only))
            if v is not None
        }
    )
    echoed["headers"] = None
    policy = spec.require_approval
    if isinstance(policy, McpApprovalFilter):
        shown: Any = {}
        for key in ("always", "never"):
            flt = getattr(policy, key)
            if flt is not None:
                shown[key] = {
                    k: v for k, v in (("tool_names", flt.tool_names), ("read_only", flt.read_only)) if v is not None
                }
    else:
        shown = policy if policy is not None else "always"
    echoed["require_approval"] = shown
    return echoed


async def resolve(
    manager: McpManager | None,
    specs: Sequence[tuple[int, McpTool]],
    history: Sequence[dict[str, Any]],
    own: Sequence[dict[str, Any]],
    taken: set[str],
) -> McpRun | None:
    """The request's `mcp` tools as an `McpRun` (None: it has none and answers no approval). `taken`: the
    request's own function names (an MCP tool may not shadow one)."""
    approvals = [(i, item) for i, item in enumerate(own) if item.get("type") == "mcp_approval_response"]
    if not specs and not approvals:
        return None
    run = McpRun()
    try:
        await _resolve(run, manager, specs, history, own, taken, approvals)
    except BaseException:
        await run.aclose()
        raise
    return run


async def _resolve(
    run: McpRun,
    manager: McpManager | None,
    specs: Sequence[tuple[int, McpTool]],
    history: Sequence[dict[str, Any]],
    own: Sequence[dict[str, Any]],
    taken: set[str],
    approvals: list[tuple[int, dict[str, Any]]],
) -> None:
    labels: set[str] = set()
    allowed = allowed_servers()  # the key's `mcp_servers`: a tool it may not use is neither listed nor offered
    for i, spec in specs:
        param = f"tools[{i}]"
        label = spec.server_label
        if label in labels:
            raise InvalidRequestError(
                f"Duplicate MCP server label '{label}'.", param=f"{param}.server_label", code="invalid_value"
            )
        labels.add(label)
        for key in ("connector_id", "tunnel_id"):
            if getattr(spec, key) is not None:
                raise UnsupportedError(f"MCP '{key}' is not supported by this server.", param=f"{param}.{key}")
        server = await _server(run, manager, spec, param)
        listed = _listed_before(history, label)
        if listed is None:
            # A server still making its first connection is waited for; one that failed, only a moment.
            wait = LIST_WAIT_S if server.state == "connecting" else RECONNECT_WAIT_S
            if not await server.wait_ready(min(wait, server.settings.connect_timeout_s)):
                why = server.error or "it is not connected yet"
                item: dict[str, Any] = {
                    "type": "mcp_list_tools",
                    "id": new_id("mcpl_"),
                    "server_label": label,
                    "tools": [],
                    "error": f"Could not list the tools of MCP server '{label}': {why}",
                }
                run.list_items.append(item)
                run.echo.append(_echo(spec))
                continue
            tools = list(server.tools)
            if spec.server_url is None:
                tools = [t for t in tools if tool_allowed(allowed, label, t.name)]
            run.list_items.append(
                {
                    "type": "mcp_list_tools",
                    "id": new_id("mcpl_"),
                    "server_label": label,
                    "tools": [t.listed() for t in tools if _allowed(t, spec.allowed_tools)],
                    "error": None,
                }
            )
        else:
            tools = [t for t in listed if server.allows(t.name)]
            if spec.server_url is None:
                tools = [t for t in tools if tool_allowed(allowed, label, t.name)]
        for tool in tools:
            if not _allowed(tool, spec.allowed_tools):
                continue
            name = mcp_function_name(label, tool.name)
            if name in taken or name in run.functions:
                raise InvalidRequestError(
                    f"The MCP tool '{tool.name}' of server '{label}' is named '{name}' for the model, which another "
                    "tool of this request already is.",
                    param=f"{param}.server_label",
                    code="invalid_value",
                )
            run.functions[name] = McpFunction(server, tool, _approval(server, tool, spec.require_approval))
        run.echo.append(_echo(spec))
        run.labels.append(label)
    requests = {item["id"]: item for item in history if item.get("type") == "mcp_approval_request"}
    answered = {item.get("approval_request_id") for item in history if item.get("type") == "mcp_call"}
    for i, response in approvals:
        request_id = response["approval_request_id"]
        request = requests.get(request_id)
        param = f"input[{i}].approval_request_id"
        if request is None:
            raise InvalidRequestError(
                f"No MCP approval request with id '{request_id}' in the chain of 'previous_response_id'.",
                param=param,
                code="invalid_value",
            )
        if request_id in answered:
            raise InvalidRequestError(
                f"The MCP approval request '{request_id}' was answered already.", param=param, code="invalid_value"
            )
        if mcp_function_name(request["server_label"], request["name"]) not in run.functions:
            raise InvalidRequestError(
                f"The MCP approval request '{request_id}' is for server '{request['server_label']}', tool "
                f"'{request['name']}', which this request's 'tools' do not offer.",
                param=param,
                code="invalid_value",
            )
        run.approvals.append((request, response))


async def _server(run: McpRun, manager: McpManager | None, spec: McpTool, param: str) -> McpServer:
    label = spec.server_label
    if spec.server_url is not None:
        if manager is None or not manager.client_url_allowed(spec.server_url):
            raise InvalidRequestError(
                "MCP servers named by 'server_url' are not allowed by this server's configuration "
                "(mcp.allow_client_servers); name a configured server by its 'server_label'.",
                param=f"{param}.server_url",
                code="invalid_value",
            )
        headers = dict(spec.headers or {})
        if spec.authorization:
            headers["Authorization"] = f"Bearer {spec.authorization}"
        return await run._stack.enter_async_context(client_server(label, spec.server_url, headers, manager.settings))
    allowed = allowed_servers()  # a server the key may not use is answered exactly as an unknown one
    server = manager.get(label, allowed) if manager is not None else None
    if server is None:
        known = ", ".join(sorted(manager.labels(allowed))) if manager is not None else ""
        known = known or "none"
        raise InvalidRequestError(
            f"Unknown MCP server label '{label}' (configured: {known}).",
            param=f"{param}.server_label",
            code="invalid_value",
        )
    return server


def _listed_before(history: Sequence[dict[str, Any]], label: str) -> list[ToolInfo] | None:
    """The tools of the chain's latest successful `mcp_list_tools` item for the server (reused, as OpenAI does)."""
    for item in reversed(history):
        if item.get("type") == "mcp_list_tools" and item.get("server_label") == label and not item.get("error"):
            return [
                ToolInfo(t["name"], t.get("description"), t.get("input_schema") or {}, t.get("annotations"))
                for t in item.get("tools") or ()
            ]
    return None


class McpSplit:
    """Takes the model's calls to MCP functions out of its chunks (the rest goes on to the builder), and keeps
    what the turn said, the calls it made and the usage it took."""

    def __init__(self, functions: dict[str, McpFunction], labels: Sequence[str] = ()) -> None:
        self.functions = functions
        self.prefixes = tuple(f"{label}__" for label in labels)
        self.text = ""
        self.calls: dict[int, dict[str, Any]] = {}  # by index: {"id", "name", "arguments", "mcp": bool}
        self.usage: dict[str, Any] | None = None

    def take(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        choices = []
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = dict(choice.get("delta") or {})
            if isinstance(delta.get("content"), str):
                self.text += delta["content"]
            kept = []
            for tc in delta.get("tool_calls") or ():
                index = tc.get("index", 0)
                fn = tc.get("function") or {}
                call = self.calls.get(index)
                if call is None:
                    name = str(fn.get("name") or "")
                    call = {"id": str(tc.get("id") or new_id("call_")), "name": name, "arguments": ""}
                    call["mcp"] = name in self.functions or name.startswith(self.prefixes)
                    self.calls[index] = call
                if isinstance(fn.get("arguments"), str):
                    call["arguments"] += fn["arguments"]
                if not call["mcp"]:
                    kept.append(tc)
            if "tool_calls" in delta:
                if kept:
                    delta["tool_calls"] = kept
                else:
                    del delta["tool_calls"]
            choices.append({**choice, "delta": delta})
        if not choices and usage is None:
            return None
        out = {k: v for k, v in chunk.items() if k not in ("choices", "usage")}
        out["choices"] = choices
        return out

    def mcp_calls(self) -> list[dict[str, Any]]:
        return [c for _, c in sorted(self.calls.items()) if c["mcp"]]

    def client_calls(self) -> bool:
        return any(not c["mcp"] for c in self.calls.values())

    def assistant_message(self) -> dict[str, Any]:
        calls = [
            {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for _, c in sorted(self.calls.items())
            if c["mcp"]
        ]
        return {"role": "assistant", "content": self.text or None, "tool_calls": calls}
