"""The gateway as one MCP server (`{prefix}/mcp`, streamable HTTP, docs/mcp.md): the union of the configured
servers' tools, each named `server__tool`, built on the official SDK's server side (its low-level `Server` and
its `StreamableHTTPSessionManager`, stateless, JSON responses). A call is forwarded to the server that owns the
tool, with that server's limits (allowed tools, timeout, output size)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from manifold.mcp.chat import run_call
from manifold.mcp.manager import allowed_servers

if TYPE_CHECKING:
    from manifold.mcp.manager import McpManager, McpServer, ToolInfo

# Where `handle` leaves the caller's allowed servers in the request's ASGI scope: the SDK runs the handlers in
# tasks of its own session manager, which see the request's scope (as `ctx.request`) but not its context.
SCOPE_KEY = "manifold.mcp_servers"
_ALL = "*"


class McpGateway:
    def __init__(self, manager: McpManager) -> None:
        self.manager = manager
        self._sessions: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._started = asyncio.Event()

    async def start(self) -> None:
        """Start the SDK's session manager (it runs in a task of its own for the server's lifetime)."""
        if self._task is not None:
            return
        from mcp.server.lowlevel import Server
        from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

        server: Any = Server("manifold", on_list_tools=self._list_tools, on_call_tool=self._call_tool)
        self._sessions = StreamableHTTPSessionManager(app=server, stateless=True, json_response=True)

        async def run() -> None:
            async with self._sessions.run():
                self._started.set()
                await self._stop.wait()

        self._task = asyncio.get_running_loop().create_task(run(), name="mcp:gateway")
        await self._started.wait()

    async def aclose(self) -> None:
        if self._task is not None:
            self._stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 5)
            self._task = None

    async def handle(self, scope: Any, receive: Any, send: Any) -> None:
        await self.start()
        allowed = allowed_servers()
        scope = {**scope, SCOPE_KEY: _ALL if allowed is None else allowed}
        await self._sessions.handle_request(scope, receive, send)

    def _functions(self, ctx: Any) -> dict[str, tuple[McpServer, ToolInfo]]:
        """The tools the caller may see: those of its allowed servers (none when the scope does not say which)."""
        request = getattr(ctx, "request", None)
        allowed = getattr(request, "scope", {}).get(SCOPE_KEY, frozenset())
        return self.manager.functions(allowed=None if allowed == _ALL else allowed)

    async def _list_tools(self, ctx: Any, params: Any) -> Any:
        from mcp.types import ListToolsResult, Tool

        tools = [
            Tool(
                name=name,
                description=tool.description,
                input_schema=tool.input_schema or {"type": "object", "properties": {}},
            )
            for name, (_, tool) in self._functions(ctx).items()
        ]
        return ListToolsResult(tools=tools)

    async def _call_tool(self, ctx: Any, params: Any) -> Any:
        import json

        from mcp.types import CallToolResult, TextContent

        functions = self._functions(ctx)
        found = functions.get(params.name)
        if found is None:
            text, ok = f"No tool named '{params.name}' is available.", False
        else:
            server, tool = found
            text, ok = await run_call(server, tool.name, json.dumps(params.arguments or {}))
            if not ok:
                text = text.removeprefix("Error: ")
        return CallToolResult(content=[TextContent(text=text)], is_error=not ok)
