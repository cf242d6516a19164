"""A streamable-HTTP MCP server built with the official SDK (`MCPServer`), for the gateway's MCP tests.

Run as `python -m tests.fakes.mcp_http_server PORT`: serves `http://127.0.0.1:PORT/mcp`; `... stdio`: the same
tools over stdin/stdout; `... sse PORT`: over the legacy HTTP+SSE transport at `/sse`. Its tools: `echo` (the
text back), `flood` (`n` bytes of output), `slow` (sleeps), `fail` (the tool reports an error), `whoami` (the
`Authorization` header it was sent, to show configured headers arrive) and `grow` (adds a tool `grown` and
sends `notifications/tools/list_changed`).
"""

from __future__ import annotations

import asyncio
import sys

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("manifold-test-http")


@server.tool()
def echo(text: str) -> str:
    """Return the text as it was sent."""
    return text


@server.tool()
def flood(n: int) -> str:
    """Return n bytes of output."""
    return "x" * n


@server.tool()
async def slow(seconds: float) -> str:
    """Sleep, then say so."""
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


@server.tool()
def fail(why: str) -> str:
    """Fail with the reason given (a `ToolError`: its message reaches the client)."""
    raise ToolError(why)


@server.tool()
def whoami(ctx: Context) -> str:
    """The Authorization header of the request."""
    request = ctx.request_context.request
    headers = getattr(request, "headers", None) or {}
    return str(headers.get("authorization", "none"))


def grown() -> str:
    """A tool that `grow` added."""
    return "grown"


@server.tool()
async def grow(ctx: Context) -> str:
    """Add the tool `grown` and tell the client its tool list changed."""
    server.add_tool(grown)
    await ctx.session.send_tool_list_changed()
    return "added"


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        server.run("stdio")
    elif sys.argv[1] == "sse":  # the legacy HTTP+SSE transport: http://127.0.0.1:PORT/sse
        server.run("sse", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
