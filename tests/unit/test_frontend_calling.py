"""Calling a handler: which operations it implements, the keyword arguments it gets (and conflicts), sync code
in worker threads, generators closed when the consumer stops, failures logged and turned into 500s."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from manifold.api.operations import BY_NAME
from manifold.errors import InvalidRequestError
from manifold.providers.python_handler.calling import Handler, invoke, is_stream, iterate
from manifold.providers.python_handler.context import RequestInfo
from manifold.providers.python_handler.errors import HandlerContractError, HandlerFailedError, HTTPError

CHAT = BY_NAME["create_chat_completion"]
RETRIEVE = BY_NAME["retrieve_chat_completion"]


def info(query: dict[str, Any] | None = None, path_params: dict[str, str] | None = None) -> RequestInfo:
    return RequestInfo("create_chat_completion", "POST", "/v1/chat/completions", path_params or {}, query or {})


def answer(messages: Any) -> str:
    return "x"


class WithMethods:
    def create_chat_completion(self, messages: Any) -> str:
        return "x"

    def retrieve_chat_completion(self, completion_id: str) -> Any:
        return NotImplemented


def test_what_a_handler_implements() -> None:
    function = Handler(answer)
    assert function.implements("create_chat_completion") and not function.implements("retrieve_chat_completion")
    dispatcher = Handler(answer, include_url_info=True)
    assert dispatcher.dispatcher and dispatcher.implements("retrieve_chat_completion")
    methods = Handler(WithMethods)  # a class is instantiated once
    assert isinstance(methods.obj, WithMethods)
    assert methods.implements("retrieve_chat_completion") and not methods.implements("create_embedding")
    assert not Handler(WithMethods(), include_url_info=True).dispatcher  # methods decide, not URL info
    with pytest.raises(TypeError, match="neither callable nor an object with methods"):
        Handler(object())


def test_arguments_from_every_source() -> None:
    handler = Handler(answer, include_url_info=True)
    body = {"model": "m", "messages": [], "temperature": 1, "vendor_x": 2}
    kwargs = handler.arguments(CHAT, body, info({"tenant": "a", "tag": ["x", "y"]}))
    assert kwargs == {
        "model": "m",
        "messages": [],
        "temperature": 1,
        "tenant": "a",
        "tag": ["x", "y"],
        "body": body,
        "request_path": "/v1/chat/completions",
        "request_method": "POST",
    }
    retrieve = handler.arguments(RETRIEVE, None, info(path_params={"completion_id": "c1"}))
    assert retrieve == {"completion_id": "c1", "request_path": "/v1/chat/completions", "request_method": "POST"}
    assert Handler(answer).arguments(CHAT, {"messages": []}, None) == {"messages": [], "body": {"messages": []}}


@pytest.mark.parametrize(
    ("op", "body", "query", "path_params", "name"),
    [
        (CHAT, {"model": "m", "messages": []}, {"model": "n"}, {}, "model"),
        (RETRIEVE, None, {"completion_id": "x"}, {"completion_id": "c"}, "completion_id"),
        (CHAT, {"messages": []}, {"body": "1"}, {}, "body"),
        (CHAT, {"messages": []}, {"request_method": "GET"}, {}, "request_method"),
    ],
)
def test_a_name_from_two_places_is_a_400(
    op: Any, body: Any, query: dict[str, Any], path_params: dict[str, str], name: str
) -> None:
    with pytest.raises(InvalidRequestError) as err:
        Handler(answer, include_url_info=True).arguments(op, body, info(query, path_params))
    assert err.value.status_code == 400 and err.value.param == name and err.value.code == "parameter_conflict"


def test_a_handler_gets_the_arguments_it_takes() -> None:
    def narrow(messages: Any, temperature: float = 1.0) -> tuple[Any, float]:
        return messages, temperature

    def positional_only(messages: Any, /) -> None:
        return None

    async def run() -> None:
        assert await invoke(narrow, {"messages": [1], "model": "m", "temperature": 0.5}, "h", "w") == ([1], 0.5)
        assert await invoke(lambda **kw: sorted(kw), {"a": 1, "b": 2}, "h", "w") == ["a", "b"]
        with pytest.raises(HandlerContractError, match="requires the argument 'messages'"):
            await invoke(narrow, {"input": "x"}, "h", "POST /v1/embeddings")
        with pytest.raises(HandlerContractError, match="requires the argument 'messages'"):
            await invoke(positional_only, {"messages": []}, "h", "w")

    asyncio.run(run())


def test_sync_code_runs_in_worker_threads_and_async_code_on_the_loop() -> None:
    seen: dict[str, int] = {}

    def sync(**kw: Any) -> str:
        seen["sync"] = threading.get_ident()
        return "s"

    async def coroutine(**kw: Any) -> str:
        seen["async"] = threading.get_ident()
        return "a"

    def generator(**kw: Any) -> Iterator[str]:
        seen["generator"] = threading.get_ident()
        yield "g"

    class AsyncCallable:
        async def __call__(self, **kw: Any) -> str:
            return "c"

    async def run() -> None:
        seen["loop"] = threading.get_ident()
        assert await invoke(sync, {}, "h", "w") == "s"
        assert await invoke(coroutine, {}, "h", "w") == "a"
        assert await invoke(AsyncCallable(), {}, "h", "w") == "c"
        stream = await invoke(generator, {}, "h", "w")
        assert "generator" not in seen  # nothing ran yet: the generator is advanced in a worker thread
        assert [item async for item in iterate(stream, "h", "w")] == ["g"]

    asyncio.run(run())
    assert seen["async"] == seen["loop"]
    assert seen["sync"] != seen["loop"] and seen["generator"] != seen["loop"]


def test_streams_are_closed_when_the_consumer_stops() -> None:
    closed: list[str] = []

    def sync_gen() -> Iterator[str]:
        try:
            yield "a"
            yield "b"
        finally:
            closed.append("sync")

    async def async_gen() -> AsyncIterator[str]:
        try:
            yield "a"
            yield "b"
        finally:
            closed.append("async")

    async def run() -> None:
        for stream in (sync_gen(), async_gen()):
            items = iterate(stream, "h", "w")
            assert await anext(items) == "a"
            await items.aclose()

    asyncio.run(run())
    assert closed == ["sync", "async"]


def test_failures_are_500s_and_http_errors_keep_their_status(caplog: pytest.LogCaptureFixture) -> None:
    def broken(**kw: Any) -> None:
        raise KeyError("inner detail")

    def refusing(**kw: Any) -> None:
        raise HTTPError(403, "No.", code="forbidden")

    def broken_stream() -> Iterator[str]:
        yield "a"
        raise RuntimeError("mid-stream")

    async def run() -> None:
        with pytest.raises(HandlerFailedError) as failed:
            await invoke(broken, {}, "pkg:broken", "POST /v1/chat/completions")
        assert failed.value.status_code == 500 and "KeyError" in failed.value.message
        assert "inner detail" not in failed.value.message
        with pytest.raises(HTTPError) as refused:
            await invoke(refusing, {}, "h", "w")
        assert refused.value.status_code == 403 and refused.value.to_dict()["error"]["type"] == "permission_error"
        items = iterate(broken_stream(), "h", "w")
        assert await anext(items) == "a"
        with pytest.raises(HandlerFailedError, match="RuntimeError"):
            await anext(items)

    with caplog.at_level(logging.ERROR, logger="manifold.handler"):
        asyncio.run(run())
    assert any("pkg:broken" in r.getMessage() and r.exc_info for r in caplog.records)


def test_what_counts_as_a_stream() -> None:
    def gen() -> Iterator[int]:
        yield 1

    async def agen() -> AsyncIterator[int]:
        yield 1

    assert is_stream(gen()) and is_stream(agen()) and is_stream(iter([1]))
    assert not any(is_stream(v) for v in ("text", b"x", {"a": 1}, [1, 2], (1,), None, 3))


def test_http_error_statuses() -> None:
    assert HTTPError(404, "x").to_dict()["error"]["type"] == "invalid_request_error"
    assert HTTPError(503, "x").to_dict()["error"]["type"] == "server_error"
    assert HTTPError(418, "x", type="teapot").to_dict()["error"]["type"] == "teapot"
    with pytest.raises(ValueError, match="4xx or 5xx"):
        HTTPError(200, "fine")
