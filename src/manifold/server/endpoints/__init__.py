"""One module per resource; a handler parses, calls one service, and picks JSON or SSE."""
