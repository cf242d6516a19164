"""The `Response` object a request starts as: every field the spec requires, the request's settings echoed."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from manifold.api.response_request import (
    CreateResponseRequest,
    FormatJSONObject,
    FormatJSONSchema,
    FunctionTool,
    new_id,
)


def now() -> int:
    return int(time.time())


def _echo_tools(tools: list[FunctionTool]) -> list[dict[str, Any]]:
    out = []
    for tool in tools:
        echoed: dict[str, Any] = {"type": "function", "name": tool.name}
        if tool.description is not None:
            echoed["description"] = tool.description
        echoed["parameters"] = tool.parameters
        echoed["strict"] = tool.strict
        out.append(echoed)
    return out


def _echo_text(req: CreateResponseRequest) -> dict[str, Any]:
    fmt = req.text.format if req.text is not None else None
    if isinstance(fmt, FormatJSONSchema):
        shown: dict[str, Any] = {"type": "json_schema", "name": fmt.name, "schema": fmt.schema}
        if fmt.description is not None:
            shown["description"] = fmt.description
        shown["strict"] = bool(fmt.strict)
    elif isinstance(fmt, FormatJSONObject):
        shown = {"type": "json_object"}
    else:
        shown = {"type": "text"}
    verbosity = req.text.verbosity if req.text is not None and req.text.verbosity else "medium"
    return {"format": shown, "verbosity": verbosity}


def skeleton(req: CreateResponseRequest, tools: list[FunctionTool], status: str) -> dict[str, Any]:
    """The `Response` for a request, with no output yet, in `status` (`in_progress` or `queued`)."""
    response: dict[str, Any] = {
        "id": new_id("resp_"),
        "object": "response",
        "created_at": now(),
        "status": status,
        "background": bool(req.background),
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "max_tool_calls": req.max_tool_calls,
        "model": req.model,
        "output": [],
        "parallel_tool_calls": req.parallel_tool_calls if req.parallel_tool_calls is not None else True,
        "previous_response_id": req.previous_response_id,
        "reasoning": (
            {"effort": req.reasoning.effort, "summary": req.reasoning.summary} if req.reasoning is not None else None
        ),
        "service_tier": req.service_tier if req.service_tier not in (None, "auto") else "default",
        "store": req.store is not False,
        "temperature": req.temperature if req.temperature is not None else 1.0,
        "text": _echo_text(req),
        "tool_choice": msgspec.to_builtins(req.tool_choice) if req.tool_choice is not None else "auto",
        "tools": _echo_tools(tools),
        "top_logprobs": req.top_logprobs if req.top_logprobs is not None else 0,
        "top_p": req.top_p if req.top_p is not None else 1.0,
        "truncation": req.truncation or "disabled",
        "metadata": dict(req.metadata or {}),
    }
    for key in ("user", "safety_identifier", "prompt_cache_key"):
        value = getattr(req, key)
        if value is not None:
            response[key] = value
    return response
