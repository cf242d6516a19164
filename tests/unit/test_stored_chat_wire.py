"""Stored chat completions' wire logic without I/O: query parameters, stored message items, cursor pages, the
assembly of a streamed completion, and the `storage` config section."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from manifold.api.chat_assembly import AssemblingChunkShaper, CompletionAssembler
from manifold.api.chat_response import ChunkShaper
from manifold.api.stored_chat import (
    cursor_page,
    message_position,
    parse_list_params,
    stored_message,
)
from manifold.errors import ConfigError, InvalidRequestError
from manifold.validation import parse_config
from tests.conformance.schema import assert_valid

# -- query parameters -------------------------------------------------------------------------------------------


def test_list_params_defaults_and_sdk_bracket_style() -> None:
    p = parse_list_params(b"", filters=True)
    assert (p.after, p.limit, p.order, p.model, p.metadata) == (None, 20, "asc", None, {})
    # Exactly what the Python SDK sends (CLIENTS.md 3.7).
    q = b"limit=2&metadata%5Bk1%5D=v1&metadata%5Bk2%5D=v+2&model=m&order=desc&after=chatcmpl-2"
    p = parse_list_params(q, filters=True)
    assert (p.after, p.limit, p.order, p.model, p.metadata) == ("chatcmpl-2", 2, "desc", "m", {"k1": "v1", "k2": "v 2"})
    assert parse_list_params(b"metadata[caf%C3%A9]=%E2%9C%93", filters=True).metadata == {"café": "✓"}
    # Filters are the list's only; the messages route ignores them.
    p = parse_list_params(q, filters=False)
    assert (p.model, p.metadata, p.limit) == (None, {}, 2)
    assert parse_list_params(b"after=&model=", filters=True)[:4] == (None, 20, "asc", None)
    assert parse_list_params(b"limit=1", filters=True).limit == 1
    assert parse_list_params(b"limit=100&unknown=1", filters=True).limit == 100


@pytest.mark.parametrize(
    ("query", "param", "code"),
    [
        (b"limit=0", "limit", "integer_below_min_value"),
        (b"limit=-3", "limit", "integer_below_min_value"),
        (b"limit=101", "limit", "integer_above_max_value"),
        (b"limit=", "limit", "invalid_type"),
        (b"limit=2.5", "limit", "invalid_type"),
        (b"order=ASC", "order", "invalid_value"),
        (b"order=", "order", "invalid_value"),
        (b"metadata%5B%5D=x", "metadata", None),
    ],
)
def test_bad_list_params_name_the_parameter(query: bytes, param: str, code: str | None) -> None:
    with pytest.raises(InvalidRequestError) as bad:
        parse_list_params(query, filters=True)
    assert bad.value.param == param and bad.value.status_code == 400
    if code is not None:
        assert bad.value.code == code


def test_message_cursor() -> None:
    assert message_position("chatcmpl-abc", "chatcmpl-abc-0") == 0
    assert message_position("chatcmpl-abc", "chatcmpl-abc-12") == 12
    for bad in ("chatcmpl-abc", "chatcmpl-abc-", "chatcmpl-abc-x", "chatcmpl-xyz-1", "msg_1", "chatcmpl-abc--1"):
        with pytest.raises(InvalidRequestError) as err:
            message_position("chatcmpl-abc", bad)
        assert err.value.param == "after"


# -- stored message items and pages -----------------------------------------------------------------------------


MESSAGES: list[Any] = [
    {"role": "system", "content": "sys", "name": "rules"},
    {"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "look", "prompt_cache_breakpoint": {}},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        ],
    },
    {"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
    },
    {"role": "assistant", "content": "fine", "refusal": None},
    {"role": "tool", "tool_call_id": "c", "content": "42"},
]


def test_stored_messages_validate_and_keep_what_was_sent() -> None:
    before = copy.deepcopy(MESSAGES)
    items = [stored_message("chatcmpl-x", i, m) for i, m in enumerate(MESSAGES)]
    assert [i["id"] for i in items] == [f"chatcmpl-x-{n}" for n in range(len(MESSAGES))]
    assert items[0] == {
        "id": "chatcmpl-x-0",
        "role": "system",
        "content": "sys",
        "name": "rules",
        "content_parts": None,
    }
    assert items[1]["content"] == "a\nb"
    assert items[1]["content_parts"] == MESSAGES[1]["content"]
    assert items[2]["content"] == "look"
    # Only text and image_url parts can be listed (the schema's content_parts union); the rest are dropped.
    assert items[2]["content_parts"] == [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
    ]
    assert items[3]["content"] is None and items[3]["content_parts"] is None
    assert items[4]["tool_calls"] == MESSAGES[4]["tool_calls"] and items[4]["refusal"] is None
    assert items[6]["tool_call_id"] == "c"
    page = cursor_page(items, has_more=True)
    assert (page["first_id"], page["last_id"], page["has_more"]) == ("chatcmpl-x-0", "chatcmpl-x-6", True)
    assert_valid("ChatCompletionMessageList", page, relaxed={"stored_message_roles"})
    # Strictly, only the assistant messages are what the spec's item schema (an assistant message) can express.
    assert_valid("ChatCompletionMessageList", cursor_page(items[4:6], has_more=False))
    assert before == MESSAGES  # the stored messages are not changed by listing them


def test_empty_page() -> None:
    page = cursor_page([], has_more=False)
    assert page == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}
    assert_valid("ChatCompletionList", page, relaxed={"empty_page_null_ids"})
    assert_valid("ChatCompletionMessageList", page, relaxed={"empty_page_null_ids"})


# -- assembling a stream ----------------------------------------------------------------------------------------


def chunk(choices: list[Any], **extra: Any) -> dict[str, Any]:
    return {
        "id": "up-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "up",
        **extra,
        "choices": choices,
    }


def test_assembled_text_stream_equals_the_non_streamed_shape() -> None:
    shaper = AssemblingChunkShaper("public", include_usage=False, completion_id="chatcmpl-mine")
    lp = {"token": "Hel", "logprob": -0.1, "bytes": None, "top_logprobs": []}
    upstream = [
        chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]),
        chunk([{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None, "logprobs": {"content": [lp]}}]),
        chunk([{"index": 0, "delta": {"role": "assistant", "content": "lo"}, "finish_reason": None}]),
        chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}], system_fingerprint="fp_1"),
        chunk([], usage={"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}),
    ]
    sent = [shaper.shape(copy.deepcopy(c)) for c in upstream]
    assert [s["id"] for s in sent if s is not None] == ["chatcmpl-mine"] * 4  # the gateway's id on every chunk
    done = shaper.assembled("public")
    assert_valid("CreateChatCompletionResponse", done)
    assert done["id"] == "chatcmpl-mine" and done["model"] == "public" and done["created"] == 1700000000
    assert done["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello", "refusal": None},
            "finish_reason": "stop",
            "logprobs": {"content": [lp], "refusal": None},
        }
    ]
    assert done["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert done["system_fingerprint"] == "fp_1"


def test_assembled_tool_calls_and_several_choices() -> None:
    """Sloppy upstream deltas (id and name repeated) are shaped first, so concatenation gives each once."""
    shaper = AssemblingChunkShaper("public", include_usage=True, completion_id="chatcmpl-t")

    def tool_delta(index: int, args: str) -> dict[str, Any]:
        name = ["get_weather", "get_time"][index]
        return {
            "index": index,
            "id": f"call_{index}",
            "type": "function",
            "function": {"name": name, "arguments": args},
        }

    upstream = [
        chunk([{"index": 0, "delta": {"role": "assistant", "content": None}}]),
        chunk([{"index": 0, "delta": {"tool_calls": [tool_delta(0, '{"ci')]}}]),
        chunk([{"index": 0, "delta": {"tool_calls": [tool_delta(0, 'ty": "Paris"}')]}}]),
        chunk([{"index": 0, "delta": {"tool_calls": [tool_delta(1, "{}")]}}]),
        chunk([{"index": 1, "delta": {"role": "assistant", "content": "second"}}]),
        chunk([{"index": 1, "delta": {"refusal": "no"}, "finish_reason": "stop"}]),
        chunk([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]),
    ]
    for c in upstream:
        shaper.shape(copy.deepcopy(c))
    done = shaper.assembled("public")
    assert_valid("CreateChatCompletionResponse", done)
    first, second = done["choices"]
    assert first["finish_reason"] == "tool_calls"
    assert first["message"] == {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": [
            {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
        ],
    }
    assert second["message"] == {"role": "assistant", "content": "second", "refusal": "no"}
    assert "usage" not in done  # the upstream reported none


def test_empty_stream_assembles_to_an_empty_completion() -> None:
    done = CompletionAssembler().completion("chatcmpl-e", 1, "m", None)
    assert done["choices"] == [] and done["object"] == "chat.completion"
    assert_valid("CreateChatCompletionResponse", done)


def test_shaper_keeps_the_upstream_id_unless_given_one() -> None:
    assert ChunkShaper("m", False).shape(chunk([{"index": 0, "delta": {}}]))["id"] == "up-1"  # type: ignore[index]
    assert ChunkShaper("m", False, "chatcmpl-g").shape(chunk([{"index": 0, "delta": {}}]))["id"] == "chatcmpl-g"  # type: ignore[index]


def test_importing_manifold_does_not_import_sqlalchemy() -> None:
    """The store imports SQLAlchemy when it opens (in the background at startup), not with the package."""
    import subprocess
    import sys

    code = "import sys, manifold, manifold.cli; assert 'sqlalchemy' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- config -----------------------------------------------------------------------------------------------------


def test_storage_config() -> None:
    config = parse_config({})
    assert (config.storage.url, config.storage.data_dir) == (None, "./data")
    config = parse_config({"storage": {"url": "postgresql+asyncpg://u:p@db/manifold", "pool_size": 4}})
    assert config.storage.url == "postgresql+asyncpg://u:p@db/manifold" and config.storage.pool_size == 4
    for good in ("sqlite:///x.db", "sqlite+aiosqlite:////abs/x.db", "postgresql://h/d", "postgres://h/d"):
        parse_config({"storage": {"url": good}})
    with pytest.raises(ConfigError) as bad:
        parse_config(
            {"storage": {"url": "mysql://h/d", "pool_size": 0, "colour": "red"}},
        )
    text = "\n".join(bad.value.problems)
    assert "storage.colour: unknown key" in text
    assert "storage.pool_size" in text
    with pytest.raises(ConfigError) as bad:
        parse_config({"storage": {"url": "mysql://h/d"}})
    assert bad.value.problems == [
        "storage.url: mysql:// is not supported (expected sqlite+aiosqlite:///path/to/file.db or "
        "postgresql+asyncpg://user@host/db)"
    ]
    for memory in ("sqlite://", "sqlite+aiosqlite:///:memory:"):
        with pytest.raises(ConfigError, match="in-memory"):
            parse_config({"storage": {"url": memory}})


# -- acknowledgement --------------------------------------------------------------------------------------------


async def _run_stream(make_before_done: Any) -> bytes:
    """Stream two chunks through `stream_chat`; `make_before_done(sent)` builds its hook, which can look at what
    had been sent to the client when it ran."""
    from manifold.server.asgi import Request
    from manifold.server.sse_writer import stream_chat

    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    async def upstream() -> Any:
        yield chunk([{"index": 0, "delta": {"role": "assistant", "content": "hi"}, "finish_reason": None}])
        yield chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}])

    async def open_stream() -> Any:
        return upstream()

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}
    request = Request(scope, receive, send)
    shaper = AssemblingChunkShaper("m", include_usage=False, completion_id="chatcmpl-a")
    await stream_chat(request, open_stream, shaper, 10.0, make_before_done(sent))
    assert sent[0]["status"] == 200
    return _body(sent)


def _body(sent: list[Any]) -> bytes:
    return b"".join(m.get("body", b"") for m in sent[1:])


async def test_done_is_sent_only_after_the_store_write() -> None:
    from manifold.errors import ServiceUnavailableError

    assert (await _run_stream(lambda sent: None)).endswith(b"data: [DONE]\n\n")

    seen_at_write: list[bytes] = []

    def recording(sent: list[Any]) -> Any:
        async def save() -> None:
            seen_at_write.append(_body(sent))

        return save

    body = await _run_stream(recording)
    assert body.endswith(b"data: [DONE]\n\n")
    assert b'"content":"hi"' in seen_at_write[0] and b"[DONE]" not in seen_at_write[0]

    def failing(sent: list[Any]) -> Any:
        async def fail() -> None:
            raise ServiceUnavailableError("down", code="storage_unavailable")

        return fail

    body = await _run_stream(failing)
    assert b"[DONE]" not in body  # not acknowledged: the client gets an error event instead
    error = b'data: {"error":{"message":"down","type":"server_error","param":null,"code":"storage_unavailable"}}\n\n'
    assert body.endswith(error)
