"""Helpers for the Responses API tests: typed SSE parsing, schema checks, comparing responses."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.conformance.schema import assert_valid, assert_valid_stream_event

# Real OpenAI's canonical text stream (CLIENTS.md §3.4).
TEXT_STREAM = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]
# The empty-page ids of a cursor page (CLIENTS.md §1.3 item 8).
PAGE_RELAXED = {"empty_page_null_ids"}


def typed_events(text: str, *, first: int = 0) -> list[dict[str, Any]]:
    """Parse `event: <type>` + `data: <json>` frames; every event validated against its ResponseStreamEvent
    member, its `event:` line equal to its `type`, sequence numbers rising by one from `first`."""
    events = []
    for block in text.split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        names = [line[len("event: ") :] for line in lines if line.startswith("event: ")]
        data = "\n".join(line[len("data: ") :] for line in lines if line.startswith("data: "))
        assert data != "[DONE]", "a Responses stream has no [DONE]"
        event = json.loads(data)
        assert names == [event["type"]], block
        assert_valid_stream_event(event)
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(first, first + len(events)))
    return events


def collapsed(types: list[str]) -> list[str]:
    """Event types with runs of the same delta type collapsed to one."""
    out: list[str] = []
    for t in types:
        if not (out and out[-1] == t and t.endswith(".delta")):
            out.append(t)
    return out


def post_stream(http: httpx.Client, body: dict[str, Any], prefix: str = "/v1") -> list[dict[str, Any]]:
    resp = http.post(f"{prefix}/responses", json={**body, "stream": True})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/event-stream")
    return typed_events(resp.text)


def check_response(body: dict[str, Any]) -> dict[str, Any]:
    assert_valid("Response", body)
    assert body["object"] == "response"
    return body


def comparable(response: dict[str, Any]) -> dict[str, Any]:
    """A response without what differs between two runs of the same input (ids, times)."""
    out = json.loads(json.dumps(response))
    for key in ("id", "created_at", "completed_at"):
        out.pop(key, None)
    for item in out.get("output") or []:
        item.pop("id", None)
        for part in item.get("content") or []:
            part.pop("parsed", None)  # the stream helper's ParsedResponseOutputText adds it (None: no text.format)
    return out
