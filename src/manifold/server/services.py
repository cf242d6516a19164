"""What the endpoints use, and nothing else: built once by `ManifoldApp`, passed to every handler as its first
argument (`handler(services, request, **path_params)`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from manifold.access.auth import Authenticator
    from manifold.config import Config, ServerSettings
    from manifold.mcp.gateway import McpGateway
    from manifold.mcp.manager import McpManager
    from manifold.responses.engine import ResponsesEngine
    from manifold.routing.router import Router
    from manifold.storage import Store

__all__ = ["Services"]


@dataclass(slots=True)
class Services:
    router: Router  # model names → deployments: every call to a model
    store: Store  # stored chat completions (the Responses engine has its own view of it)
    engine: ResponsesEngine  # the Responses API
    settings: ServerSettings  # body limit, keep-alive interval
    config: Config  # the whole configuration (what the others do not carry)
    auth: Authenticator | None = None  # keys and teams (the admin API tells it of every change)
    mcp: McpManager | None = None  # the configured MCP servers (docs/mcp.md)
    mcp_gateway: McpGateway | None = None  # `{prefix}/mcp`: the gateway as one MCP server
