"""The Anthropic stream parser, fed recorded transcripts (tests/fixtures/anthropic/streams/, see PROVENANCE.md)
through `api.sse.SSEDecoder` whole, one byte at a time, and split in two at every byte boundary: the chunks (or
the error) must always be the golden ones. The chunks then pass the server's ChunkShaper and must satisfy
OpenAI's stream schema and the `openai` SDK's own accumulator."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from manifold.api.chat_response import ChunkShaper
from manifold.api.sse_decoder import SSEDecoder, SSEEvent
from manifold.errors import BadGatewayError, ManifoldError, UpstreamError, UpstreamOverloadedError
from manifold.providers.anthropic.stream import AnthropicStreamParser
from tests.conformance.schema import assert_valid
from tests.fakes.anthropic_schema import stream_event_problems

STREAMS = Path(__file__).resolve().parent.parent / "fixtures" / "anthropic" / "streams"
TRANSCRIPTS = sorted(STREAMS.glob("*.sse"))
CREATED = 1700000000
# The streaming guide abbreviates this one (no `usage` in message_start and message_delta), so it is not a
# valid RawMessageStreamEvent sequence; the parser must still cope with it.
ABBREVIATED = {"docs_thinking"}


def expected(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.with_suffix(".expected.json").read_text(encoding="utf-8"))
    return data


def run(pieces: Iterable[bytes], response_tool: str | None) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Feed the pieces through a fresh decoder and parser: (chunks, error as {status, error})."""
    decoder = SSEDecoder()
    parser = AnthropicStreamParser("claude", response_tool=response_tool, created=CREATED)
    chunks: list[dict[str, Any]] = []
    try:
        for piece in pieces:
            for event in decoder.feed(piece):
                chunks.extend(parser.feed(event))
        decoder.flush()
        parser.check_complete()
    except ManifoldError as exc:
        return chunks, {"status": exc.status_code, **exc.to_dict()}
    return chunks, None


def events(path: Path) -> list[dict[str, Any]]:
    decoder = SSEDecoder()
    return [json.loads(e.data) for e in decoder.feed(path.read_bytes())]


def test_there_are_transcripts() -> None:
    assert len(TRANSCRIPTS) >= 7


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda p: p.stem)
def test_whole_transcript_gives_the_golden_chunks(path: Path) -> None:
    want = expected(path)
    assert run([path.read_bytes()], want["response_tool"]) == (want["chunks"], want["error"])


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda p: p.stem)
def test_one_byte_at_a_time(path: Path) -> None:
    data = path.read_bytes()
    want = expected(path)
    assert run((data[i : i + 1] for i in range(len(data))), want["response_tool"]) == (want["chunks"], want["error"])


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda p: p.stem)
def test_split_in_two_at_every_byte_boundary(path: Path) -> None:
    data = path.read_bytes()
    want = expected(path)
    golden = (want["chunks"], want["error"])
    for k in range(1, len(data)):
        assert run([data[:k], data[k:]], want["response_tool"]) == golden, f"split at byte {k}"


@pytest.mark.parametrize("path", [p for p in TRANSCRIPTS if p.stem not in ABBREVIATED], ids=lambda p: p.stem)
def test_transcripts_are_valid_anthropic_events(path: Path) -> None:
    for event in events(path):
        assert stream_event_problems(event) == [], event


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda p: p.stem)
def test_shaped_chunks_obey_openai_rules_and_accumulate_to_the_answer(path: Path) -> None:
    want = expected(path)
    shaper = ChunkShaper("claude", include_usage=True)
    shaped = [c for c in (shaper.shape(json.loads(json.dumps(chunk))) for chunk in want["chunks"]) if c is not None]
    usage = shaper.usage_chunk()
    roles = [c for c in shaped if "role" in c["choices"][0]["delta"]]
    assert roles == shaped[:1]  # role once, in the first chunk
    seen: set[int] = set()
    state = ChatCompletionStreamState()
    for chunk in [*shaped, *([usage] if usage else [])]:
        assert_valid("CreateChatCompletionStreamResponse", chunk)
        for call in (chunk["choices"][0]["delta"].get("tool_calls") or []) if chunk["choices"] else []:
            first = call["index"] not in seen
            seen.add(call["index"])
            assert ("id" in call) is first and ("type" in call) is first
            assert ("name" in call.get("function", {})) is first
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    if want["error"] is not None:
        return
    final = state.get_final_completion()
    message = final.choices[0].message
    # What the transcript says, assembled independently: text of text blocks (or of the response tool's input),
    # and each tool_use's partial JSON.
    text, calls = _assemble(events(path), want["response_tool"])
    assert (message.content or "") == text
    got = [(c.id, c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]
    assert got == calls
    assert final.choices[0].finish_reason == ("tool_calls" if calls else "stop")
    if usage is not None:
        assert final.usage is not None and final.usage.total_tokens == usage["usage"]["total_tokens"]


def _assemble(evts: list[dict[str, Any]], response_tool: str | None) -> tuple[str, list[tuple[str, str, Any]]]:
    text = ""
    blocks: dict[int, dict[str, Any]] = {}
    calls: list[tuple[str, str, Any]] = []
    for e in evts:
        if e["type"] == "content_block_start":
            blocks[e["index"]] = {**e["content_block"], "json": ""}
        elif e["type"] == "content_block_delta":
            delta = e["delta"]
            if delta["type"] == "text_delta":
                text += delta["text"]
            elif delta["type"] == "input_json_delta":
                blocks[e["index"]]["json"] += delta["partial_json"]
        elif e["type"] == "content_block_stop":
            block = blocks[e["index"]]
            if block["type"] == "tool_use" and block["name"] == response_tool:
                text += block["json"]
            elif block["type"] == "tool_use":
                calls.append((block["id"], block["name"], json.loads(block["json"] or "{}")))
    return text, calls


# -- edge cases ------------------------------------------------------------------------------------------------


def sse(*payloads: Any) -> list[SSEEvent]:
    return [SSEEvent(p.get("type") if isinstance(p, dict) else None, json.dumps(p).encode()) for p in payloads]


START = {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": []}}


def feed_all(parser: AnthropicStreamParser, evts: list[SSEEvent]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for e in evts:
        out.extend(parser.feed(e))
    return out


def test_unknown_events_and_blocks_are_skipped() -> None:
    parser = AnthropicStreamParser("claude", created=CREATED)
    chunks = feed_all(
        parser,
        sse(
            {"type": "ping"},
            START,
            {"type": "future_event", "x": 1},
            {"type": "content_block_start", "index": 0, "content_block": {"type": "server_tool_use", "id": "s"}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{}"}},
            {"type": "content_block_stop", "index": 0},
            {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": "Hi"}},
            {"type": "content_block_delta", "index": 1, "delta": {"type": "citations_delta", "citation": {}}},
            {"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 3}},
            {"type": "message_stop"},
        ),
    )
    assert [c["choices"][0]["delta"] for c in chunks] == [{"role": "assistant", "content": ""}, {"content": "Hi"}, {}]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 3
    parser.check_complete()


def test_a_stream_cut_before_message_stop_is_a_502() -> None:
    parser = AnthropicStreamParser("claude")
    feed_all(parser, sse(START, {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}))
    with pytest.raises(BadGatewayError, match="before 'message_stop'"):
        parser.check_complete()


def test_content_before_message_start_is_a_502() -> None:
    parser = AnthropicStreamParser("claude")
    with pytest.raises(BadGatewayError, match="before 'message_start'"):
        parser.feed(sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text"}})[0])


def test_malformed_event_data_is_a_502() -> None:
    parser = AnthropicStreamParser("claude")
    with pytest.raises(BadGatewayError, match="malformed"):
        parser.feed(SSEEvent("message_start", b"{not json"))
    with pytest.raises(BadGatewayError, match="non-object"):
        parser.feed(SSEEvent("message_start", b"[1]"))


@pytest.mark.parametrize(
    ("etype", "cls", "status"),
    [
        ("overloaded_error", UpstreamOverloadedError, 503),
        ("api_error", BadGatewayError, 502),
        ("rate_limit_error", UpstreamError, 429),
        ("invalid_request_error", UpstreamError, 400),
    ],
)
def test_error_events_map_by_type(etype: str, cls: type[ManifoldError], status: int) -> None:
    parser = AnthropicStreamParser("claude", label="'claude'")
    parser.feed(sse(START)[0])
    with pytest.raises(cls) as info:
        parser.feed(sse({"type": "error", "error": {"type": etype, "message": "boom"}})[0])
    assert info.value.status_code == status
    assert "boom" in info.value.message


def test_an_error_before_message_start_is_raised_too() -> None:
    parser = AnthropicStreamParser("claude")
    with pytest.raises(UpstreamOverloadedError):
        parser.feed(sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})[0])


def test_a_tool_whose_start_block_carries_the_input_gets_it_as_arguments() -> None:
    parser = AnthropicStreamParser("claude", created=CREATED)
    chunks = feed_all(
        parser,
        sse(
            START,
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}},
            },
            {"type": "content_block_stop", "index": 0},
        ),
    )
    assert chunks[-1]["choices"][0]["delta"] == {"tool_calls": [{"index": 0, "function": {"arguments": '{"a":1}'}}]}
