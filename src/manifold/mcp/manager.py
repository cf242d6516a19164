"""Connections to the configured MCP servers (docs/mcp.md), through the official `mcp` SDK's client side.

Each server is connected in the background at start-up (the gateway serves without it), kept connected (a ping
every few seconds notices a server that is gone; a stdio server that died is started again) and reconnected
with a doubling backoff. Its tool list is read on connect and read again on `notifications/tools/list_changed`.
A call runs in a task of its own so that a timeout, a lost connection or the caller leaving each stop it at once:
a call in flight when its server goes away fails with an error, never hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Collection
from typing import TYPE_CHECKING, Any, NamedTuple

from manifold.access.principal import CURRENT_PRINCIPAL
from manifold.config import McpHttpServer, McpServerSettings, McpSettings, McpSseServer, McpStdioServer

if TYPE_CHECKING:
    from mcp import ClientSession

log = logging.getLogger("manifold.mcp")
PING_INTERVAL_S = 5.0
PING_TIMEOUT_S = 10.0
TRUNCATION_MARKER = "\n[output truncated by Manifold: {shown} of {total} bytes shown]"
NAMESPACE = "__"  # `server__tool`: a configured server's tool as chat completions and the /mcp endpoint name it


def allowed_servers() -> frozenset[str] | None:
    """The labels of the configured servers the request's key may use (`mcp_servers`, docs/mcp.md "security
    model"); None: every one (the master key, a key without the field, or access control off). A server a key
    may not use is treated everywhere exactly as one that is not configured."""
    principal = CURRENT_PRINCIPAL.get()
    return None if principal is None else principal.mcp_servers


def server_allowed(allowed: Collection[str] | None, label: str) -> bool:
    """Whether `allowed` (`mcp_servers` entries: labels and `label__tool`; None: all) lets a key use any of the
    server's tools."""
    return allowed is None or label in allowed or any(e.startswith(label + NAMESPACE) for e in allowed)


def tool_allowed(allowed: Collection[str] | None, label: str, tool: str) -> bool:
    """Whether `allowed` lets a key use the tool `tool` of the server `label`."""
    return allowed is None or label in allowed or function_name(label, tool) in allowed


def function_name(server_label: str, tool: str) -> str:
    """The function name a model calls an MCP tool by: `label__tool`, with what a function name cannot hold
    replaced by `_`, at most 64 characters."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", f"{server_label}{NAMESPACE}{tool}")[:64]


class ToolInfo(NamedTuple):
    """A tool as an MCP server lists it (the shape of the Responses API's `MCPListToolsTool`)."""

    name: str
    description: str | None
    input_schema: dict[str, Any]
    annotations: dict[str, Any] | None

    def listed(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "input_schema": self.input_schema,
            "annotations": self.annotations,
        }


class ToolOutcome(NamedTuple):
    """What one call gave: `output` (text, truncated to the server's limit) or `error` (why it failed), and
    for errors, whether the tool itself reported it (`tool_error`) or the call could not be made."""

    output: str | None
    error: str | None = None
    tool_error: bool = False


class McpUnavailable(Exception):
    """The server cannot be used now (not connected yet, down, or its tools could not be listed)."""


def truncate(text: str, limit: int) -> str:
    """`text` cut to `limit` UTF-8 bytes, with a marker saying how much was shown."""
    data = text.encode()
    if len(data) <= limit:
        return text
    shown = data[:limit].decode(errors="ignore")
    return shown + TRUNCATION_MARKER.format(shown=len(shown.encode()), total=len(data))


def _outcome(result: Any, limit: int) -> ToolOutcome:
    """A `CallToolResult` as text: its text blocks joined; other blocks named; structured content as JSON when
    there is no text."""
    parts: list[str] = []
    for block in result.content or ():
        kind = getattr(block, "type", None)
        if kind == "text":
            parts.append(block.text)
        elif kind in ("image", "audio"):
            parts.append(f"[{kind}: {getattr(block, 'mime_type', 'unknown type')}]")
        elif kind == "resource_link":
            parts.append(f"[resource: {getattr(block, 'uri', '')}]")
        elif kind == "resource":
            resource = block.resource
            parts.append(getattr(resource, "text", None) or f"[resource: {getattr(resource, 'uri', '')}]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    text = truncate("\n".join(parts), limit)
    if result.is_error:
        return ToolOutcome(None, text or "The tool reported an error.", tool_error=True)
    return ToolOutcome(text)


def _describe(exc: BaseException) -> str:
    """An exception (or the first of a group) in a line, for `/health/ready` and call errors."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    error = getattr(exc, "error", None)  # MCPError carries ErrorData
    message = getattr(error, "message", None) or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {message}"[:500]


class McpServer:
    """One configured server: its connection, state and tools."""

    def __init__(self, label: str, settings: McpServerSettings, mcp: McpSettings) -> None:
        self.label = label
        self.settings = settings
        self.mcp = mcp
        self.state = "connecting"  # connecting | ready | reconnecting | stopped
        self.error: str | None = None
        self.tools: list[ToolInfo] = []
        self.connects = 0
        self._session: ClientSession | None = None
        self._lost = asyncio.Event()
        self._refresh = asyncio.Event()
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- policy ----------------------------------------------------------------------------------------------

    def allows(self, tool: str) -> bool:
        allowed = self.settings.allowed_tools
        return allowed is None or tool in allowed

    def requires_approval(self, tool: str) -> bool:
        """Whether the configuration demands approval for the tool (a request may ask for more, never less)."""
        policy = self.settings.require_approval
        if isinstance(policy, dict):
            return policy.get(tool, "never") == "always"
        return policy == "always"

    def detail(self) -> dict[str, Any]:
        return {
            "server_label": self.label,
            "transport": type(self.settings).__struct_config__.tag,
            "state": self.state,
            "tools": len(self.tools),
            "connects": self.connects,
            "error": self.error,
        }

    # -- running ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"mcp:{self.label}")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.state = "stopped"
        self._session = None

    async def wait_ready(self, within_s: float) -> bool:
        """Wait (at most `within_s`) for the server to be connected; whether it is."""
        if self.state == "ready":
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), within_s)
        return self.state == "ready"

    async def _run(self) -> None:
        delay = self.mcp.reconnect_backoff_s
        while True:
            started = time.monotonic()
            try:
                await self._connected_once()
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # noqa: BLE001 (an ExceptionGroup from the SDK's task groups, too)
                self.error = _describe(exc)
                log.warning("mcp server %s: %s", self.label, self.error)
            self._session = None
            self._ready.clear()
            self._lost.set()
            self.state = "reconnecting"
            if time.monotonic() - started > 4 * delay:
                delay = self.mcp.reconnect_backoff_s  # it stayed up a while: start the backoff again
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.mcp.reconnect_backoff_max_s)

    async def _connected_once(self) -> None:
        from mcp import ClientSession

        async with contextlib.AsyncExitStack() as stack:
            read, write = await stack.enter_async_context(self._transport())
            session = await stack.enter_async_context(ClientSession(read, write, message_handler=self._on_message))
            async with asyncio.timeout(self.settings.connect_timeout_s):
                await session.initialize()
                await self._list(session)
            self._lost = asyncio.Event()
            self._session = session
            self.state, self.error = "ready", None
            self.connects += 1
            self._ready.set()
            log.info("mcp server %s: connected, %d tools", self.label, len(self.tools))
            await self._watch(session)

    async def _watch(self, session: ClientSession) -> None:
        """Until the connection is lost: refresh the tool list when told to, ping between."""
        while True:
            lost = asyncio.ensure_future(self._lost.wait())
            refresh = asyncio.ensure_future(self._refresh.wait())
            _, pending = await asyncio.wait({lost, refresh}, timeout=PING_INTERVAL_S, return_when="FIRST_COMPLETED")
            for fut in pending:
                fut.cancel()
            if self._lost.is_set():
                self.error = self.error or "the connection was lost"
                return
            if self._refresh.is_set():
                self._refresh.clear()
                async with asyncio.timeout(self.settings.connect_timeout_s):
                    await self._list(session)
                log.info("mcp server %s: tool list changed, %d tools", self.label, len(self.tools))
                continue
            async with asyncio.timeout(PING_TIMEOUT_S):
                await session.send_ping()

    def _transport(self) -> contextlib.AbstractAsyncContextManager[Any]:
        s = self.settings
        if isinstance(s, McpStdioServer):
            from mcp.client.stdio import StdioServerParameters, stdio_client

            return stdio_client(StdioServerParameters(command=s.command, args=s.args, env=s.env or None, cwd=s.cwd))
        if isinstance(s, McpSseServer):
            from mcp.client.sse import sse_client

            return sse_client(s.url, headers=s.headers or None, timeout=s.connect_timeout_s)
        assert isinstance(s, McpHttpServer)
        return _streamable_http(s.url, s.headers)

    async def _list(self, session: ClientSession) -> None:
        tools: list[ToolInfo] = []
        cursor: str | None = None
        while True:
            if cursor is None:
                result = await session.list_tools()
            else:
                from mcp.types import PaginatedRequestParams

                result = await session.list_tools(params=PaginatedRequestParams(cursor=cursor))
            for tool in result.tools:
                annotations = tool.annotations.model_dump(exclude_none=True) if tool.annotations else None
                tools.append(ToolInfo(tool.name, tool.description, dict(tool.input_schema), annotations or None))
            cursor = result.next_cursor
            if not cursor:
                break
        self.tools = [t for t in tools if self.allows(t.name)]

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, Exception):
            log.warning("mcp server %s: transport error: %s", self.label, _describe(message))
            return
        method = getattr(message, "method", None)
        if method == "notifications/tools/list_changed":
            self._refresh.set()

    # -- calling ---------------------------------------------------------------------------------------------

    def tool(self, name: str) -> ToolInfo | None:
        return next((t for t in self.tools if t.name == name), None)

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolOutcome:
        """Run one tool. Every failure is an outcome with an `error` (never an exception but cancellation)."""
        if not self.allows(name):
            return ToolOutcome(None, f"Tool '{name}' is not allowed on MCP server '{self.label}'.")
        session = self._session
        if session is None or self.state != "ready":
            why = f" ({self.error})" if self.error else ""
            return ToolOutcome(None, f"MCP server '{self.label}' is not connected{why}.")
        lost = asyncio.ensure_future(self._lost.wait())
        call = asyncio.ensure_future(session.call_tool(name, arguments))
        try:
            done, _ = await asyncio.wait(
                {call, lost}, timeout=self.settings.call_timeout_s, return_when="FIRST_COMPLETED"
            )
        finally:
            lost.cancel()
            if not call.done():
                call.cancel()  # timed out, the server went away, or the caller was cancelled: stop the call
                with contextlib.suppress(BaseException):
                    await call
        if call not in done:
            if self._lost.is_set() or lost in done:
                return ToolOutcome(None, f"MCP server '{self.label}' went away during the call.")
            return ToolOutcome(None, f"The call to '{name}' timed out after {self.settings.call_timeout_s:g} s.")
        try:
            result = call.result()
        except Exception as exc:  # noqa: BLE001 (any failure of the call is its outcome)
            if "Connection closed" in str(exc) or isinstance(exc, OSError):
                self._lost.set()  # reconnect now, not at the next ping
                return ToolOutcome(None, f"MCP server '{self.label}' went away during the call.")
            return ToolOutcome(None, _describe(exc))
        return _outcome(result, self.settings.max_output_bytes)


@contextlib.asynccontextmanager
async def _streamable_http(url: str, headers: dict[str, str]) -> AsyncIterator[Any]:
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    async with (
        create_mcp_http_client(headers=headers or None) as client,
        streamable_http_client(url, http_client=client) as streams,
    ):
        yield streams[0], streams[1]


class McpManager:
    """Every configured server, by label."""

    def __init__(self, servers: dict[str, McpServerSettings], mcp: McpSettings) -> None:
        self.settings = mcp
        self.servers = {label: McpServer(label, s, mcp) for label, s in servers.items()}

    def start(self) -> None:
        for server in self.servers.values():
            server.start()

    async def aclose(self) -> None:
        await asyncio.gather(*(s.aclose() for s in self.servers.values()))

    def get(self, label: str, allowed: Collection[str] | None = None) -> McpServer | None:
        """The server `label`; None when there is none or `allowed` (`mcp_servers` entries; None: all) leaves out
        all its tools."""
        if not server_allowed(allowed, label):
            return None
        return self.servers.get(label)

    def labels(self, allowed: Collection[str] | None = None) -> list[str]:
        """The configured servers' labels that `allowed` (None: all) leaves in."""
        return [label for label in self.servers if server_allowed(allowed, label)]

    def client_url_allowed(self, url: str) -> bool:
        return any(fnmatch.fnmatchcase(url, pattern) for pattern in self.settings.allow_client_servers)

    def readiness(self) -> list[dict[str, Any]]:
        return [s.detail() for s in self.servers.values()]

    def functions(
        self, labels: list[str] | None = None, allowed: Collection[str] | None = None
    ) -> dict[str, tuple[McpServer, ToolInfo]]:
        """The tools of the servers named (None: all) that `allowed` leaves in (None: all), by their namespaced
        function name; a server that is not connected offers none."""
        out: dict[str, tuple[McpServer, ToolInfo]] = {}
        for label in self.servers if labels is None else labels:
            server = self.get(label, allowed)
            if server is None or server.state != "ready":
                continue
            for tool in server.tools:
                if tool_allowed(allowed, label, tool.name):
                    out[function_name(label, tool.name)] = (server, tool)
        return out


@contextlib.asynccontextmanager
async def client_server(label: str, url: str, headers: dict[str, str], mcp: McpSettings) -> AsyncIterator[McpServer]:
    """A server a request named by `server_url` (allowed by `mcp.allow_client_servers`): connected for the
    request's lifetime only."""
    server = McpServer(label, McpHttpServer(url=url, headers=headers, require_approval="never"), mcp)
    server.start()
    try:
        yield server
    finally:
        await server.aclose()
