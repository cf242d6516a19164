"""Metrics, logs and traces (docs/observability.md). A leaf: it imports nothing from the server, the router or
the providers; they call into it."""
