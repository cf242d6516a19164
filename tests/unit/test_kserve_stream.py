"""The OIP stream parsers fed recorded and synthetic bodies split at every byte: the chunks never depend on
where the network cut the bytes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from manifold.api.chat_response import ChunkShaper
from manifold.providers.kserve_v2.stream import GenerateStreamParser, InferStreamParser
from manifold.providers.kserve_v2.translate import OIPFormatError, OIPStreamError
from tests.conformance.schema import assert_valid

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "kserve_v2"
Parser = InferStreamParser | GenerateStreamParser


def parse(parser: Parser, pieces: list[bytes]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for piece in pieces:
        out.extend(parser.feed(piece))
    out.extend(parser.close())
    return out


def assert_split_invariant(make: type[Parser], body: bytes) -> list[dict[str, Any]]:
    whole = parse(make(), [body])
    assert parse(make(), [body[i : i + 1] for i in range(len(body))]) == whole
    for cut in range(1, len(body)):
        assert parse(make(), [body[:cut], body[cut:]]) == whole, f"split at byte {cut}"
    return whole


def shaped(chunks: list[dict[str, Any]], include_usage: bool = False) -> list[dict[str, Any]]:
    """What the client gets: the chunks through the gateway's shaper, each valid against OpenAI's schema."""
    shaper = ChunkShaper("public-model", include_usage)
    out = [c for c in (shaper.shape(json.loads(json.dumps(chunk))) for chunk in chunks) if c is not None]
    usage = shaper.usage_chunk()
    if usage is not None:
        out.append(usage)
    for chunk in out:
        assert_valid("CreateChatCompletionStreamResponse", chunk)
    return out


def content(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def test_recorded_mlserver_local_stream() -> None:
    chunks = assert_split_invariant(InferStreamParser, (FIXTURES / "mlserver_infer_stream_local.sse").read_bytes())
    out = shaped(chunks)
    assert content(out) == "echo: hello there world"
    assert out[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in c["choices"][0]["delta"] for c in out[1:])
    assert [c["choices"][0]["finish_reason"] for c in out] == [None] * (len(out) - 1) + ["stop"]  # added at close


def test_recorded_mlserver_output_all_stream_with_unicode() -> None:
    body = (FIXTURES / "mlserver_infer_stream_output_all.sse").read_bytes()
    chunks = assert_split_invariant(InferStreamParser, body)
    out = shaped(chunks)
    assert content(out) == "echo: héllo wörld ✓"
    assert out[-1]["choices"][0]["finish_reason"] == "stop"
    assert sum(1 for c in out if c["choices"][0]["finish_reason"]) == 1  # the server's own, nothing added


def test_recorded_mlserver_tool_call_stream_with_usage() -> None:
    chunks = assert_split_invariant(InferStreamParser, (FIXTURES / "mlserver_infer_stream_tools.sse").read_bytes())
    out = shaped(chunks, include_usage=True)
    calls = [tc for c in out if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls") or ()]
    assert calls[0]["id"] == "call_mlserver_1" and calls[0]["function"]["name"] == "get_weather"
    assert all("id" not in tc and "name" not in tc["function"] for tc in calls[1:])  # repeats stripped
    assert "".join(tc["function"]["arguments"] for tc in calls) == '{"city": "Paris"}'
    assert out[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert out[-1]["choices"] == [] and out[-1]["usage"]["total_tokens"] == 1


GENERATE_STREAM = (
    'data: {"model_name":"llm","text_output":"Bonjour","done":false}\r\n\r\n'
    ": a comment line\n\n"
    'data: {"model_name":"llm","text_output":" à","done":false}\n\n'
    'data: {"model_name":"llm","text_output":" vous 👋","done":false}\r\r'
    'data: {"model_name":"llm","text_output":"","done":true}\n\n'
).encode()


def test_generate_stream_with_done() -> None:
    out = shaped(assert_split_invariant(GenerateStreamParser, GENERATE_STREAM))
    assert content(out) == "Bonjour à vous 👋"
    assert [c["choices"][0]["finish_reason"] for c in out] == [None, None, None, "stop"]


def test_generate_stream_without_done_triton_style_gets_a_final_chunk() -> None:
    body = b"".join(
        f'data: {{"model_name":"ensemble","model_version":"1","text_output":"{w}"}}\n\n'.encode() for w in ["a", " b"]
    )
    out = shaped(assert_split_invariant(GenerateStreamParser, body))
    assert content(out) == "a b"
    assert out[-1]["choices"][0]["delta"] == {} and out[-1]["choices"][0]["finish_reason"] == "stop"


def test_generate_stream_with_vllm_extras() -> None:
    body = (
        b'data: {"text_output":"x","finish_reason":""}\n\n'
        b'data: {"text_output":" y","finish_reason":"length","num_input_tokens":3,"num_output_tokens":2}\n\n'
    )
    out = shaped(assert_split_invariant(GenerateStreamParser, body), include_usage=True)
    assert content(out) == "x y"
    assert out[-2]["choices"][0]["finish_reason"] == "length"
    assert out[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


@pytest.mark.parametrize(
    ("make", "first"),
    [
        (InferStreamParser, (FIXTURES / "mlserver_infer_stream_local.sse").read_bytes().split(b"\n\n")[0] + b"\n\n"),
        (GenerateStreamParser, b'data: {"text_output": "Hi", "done": false}\n\n'),
    ],
)
def test_an_error_event_raises_after_the_chunks_before_it(make: type[Parser], first: bytes) -> None:
    body = first + b'data: {"error": "Request failed during generation"}\n\n'
    for cut in range(len(body) + 1):
        parser, got = make(), []
        with pytest.raises(OIPStreamError, match="Request failed during generation"):
            for piece in (body[:cut], body[cut:]):
                got.extend(parser.feed(piece))
            parser.close()
        assert len(got) == 1, f"split at byte {cut}: the chunk before the error was lost"


@pytest.mark.parametrize("make", [InferStreamParser, GenerateStreamParser])
def test_empty_and_malformed_streams(make: type[Parser]) -> None:
    with pytest.raises(OIPFormatError, match="before the first response"):
        parse(make(), [b": only a comment\n\n"])
    with pytest.raises(OIPFormatError, match="not valid JSON"):
        parse(make(), [b"data: {nope\n\n"])


def test_an_unterminated_last_event_is_not_dispatched() -> None:
    # WHATWG: an event without its blank line at end of input is dropped; here nothing else came, so it's an error.
    with pytest.raises(OIPFormatError):
        parse(GenerateStreamParser(), [b'data: {"text_output": "x", "done": true}'])


def test_the_stream_parsers_take_the_deployments_line_limit() -> None:
    """`limits.max_sse_line_bytes` reaches the KServe parsers too: a line that never ends stops at the limit."""
    from manifold.api.sse_decoder import SSELineTooLong
    from manifold.providers.kserve_v2.stream import GenerateStreamParser, InferStreamParser

    for parser in (InferStreamParser(2048), GenerateStreamParser(2048)):
        with pytest.raises(SSELineTooLong):
            parser.feed(b"data: " + b"x" * 5000)
