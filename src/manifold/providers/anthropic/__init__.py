"""Anthropic Messages API backend (`provider: anthropic`)."""
