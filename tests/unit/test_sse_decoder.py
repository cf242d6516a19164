"""SSEDecoder: the same events however the bytes are split, and the WHATWG line/field rules."""

from __future__ import annotations

import itertools
import json
import random
from typing import Any

import pytest

from manifold.api import sse_decoder as sse
from manifold.api.sse_decoder import SSEDecoder, SSEEvent, SSELineTooLong

# A realistic upstream stream: comments/keep-alives, `event:` and `id:` lines, a multi-line data event, CRLF, CR
# and LF line endings, multi-byte UTF-8 inside the JSON, `data:` with and without the space, and `[DONE]`.
CONTENT = "héllo € 😀 日本"
FIRST_JSON = json.dumps(
    {"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"content": CONTENT}}]}, ensure_ascii=False
).encode("utf-8")

STREAM = (
    b": keep-alive\r\n"
    b"\r\n"
    b"event: message\r\n"
    b"data: " + FIRST_JSON + b"\r\n"
    b"\r\n"
    b"id: 7\n"
    b'data: {"a":\r\n'
    b"data:  1}\n"
    b": a comment inside an event\n"
    b"\n"
    b": ping\r"
    b'data:{"b":"\xc3\xa9"}\r'
    b"\r"
    b"event: update\r\n"
    b"data: second\n"
    b"\r\n"
    b"data: [DONE]\n"
    b"\n"
)

EXPECTED = [
    SSEEvent("message", FIRST_JSON, None),
    SSEEvent(None, b'{"a":\n 1}', "7"),
    SSEEvent(None, '{"b":"é"}'.encode(), "7"),
    SSEEvent("update", b"second", "7"),
    SSEEvent(None, b"[DONE]", "7"),
]


def decode(chunks: list[bytes]) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    events.extend(decoder.flush())
    return events


def test_expected_events_are_what_the_stream_means() -> None:
    # Guard the fixture itself: the JSON payloads decode and the multi-byte text survives.
    assert json.loads(EXPECTED[0].data)["choices"][0]["delta"]["content"] == CONTENT
    assert json.loads(EXPECTED[1].data) == {"a": 1}
    assert json.loads(EXPECTED[2].data) == {"b": "é"}
    assert b"\r" in STREAM and b"\r\n" in STREAM and b"\n\n" in STREAM


def test_whole_stream() -> None:
    assert decode([STREAM]) == EXPECTED


@pytest.mark.parametrize("cut", range(len(STREAM) + 1))
def test_split_in_two_at_every_byte(cut: int) -> None:
    assert decode([STREAM[:cut], STREAM[cut:]]) == EXPECTED


def test_one_byte_at_a_time() -> None:
    assert decode([STREAM[i : i + 1] for i in range(len(STREAM))]) == EXPECTED


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 42, 1234])
def test_random_chunkings(seed: int) -> None:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(STREAM)), rng.randint(2, 40)))
    bounds = [0, *cuts, len(STREAM)]
    chunks = [STREAM[a:b] for a, b in itertools.pairwise(bounds)]
    assert b"".join(chunks) == STREAM
    assert decode(chunks) == EXPECTED


def test_events_come_out_as_soon_as_their_blank_line_arrives() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: one\n") == []
    assert decoder.feed(b"\n") == [SSEEvent(None, b"one")]
    assert decoder.feed(b"data: tw") == []
    assert decoder.feed(b"o\n\ndata: three\n\n") == [SSEEvent(None, b"two"), SSEEvent(None, b"three")]


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        pytest.param(b"data:x\n\n", [SSEEvent(None, b"x")], id="data-without-space"),
        pytest.param(b"data:  x\n\n", [SSEEvent(None, b" x")], id="only-one-leading-space-stripped"),
        pytest.param(b"data: x \n\n", [SSEEvent(None, b"x ")], id="trailing-space-kept"),
        pytest.param(b"data:\n\n", [SSEEvent(None, b"")], id="empty-data"),
        pytest.param(b"data: \n\n", [SSEEvent(None, b"")], id="empty-data-with-space"),
        pytest.param(b"data\n\n", [SSEEvent(None, b"")], id="field-without-colon-is-empty-data"),
        pytest.param(b"data:\ndata:\n\n", [SSEEvent(None, b"\n")], id="two-empty-data-lines"),
        pytest.param(b"data: a\ndata: b\ndata: c\n\n", [SSEEvent(None, b"a\nb\nc")], id="multi-line"),
        pytest.param(b"foo\ndata: x\n\n", [SSEEvent(None, b"x")], id="unknown-field-without-colon-ignored"),
        pytest.param(b"retry: 10\ndata: x\n\n", [SSEEvent(None, b"x")], id="retry-ignored"),
        pytest.param(b"foo: bar\ndata: x\n\n", [SSEEvent(None, b"x")], id="unknown-field-ignored"),
        pytest.param(b"data: a:b: c\n\n", [SSEEvent(None, b"a:b: c")], id="colons-in-value"),
        pytest.param(b"event: ping\n\ndata: x\n\n", [SSEEvent(None, b"x")], id="event-without-data-no-dispatch"),
        pytest.param(
            b"event: a\ndata: 1\n\ndata: 2\n\n",
            [SSEEvent("a", b"1"), SSEEvent(None, b"2")],
            id="event-type-reset-after-dispatch",
        ),
        pytest.param(
            b"id: 1\ndata: a\n\ndata: b\n\n",
            [SSEEvent(None, b"a", "1"), SSEEvent(None, b"b", "1")],
            id="id-persists",
        ),
        pytest.param(
            b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n",
            [SSEEvent(None, b"a", "1"), SSEEvent(None, b"b", "1")],
            id="id-with-nul-ignored",
        ),
        pytest.param(b"\n\n\r\n\r\r", [], id="blank-lines-only"),
        pytest.param(b"data: x\r\n\r\n", [SSEEvent(None, b"x")], id="crlf"),
        pytest.param(b"data: x\r\r", [SSEEvent(None, b"x")], id="cr"),
        pytest.param(b"data: x\n\r\n", [SSEEvent(None, b"x")], id="lf-then-crlf"),
        pytest.param(b"data: x\r\n\r", [SSEEvent(None, b"x")], id="crlf-then-cr"),
        pytest.param(b"data: a\r\ndata: b\r\n\r\n", [SSEEvent(None, b"a\nb")], id="crlf-is-one-line-end-not-two"),
        pytest.param(b"data: [DONE]\n\n", [SSEEvent(None, b"[DONE]")], id="done"),
    ],
)
def test_field_rules(stream: bytes, expected: list[SSEEvent]) -> None:
    assert decode([stream]) == expected
    assert decode([stream[i : i + 1] for i in range(len(stream))]) == expected


@pytest.mark.parametrize(
    "stream",
    [
        b": keep-alive\n\n",
        b":\n\n: one\r\n: two\r\n\r\n:three\r\r",
        b": data: not really\n\n" * 5,
    ],
)
def test_comment_only_stream_yields_nothing(stream: bytes) -> None:
    assert decode([stream]) == []
    assert decode([stream[i : i + 1] for i in range(len(stream))]) == []


def test_cr_at_chunk_end_then_lf_is_one_line_end() -> None:
    # `data: a\r` | `\ndata: b\n\n`: the LF completes the CRLF, so a and b are one event.
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\ndata: b\n\n") == [SSEEvent(None, b"a\nb")]


def test_cr_at_chunk_end_then_lone_lf_chunk() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"data: b\r") == []
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\r") == [SSEEvent(None, b"a\nb")]
    assert decoder.feed(b"\n") == []  # completes the CRLF blank line: no second, empty event
    assert decoder.feed(b"data: c\n\n") == [SSEEvent(None, b"c")]


def test_cr_at_chunk_end_then_cr_is_a_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\r") == [SSEEvent(None, b"a")]


def test_lf_after_cr_only_skipped_once() -> None:
    # `\r` | `\n\n`: the first LF completes the CRLF, the second is the blank line.
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n\n") == [SSEEvent(None, b"a")]


def test_empty_chunks_change_nothing() -> None:
    # An empty read between the CR and the LF of a CRLF must not turn the LF into a blank line.
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for chunk in [b"", b"data: a\r", b"", b"\n", b"", b"data: b\r\n", b"", b"\r", b"", b"\n", b""]:
        events.extend(decoder.feed(chunk))
    assert events == [SSEEvent(None, b"a\nb")]


@pytest.mark.parametrize(
    "tail",
    [b"data: last", b"data: last\n", b"data: last\r\n", b"data: last\r", b"event: x\ndata: last\n"],
)
def test_unterminated_final_event_is_not_dispatched(tail: bytes) -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: first\n\n" + tail) == [SSEEvent(None, b"first")]
    assert decoder.flush() == []
    # nothing of it leaks into a later event either
    assert decoder.flush() == []


def test_utf8_character_split_across_chunks_is_kept_intact() -> None:
    payload = 'data: {"t":"€😀"}\n\n'.encode()
    euro = payload.index("€".encode())
    for cut in range(euro, euro + 7):
        assert decode([payload[:cut], payload[cut:]]) == [SSEEvent(None, '{"t":"€😀"}'.encode())]


def test_event_name_split_across_chunks() -> None:
    assert decode([b"ev", b"ent: upd", b"ate\nda", b"ta: x\n", b"\n"]) == [SSEEvent("update", b"x")]


# -- long lines: linear buffering and a cap ------------------------------------------------------------------------


class _CountingPattern:
    """Stands in for the decoder's line-end pattern and counts the bytes it is asked to scan."""

    def __init__(self, pattern: Any) -> None:
        self.pattern = pattern
        self.scanned = 0

    def finditer(self, buffer: bytes) -> Any:
        self.scanned += len(buffer)
        return self.pattern.finditer(buffer)


def test_a_long_line_in_small_pieces_is_scanned_a_bounded_number_of_times(monkeypatch: pytest.MonkeyPatch) -> None:
    # 4 MB in 1 KB pieces: rescanning what is buffered on every piece (the old decoder) scans ~8 GB; a linear
    # decoder scans each byte a small, fixed number of times.
    counting = _CountingPattern(sse._LINE_END)
    monkeypatch.setattr(sse, "_LINE_END", counting)
    payload = b"x" * (4 * 1024 * 1024)
    line = b"data: " + payload + b"\n\n"
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for i in range(0, len(line), 1024):
        events.extend(decoder.feed(line[i : i + 1024]))
    assert events == [SSEEvent(None, payload)]
    assert counting.scanned <= 2 * len(line)


@pytest.mark.parametrize("piece", [1000, 1 << 20])
def test_a_line_past_the_limit_is_refused(piece: int) -> None:
    decoder = SSEDecoder(max_line_bytes=100_000)
    line = b"data: " + b"y" * 150_000 + b"\n\n"
    with pytest.raises(SSELineTooLong):
        for i in range(0, len(line), piece):
            decoder.feed(line[i : i + piece])


def test_an_unterminated_line_past_the_limit_is_refused_before_its_end() -> None:
    decoder = SSEDecoder(max_line_bytes=10_000)
    decoder.feed(b"data: ")
    with pytest.raises(SSELineTooLong):
        for _ in range(100):
            decoder.feed(b"z" * 1000)  # never a line end: it must stop well before 100 KB are held


def test_an_event_of_many_data_lines_past_the_limit_is_refused() -> None:
    decoder = SSEDecoder(max_line_bytes=10_000)
    with pytest.raises(SSELineTooLong):
        decoder.feed(b"data: " + b"a" * 900 + b"\n" * 1 + (b"data: " + b"a" * 900 + b"\n") * 20)


def test_lines_up_to_the_limit_pass() -> None:
    decoder = SSEDecoder(max_line_bytes=10_000)
    data = b"b" * (10_000 - len(b"data: "))
    assert decoder.feed(b"data: " + data[:5000]) == []
    assert decoder.feed(data[5000:] + b"\n\n") == [SSEEvent(None, data)]


def test_events_before_an_overlong_line_in_the_same_chunk_come_with_the_error() -> None:
    """A whole event and then a line past the limit, in one read: the event is not lost with the error (the
    stream sends it, then its error event) — whatever way the bytes were split."""
    from manifold.api.sse_decoder import SSEDecoder, SSELineTooLong

    decoder = SSEDecoder(1024)
    with pytest.raises(SSELineTooLong) as caught:
        decoder.feed(b"data: one\n\ndata: " + b"x" * 5000)
    assert [e.data for e in caught.value.events] == [b"one"]
