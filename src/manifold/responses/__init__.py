"""The Responses API engine (docs/responses.md)."""
