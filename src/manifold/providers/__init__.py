"""Backends. Each kind translates the hub format (OpenAI chat completions) to its protocol and back."""
