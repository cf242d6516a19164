"""The fake upstream's own Responses API (``POST …/responses``), for the gateway's native pass-through.

Whatever the behavior (``status:<code>`` answers that error), it answers like OpenAI would: a ``Response`` whose
one message says ``"native: "`` + the text of the last input (a string, or the last message's text parts), with
the request's ``model``; with ``stream: true`` the canonical event sequence (one delta per word), ``event:``
lines and no ``[DONE]``.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from tests.fakes.openai_upstream import _Exchange


def _last_text(body: dict[str, Any]) -> str:
    value = body.get("input")
    if isinstance(value, str):
        return value
    for item in reversed(value if isinstance(value, list) else []):
        content = item.get("content") if isinstance(item, dict) else None
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def response_for(body: dict[str, Any]) -> dict[str, Any]:
    text = "native: " + _last_text(body)
    return {
        "id": "resp_upstream" + uuid.uuid4().hex[:16],
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "completed_at": int(time.time()),
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "model": body.get("model", "fake-model"),
        "output": [
            {
                "id": "msg_upstream" + uuid.uuid4().hex[:16],
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
            }
        ],
        "parallel_tool_calls": True,
        "previous_response_id": body.get("previous_response_id"),
        "temperature": 1.0,
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "metadata": body.get("metadata") or {},
        "usage": {
            "input_tokens": len(_last_text(body).split()),
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": len(text.split()),
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": len(_last_text(body).split()) + len(text.split()),
        },
    }


def _events(final: dict[str, Any]) -> list[dict[str, Any]]:
    start = {**copy.deepcopy(final), "status": "in_progress", "output": [], "completed_at": None}
    start.pop("usage")
    message = final["output"][0]
    text = message["content"][0]["text"]
    where = {"item_id": message["id"], "output_index": 0, "content_index": 0}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": start},
        {"type": "response.in_progress", "response": start},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {**message, "status": "in_progress", "content": []},
        },
        {"type": "response.content_part.added", **where, "part": {**message["content"][0], "text": ""}},
    ]
    for word in text.split(" "):
        events.append({"type": "response.output_text.delta", **where, "delta": word + " ", "logprobs": []})
    events[-1]["delta"] = events[-1]["delta"][:-1]
    events += [
        {"type": "response.output_text.done", **where, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": message["content"][0]},
        {"type": "response.output_item.done", "output_index": 0, "item": message},
        {"type": "response.completed", "response": final},
    ]
    for i, event in enumerate(events):
        event["sequence_number"] = i
    return events


async def answer(ex: _Exchange) -> web.StreamResponse:
    from tests.fakes.openai_upstream import _error_body, _parse_status

    name, _, arg = ex.record.behavior.partition(":")
    if name == "status":
        code = _parse_status(arg)
        return web.json_response(_error_body(f"fake {code}", "fake_error", f"fake_{code}"), status=code)
    final = response_for(ex.body)
    if not ex.wants_stream:
        return web.json_response(final)
    for event in _events(final):
        await ex.send_raw(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
    return await ex.end()
