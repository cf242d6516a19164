"""MCP: connections to the configured Model Context Protocol servers (docs/mcp.md)."""
