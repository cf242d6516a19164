"""`manifold.frontend.OpenAIFrontend` as a library: built in the test around a handler, served by uvicorn on a real
socket (or mounted inside a FastAPI app), called with the official `openai` SDK and raw HTTP. Covers the input
mappings (fields, body, path and query parameters, URL info, conflicts, mandatory fields), the output mappings
(filtering, required fields, strings, Structs, pydantic objects), errors, custom routes, endpoint groups and
sync / async / generator handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import openai
import pytest
from openai.types.chat import ChatCompletion

from manifold.frontend import Endpoint, HTTPError, OpenAIFrontend, Response
from tests.conformance.schema import assert_valid
from tests.e2e.asgi_server import ServedApp, serve
from tests.e2e.responses_helpers import check_response, post_stream
from tests.e2e.test_chat import sse_events

USER = [{"role": "user", "content": "hello there"}]


def sdk(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, _strict_response_validation=True)


@pytest.fixture
def storage(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/frontend.db"


def frontend(handler: Any, storage: str, **kwargs: Any) -> OpenAIFrontend:
    kwargs.setdefault("prefix", "/v1")
    return OpenAIFrontend(handler, storage=storage, **kwargs)


def completion_dict(completion_id: str, text: str = "stored answer", **extra: Any) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "kept-model",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": None}
        ],
        **extra,
    }


# -- input mappings ----------------------------------------------------------------------------------------------


def test_documented_fields_body_and_query_arrive_as_keywords(storage: str) -> None:
    seen: list[dict[str, Any]] = []

    def handler(**kwargs: Any) -> str:
        seen.append(kwargs)
        return "ok"

    body = {
        "model": "m",
        "messages": USER,
        "temperature": 0.5,
        "max_tokens": 7,
        "seed": 3,
        "user": "u-1",
        "metadata": {"k": "v"},
        "x_vendor_field": 1,
    }
    with serve(frontend(handler, storage)) as app:
        resp = httpx.post(app.url + "/v1/chat/completions?tenant=a&tag=x&tag=y", json=body)
    assert resp.status_code == 200, resp.text
    assert_valid("CreateChatCompletionResponse", resp.json())
    kwargs = seen[0]
    for name in ("model", "messages", "temperature", "max_tokens", "seed", "user", "metadata"):
        assert kwargs[name] == body[name]
    assert "x_vendor_field" not in kwargs  # not an OpenAI field: only inside `body`
    assert kwargs["body"] == body
    assert kwargs["tenant"] == "a" and kwargs["tag"] == ["x", "y"]
    assert "request_path" not in kwargs and "request_method" not in kwargs


def test_a_handler_gets_only_the_arguments_it_names(storage: str) -> None:
    def handler(messages: list[dict[str, Any]], temperature: float = 1.0) -> str:
        return f"{len(messages)} message(s) at {temperature}"

    with serve(frontend(handler, storage)) as app:
        answer = sdk(app.url + "/v1").chat.completions.create(model="m", messages=USER, temperature=0.2, seed=1)
    assert answer.choices[0].message.content == "1 message(s) at 0.2"


class StoredRoutes:
    """A handler object serving chat and, itself, the stored-completion routes."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def create_chat_completion(self, messages: list[dict[str, Any]], **kwargs: Any) -> str:
        return "created"

    def retrieve_chat_completion(self, completion_id: str, **kwargs: Any) -> Any:
        self.calls.append(("retrieve", {"completion_id": completion_id, **kwargs}))
        if completion_id == "from-store":
            return NotImplemented
        return completion_dict(completion_id)

    def list_chat_completions(self, **kwargs: Any) -> list[dict[str, Any]]:
        self.calls.append(("list", kwargs))
        return [completion_dict("c-1"), completion_dict("c-2")]

    def update_chat_completion(self, completion_id: str, metadata: dict[str, str], **kwargs: Any) -> Any:
        self.calls.append(("update", {"completion_id": completion_id, "metadata": metadata, **kwargs}))
        return completion_dict(completion_id, metadata=metadata)

    def delete_chat_completion(self, completion_id: str) -> bool:
        self.calls.append(("delete", {"completion_id": completion_id}))
        return True

    def list_chat_completion_messages(self, completion_id: str, limit: str = "20") -> list[dict[str, Any]]:
        self.calls.append(("messages", {"completion_id": completion_id, "limit": limit}))
        return [{"id": f"{completion_id}-0", "role": "assistant", "content": "hi", "refusal": None}]


def test_path_and_query_parameters_reach_the_stored_routes(storage: str) -> None:
    handler = StoredRoutes()
    with serve(frontend(handler, storage)) as app:
        client = sdk(app.url + "/v1")
        got = httpx.get(app.url + "/v1/chat/completions/abc", params={"include": "x"})
        assert_valid("CreateChatCompletionResponse", got.json())
        assert client.chat.completions.retrieve("abc").id == "abc"
        listed = client.chat.completions.list(limit=2, order="desc", metadata={"team": "a"})
        page = httpx.get(app.url + "/v1/chat/completions", params={"limit": "2"}).json()
        assert_valid("ChatCompletionList", page)
        assert page["first_id"] == "c-1" and page["last_id"] == "c-2" and page["has_more"] is False
        updated = client.chat.completions.update("abc", metadata={"reviewed": "yes"})
        deleted = client.chat.completions.delete("abc")
        messages = client.chat.completions.messages.list("abc", limit=5)
        raw_messages = httpx.get(app.url + "/v1/chat/completions/abc/messages").json()
        assert_valid("ChatCompletionMessageList", raw_messages)
        with pytest.raises(openai.NotFoundError):  # NotImplemented: the store answers, and has no such id
            client.chat.completions.retrieve("from-store")
    assert [c.id for c in listed.data] == ["c-1", "c-2"]
    assert updated.metadata == {"reviewed": "yes"}
    assert deleted.deleted is True and deleted.id == "abc" and deleted.object == "chat.completion.deleted"
    assert messages.data[0].id == "abc-0"
    calls = dict(handler.calls)
    assert calls["retrieve"] == {"completion_id": "from-store"}
    assert calls["list"] == {"limit": "2"}
    assert calls["messages"] == {"completion_id": "abc", "limit": "20"}
    assert ("retrieve", {"completion_id": "abc", "include": "x"}) in handler.calls
    sdk_list = next(kw for name, kw in handler.calls if name == "list")
    assert sdk_list == {"limit": "2", "order": "desc", "metadata[team]": "a"}
    update = next(kw for name, kw in handler.calls if name == "update")
    assert update["metadata"] == {"reviewed": "yes"} and update["body"] == {"metadata": {"reviewed": "yes"}}


def test_a_name_from_two_places_is_a_400(storage: str) -> None:
    with serve(frontend(StoredRoutes(), storage, include_url_info=True)) as app:
        cases = [
            ("POST", "/v1/chat/completions?model=other", {"model": "m", "messages": USER}, "model", "query string"),
            ("GET", "/v1/chat/completions/abc?completion_id=zzz", None, "completion_id", "URL path"),
            ("GET", "/v1/chat/completions?request_path=/x", None, "request_path", "query string"),
            ("POST", "/v1/chat/completions?body=1", {"model": "m", "messages": USER}, "body", "query string"),
        ]
        for method, path, body, name, source in cases:
            resp = httpx.request(method, app.url + path, json=body)
            assert resp.status_code == 400, (path, resp.text)
            error = resp.json()["error"]
            assert error["param"] == name and error["code"] == "parameter_conflict"
            assert f"'{name}'" in error["message"] and source in error["message"]


MANDATORY = [
    ("/v1/chat/completions", {"messages": USER}, "model"),
    ("/v1/chat/completions", {"model": "m"}, "messages"),
    ("/v1/chat/completions/abc", {}, "metadata"),
    ("/v1/completions", {"prompt": "x"}, "model"),
    ("/v1/completions", {"model": "m"}, "prompt"),
    ("/v1/embeddings", {"input": "x"}, "model"),
    ("/v1/embeddings", {"model": "m"}, "input"),
    ("/v1/images/generations", {"model": "m"}, "prompt"),
    ("/v1/responses/compact", {"input": "x"}, "model"),
]


def test_each_mandatory_field_missing_is_a_422_naming_it(storage: str) -> None:
    called: list[Any] = []
    with serve(frontend(lambda **kw: called.append(kw), storage)) as app:
        for path, body, field in MANDATORY:
            resp = httpx.post(app.url + path, json=body)
            assert resp.status_code == 422, (path, resp.text)
            assert resp.json() == {
                "error": {
                    "message": f"Missing required parameter: '{field}'.",
                    "type": "invalid_request_error",
                    "param": field,
                    "code": "missing_required_parameter",
                }
            }
        empty_update = httpx.post(app.url + "/v1/chat/completions/abc", content=b"")
        assert empty_update.status_code == 422 and empty_update.json()["error"]["param"] == "metadata"
        with pytest.raises(openai.UnprocessableEntityError):
            sdk(app.url + "/v1").embeddings.create(model=openai.NOT_GIVEN, input="x")  # type: ignore[arg-type]
    assert called == []  # the handler never saw them


def test_mandatory_status_can_be_400(storage: str) -> None:
    with serve(frontend(lambda messages: "x", storage, mandatory_status=400)) as app:
        resp = httpx.post(app.url + "/v1/chat/completions", json={"model": "m"})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "messages"


def test_url_info_turns_a_function_into_a_dispatcher(storage: str) -> None:
    seen: list[tuple[str, str, list[str]]] = []

    def dispatch(request_path: str, request_method: str, **kwargs: Any) -> Any:
        seen.append((request_method, request_path, sorted(kwargs)))
        if request_method == "POST" and request_path == "/v1/chat/completions":
            return "dispatched"
        return NotImplemented

    with serve(frontend(dispatch, storage, include_url_info=True)) as app:
        client = sdk(app.url + "/v1")
        created = client.chat.completions.create(model="m", messages=USER, store=True)
        assert created.choices[0].message.content == "dispatched"
        assert client.chat.completions.retrieve(created.id).id == created.id  # from the store
        client.chat.completions.delete(created.id)
        with pytest.raises(openai.BadRequestError) as info:
            client.embeddings.create(model="m", input="x")
        assert info.value.code == "unsupported_model"
    assert seen[0][:2] == ("POST", "/v1/chat/completions") and "messages" in seen[0][2] and "body" in seen[0][2]
    assert ("GET", f"/v1/chat/completions/{created.id}", ["completion_id"]) in seen
    assert ("DELETE", f"/v1/chat/completions/{created.id}", ["completion_id"]) in seen
    assert seen[-1][:2] == ("POST", "/v1/embeddings") and "input" in seen[-1][2]


# -- output mappings ---------------------------------------------------------------------------------------------


def test_unknown_keys_are_dropped_at_every_level(storage: str) -> None:
    def handler(messages: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "choices": [
                {
                    "message": {"role": "assistant", "content": "hi", "confidence": 0.9},
                    "finish_reason": "stop",
                    "debug": {"latency_ms": 3},
                }
            ],
            "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
            "system_fingerprint": "fp_1",
            "internal_trace": ["a", "b"],
        }

    with serve(frontend(handler, storage)) as app:
        body = httpx.post(app.url + "/v1/chat/completions", json={"model": "m", "messages": USER}).json()
        typed = sdk(app.url + "/v1").chat.completions.create(model="m", messages=USER)
    assert_valid("CreateChatCompletionResponse", body)
    assert "internal_trace" not in body and "debug" not in body["choices"][0]
    assert "confidence" not in body["choices"][0]["message"]
    assert body["system_fingerprint"] == "fp_1" and body["usage"]["total_tokens"] == 3
    assert typed.choices[0].message.content == "hi" and typed.usage is not None


def test_a_missing_required_field_is_a_500_naming_it(storage: str, caplog: pytest.LogCaptureFixture) -> None:
    class Forgetful:
        def create_chat_completion(self, messages: Any) -> dict[str, Any]:
            return {"answer": "no choices here"}

        def retrieve_chat_completion(self, completion_id: str) -> dict[str, Any]:
            completion = completion_dict(completion_id)
            del completion["created"]
            return completion

    with caplog.at_level(logging.ERROR, logger="manifold.handler"), serve(frontend(Forgetful(), storage)) as app:
        client = sdk(app.url + "/v1")
        with pytest.raises(openai.InternalServerError) as created:
            client.chat.completions.create(model="m", messages=USER)
        with pytest.raises(openai.InternalServerError) as retrieved:
            client.chat.completions.retrieve("abc")
    assert "lacks the required field 'choices'" in created.value.message
    assert created.value.code == "handler_invalid_answer"
    assert "POST /v1/chat/completions" in created.value.message
    assert "lacks the required field 'created'" in retrieved.value.message
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "'choices'" in logged and "'created'" in logged


class Stored(msgspec.Struct):
    id: str
    created: int
    model: str
    choices: list[dict[str, Any]]
    object: str = "chat.completion"


def test_structs_and_pydantic_objects_are_answers(storage: str) -> None:
    class Typed:
        def create_chat_completion(self, messages: Any) -> ChatCompletion:
            return ChatCompletion.model_validate(completion_dict("chatcmpl-sdk-object", "from a pydantic object"))

        def retrieve_chat_completion(self, completion_id: str) -> Stored:
            d = completion_dict(completion_id, "from a Struct")
            return Stored(id=d["id"], created=d["created"], model=d["model"], choices=d["choices"])

    with serve(frontend(Typed(), storage)) as app:
        client = sdk(app.url + "/v1")
        created = client.chat.completions.create(model="m", messages=USER)
        retrieved = client.chat.completions.retrieve("s-1")
    assert created.choices[0].message.content == "from a pydantic object"
    assert retrieved.choices[0].message.content == "from a Struct" and retrieved.model == "kept-model"


# -- errors ------------------------------------------------------------------------------------------------------


def test_http_error_gives_its_status_and_code(storage: str) -> None:
    class Failing:
        def create_chat_completion(self, messages: Any, model: str) -> str:
            if model == "busy":
                raise HTTPError(429, "Slow down.", code="too_fast")
            raise HTTPError(404, f"No model {model} here.", code="model_not_found", param="model")

        def retrieve_chat_completion(self, completion_id: str) -> Any:
            raise HTTPError(404, f"No chat completion {completion_id}.")

    with serve(frontend(Failing(), storage)) as app:
        client = sdk(app.url + "/v1")
        with pytest.raises(openai.NotFoundError) as missing:
            client.chat.completions.create(model="gone", messages=USER)
        with pytest.raises(openai.RateLimitError) as busy:
            client.chat.completions.create(model="busy", messages=USER, stream=True)
        with pytest.raises(openai.NotFoundError) as stored:
            client.chat.completions.retrieve("nope")
    assert missing.value.body == {
        "message": "No model gone here.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    assert busy.value.code == "too_fast" and busy.value.type == "rate_limit_error"
    assert stored.value.body["message"] == "No chat completion nope."  # type: ignore[index]


def test_a_non_2xx_response_passes_through_untouched(storage: str) -> None:
    from starlette.responses import JSONResponse

    envelope = {"error": {"message": "Quota of team A used up.", "type": "quota", "param": None, "code": "q1"}}
    raw = json.dumps(envelope, separators=(",", ":")).encode()

    class Replies:
        def create_chat_completion(self, messages: Any, model: str) -> Any:
            if model == "starlette":
                return JSONResponse({"error": {"message": "Policy.", "type": "policy"}}, 403, {"x-why": "policy"})
            if model == "text":
                return Response(b"plain failure", status_code=502)
            if model == "ok":
                return Response({"choices": [{"message": {"content": "fine"}}], "extra": 1})
            return Response(raw, status_code=409, headers={"x-quota": "0"})

        def delete_chat_completion(self, completion_id: str) -> Any:
            return Response(envelope, status_code=409)

    with serve(frontend(Replies(), storage)) as app:
        conflict = httpx.post(app.url + "/v1/chat/completions", json={"model": "m", "messages": USER})
        streamed = httpx.post(app.url + "/v1/chat/completions", json={"model": "m", "messages": USER, "stream": True})
        starlette = httpx.post(app.url + "/v1/chat/completions", json={"model": "starlette", "messages": USER})
        text = httpx.post(app.url + "/v1/chat/completions", json={"model": "text", "messages": USER})
        deleted = httpx.delete(app.url + "/v1/chat/completions/abc")
        client = sdk(app.url + "/v1")
        with pytest.raises(openai.ConflictError) as info:
            client.chat.completions.create(model="m", messages=USER)
        fine = client.chat.completions.create(model="ok", messages=USER)
    assert conflict.status_code == 409 and conflict.content == raw and conflict.headers["x-quota"] == "0"
    assert streamed.status_code == 409 and streamed.content == raw
    assert deleted.status_code == 409 and deleted.json() == envelope
    assert starlette.status_code == 403 and starlette.json() == {"error": {"message": "Policy.", "type": "policy"}}
    assert starlette.headers["x-why"] == "policy"
    assert text.status_code == 502 and text.json()["error"]["message"] == "plain failure"
    assert info.value.code == "q1" and info.value.body == envelope["error"]
    assert fine.choices[0].message.content == "fine"


def test_a_handler_crash_is_a_500_without_its_details(storage: str, caplog: pytest.LogCaptureFixture) -> None:
    def handler(messages: Any) -> str:
        raise ValueError("secret internal detail")

    with caplog.at_level(logging.ERROR, logger="manifold.handler"), serve(frontend(handler, storage)) as app:
        resp = httpx.post(app.url + "/v1/chat/completions", json={"model": "m", "messages": USER})
    assert resp.status_code == 500
    error = resp.json()["error"]
    assert "secret" not in error["message"] and "ValueError" in error["message"]
    assert error["code"] == "handler_error" and error["type"] == "server_error"
    assert any(r.exc_info and "secret internal detail" in str(r.exc_info[1]) for r in caplog.records)


def test_errors_while_streaming(storage: str) -> None:
    def handler(messages: Any, model: str) -> Iterator[str]:
        if model == "early":
            raise HTTPError(404, "Nothing to stream.")
        yield "first words"
        raise HTTPError(503, "The model went away.", code="gone")

    with serve(frontend(handler, storage)) as app:
        early = httpx.post(app.url + "/v1/chat/completions", json={"model": "early", "messages": USER, "stream": True})
        late = httpx.post(app.url + "/v1/chat/completions", json={"model": "late", "messages": USER, "stream": True})
        client = sdk(app.url + "/v1")
        received: list[str] = []
        with pytest.raises(openai.APIError) as info:
            for chunk in client.chat.completions.create(model="late", messages=USER, stream=True):
                received.append(chunk.choices[0].delta.content or "")
    assert early.status_code == 404 and early.json()["error"]["message"] == "Nothing to stream."
    events = sse_events(late.text)
    assert_valid("CreateChatCompletionStreamResponse", events[0])
    assert events[0]["choices"][0]["delta"]["content"] == "first words"
    assert events[-1] == {
        "error": {"message": "The model went away.", "type": "server_error", "param": None, "code": "gone"}
    }
    assert received == ["first words"] and "went away" in info.value.message


# -- custom routes, groups, prefixes -------------------------------------------------------------------------------


def test_custom_routes_beside_the_api(storage: str) -> None:
    app_ = frontend(lambda messages: "chat", storage)
    app_.add_route("/health", "GET", lambda: {"status": "fine"})

    def add_item(item_id: str, body: dict[str, Any], verbose: str = "no") -> Response:
        return Response({"id": item_id, "stored": body, "verbose": verbose}, status_code=201, headers={"x-item": "1"})

    async def echo_headers(**kwargs: Any) -> list[Any]:
        return sorted(kwargs)

    app_.add_route("/admin/items/{item_id}", "POST", add_item)
    app_.add_route("/admin/args", "get", echo_headers)
    with pytest.raises(ValueError, match="must start with '/'"):
        app_.add_route("health", "GET", lambda: None)
    with pytest.raises(ValueError, match="unknown HTTP method"):
        app_.add_route("/x", "FETCH", lambda: None)
    with serve(app_) as app:
        health = httpx.get(app.url + "/health")
        item = httpx.post(app.url + "/admin/items/7?verbose=yes", json={"name": "seven"})
        args = httpx.get(app.url + "/admin/args?a=1")
        bad_json = httpx.post(app.url + "/admin/items/7", content=b"{not json")
        chat = sdk(app.url + "/v1").chat.completions.create(model="m", messages=USER)
    assert health.json() == {"status": "fine"}
    assert item.status_code == 201 and item.headers["x-item"] == "1"
    assert item.json() == {"id": "7", "stored": {"name": "seven"}, "verbose": "yes"}
    assert args.json() == ["a"]
    assert bad_json.status_code == 400 and bad_json.json()["error"]["code"] == "invalid_json"
    assert chat.choices[0].message.content == "chat"


def test_only_the_chosen_groups_are_mounted_and_more_can_be_added(storage: str) -> None:
    class Both:
        def create_chat_completion(self, messages: Any) -> str:
            return "chat"

        def create_embedding(self, input: Any) -> list[list[float]]:
            return [[0.5, 0.25]]

    app_ = frontend(Both(), storage, endpoints=[Endpoint.CHAT_COMPLETIONS])
    with serve(app_) as app:
        assert httpx.post(app.url + "/v1/embeddings", json={"model": "m", "input": "x"}).status_code == 404
        assert httpx.get(app.url + "/v1/models").status_code == 404
    app_.add_endpoints(["embeddings", Endpoint.MODELS])
    app_.add_endpoints([Endpoint.CHAT_COMPLETIONS], prefix="/v2")
    with serve(app_) as app:
        for base in ("/v1", "/v2"):
            assert sdk(app.url + base).chat.completions.create(model="m", messages=USER).choices[0].message.content
        embedded = sdk(app.url + "/v1").embeddings.create(model="m", input="x", encoding_format="float")
        assert httpx.post(app.url + "/v2/embeddings", json={"model": "m", "input": "x"}).status_code == 404
        assert [m.id for m in sdk(app.url + "/v1").models.list().data] == ["Both"]
    assert embedded.data[0].embedding == [0.5, 0.25]


def test_without_a_prefix_the_api_is_at_the_root(storage: str) -> None:
    with serve(OpenAIFrontend(lambda messages: "root", storage=storage)) as app:
        assert sdk(app.url).chat.completions.create(model="m", messages=USER).choices[0].message.content == "root"
        assert httpx.get(app.url + "/v1/chat/completions").status_code == 404


def test_models_names_the_served_models(storage: str) -> None:
    with serve(frontend(lambda messages, model: model, storage, models=["alpha", "beta"])) as app:
        client = sdk(app.url + "/v1")
        raw = httpx.get(app.url + "/v1/models").json()
        assert_valid("ListModelsResponse", raw)
        assert [m["id"] for m in raw["data"]] == ["alpha", "beta"]
        assert client.chat.completions.create(model="beta", messages=USER).choices[0].message.content == "beta"
        with pytest.raises(openai.NotFoundError) as info:
            client.chat.completions.create(model="gamma", messages=USER)
    assert info.value.code == "model_not_found"


def test_a_handler_may_serve_every_create_route(storage: str) -> None:
    class Everything:
        def create_chat_completion(self, messages: Any) -> str:
            return "chat"

        def create_completion(self, prompt: str, stream: bool = False) -> Any:
            return iter(["completed ", prompt]) if stream else f"completed {prompt}"

        def create_embedding(self, input: Any, model: str) -> dict[str, Any]:
            inputs = input if isinstance(input, list) else [input]
            return {"data": [{"embedding": [float(len(t)), 1.0]} for t in inputs], "model": "ignored"}

        def create_image(self, prompt: str) -> dict[str, Any]:
            return {"data": [{"url": "http://127.0.0.1/image.png", "revised_prompt": prompt, "seed": 1}]}

        def list_models(self) -> list[str]:
            return ["m1", "m2"]

    with serve(frontend(Everything(), storage)) as app:
        client = sdk(app.url + "/v1")
        completion = client.completions.with_raw_response.create(model="m", prompt="this")
        # The SDK types a legacy chunk's finish_reason as never null: only a lenient client reads streams.
        with openai.OpenAI(base_url=app.url + "/v1", api_key="unused", max_retries=0) as lenient:
            streamed = list(lenient.completions.create(model="m", prompt="that", stream=True))
        embeddings = client.embeddings.with_raw_response.create(model="m", input=["ab", "abc"], encoding_format="float")
        image = client.images.with_raw_response.generate(model="m", prompt="a cat")
        models = client.models.list()
    assert_valid("CreateCompletionResponse", json.loads(completion.text))
    assert completion.parse().choices[0].text == "completed this"
    assert "".join(c.choices[0].text for c in streamed if c.choices) == "completed that"
    assert_valid("CreateEmbeddingResponse", json.loads(embeddings.text))
    assert [d.embedding for d in embeddings.parse().data] == [[2.0, 1.0], [3.0, 1.0]]
    assert embeddings.parse().model == "m"
    image_body = json.loads(image.text)
    assert_valid("ImagesResponse", image_body)
    assert image_body["data"] == [{"url": "http://127.0.0.1/image.png", "revised_prompt": "a cat"}]
    assert [m.id for m in models.data] == ["m1", "m2"] and models.data[0].owned_by == "manifold"


# -- sync, async, generators ---------------------------------------------------------------------------------------


def test_sync_handlers_run_off_the_event_loop(storage: str) -> None:
    threads: list[int] = []

    def sync_handler(messages: Any) -> str:
        threads.append(threading.get_ident())
        return "sync"

    def sync_generator(messages: Any) -> Iterator[str]:
        for word in ("sync ", "generator"):
            threads.append(threading.get_ident())
            yield word

    for handler, text in ((sync_handler, "sync"), (sync_generator, "sync generator")):
        threads.clear()
        with serve(frontend(handler, storage)) as app:
            client = sdk(app.url + "/v1")
            assert client.chat.completions.create(model="m", messages=USER).choices[0].message.content == text
            chunks = list(client.chat.completions.create(model="m", messages=USER, stream=True))
            assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
        assert threads and app.loop_thread_id not in threads


def test_async_handlers_run_on_the_event_loop(storage: str) -> None:
    threads: list[int] = []

    async def async_handler(messages: Any) -> str:
        threads.append(threading.get_ident())
        await asyncio.sleep(0)
        return "async"

    async def async_generator(messages: Any) -> AsyncIterator[dict[str, Any]]:
        threads.append(threading.get_ident())
        yield {"content": "async "}
        await asyncio.sleep(0)
        yield {"choices": [{"index": 0, "delta": {"content": "generator"}, "finish_reason": "length"}]}

    served: list[ServedApp] = []
    for handler, text, finish in ((async_handler, "async", "stop"), (async_generator, "async generator", "length")):
        with serve(frontend(handler, storage)) as app:
            served.append(app)
            client = sdk(app.url + "/v1")
            answer = client.chat.completions.create(model="m", messages=USER)
            assert answer.choices[0].message.content == text and answer.choices[0].finish_reason == finish
            chunks = list(client.chat.completions.create(model="m", messages=USER, stream=True))
            assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
            assert chunks[-1].choices[0].finish_reason == finish
    assert set(threads) == {served[0].loop_thread_id, served[1].loop_thread_id}


def test_a_streamed_tool_call_from_delta_dicts(storage: str) -> None:
    def handler(messages: Any, tools: Any) -> Iterator[dict[str, Any]]:
        yield {"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "get_weather", "arguments": ""}}]}
        yield {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}
        yield {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}
        yield {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}

    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    with serve(frontend(handler, storage)) as app:
        client = sdk(app.url + "/v1")
        with client.chat.completions.stream(model="m", messages=USER, tools=[tool]) as stream:  # type: ignore[list-item]
            final = stream.get_final_completion()
        whole = client.chat.completions.create(model="m", messages=USER, tools=[tool])  # type: ignore[list-item]
    for completion in (final, whole):
        call = completion.choices[0].message.tool_calls[0]  # type: ignore[index]
        assert call.id == "call_1" and call.function.name == "get_weather"  # type: ignore[union-attr]
        assert call.function.arguments == '{"city": "Paris"}'  # type: ignore[union-attr]
        assert completion.choices[0].finish_reason == "tool_calls"


# -- inside a FastAPI app ----------------------------------------------------------------------------------------


def test_mounted_inside_fastapi(storage: str) -> None:
    from fastapi import FastAPI

    def handler(request_path: str, messages: Any = None, **kwargs: Any) -> Any:
        if messages is None:  # a dispatcher (include_url_info): the stored routes are the store's
            return NotImplemented
        return iter(["mounted at ", request_path])

    llm = frontend(handler, storage, include_url_info=True)
    lifespan_calls: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # FastAPI does not pass lifespan events to mounted apps: start and stop the frontend with the host.
        await llm.startup()
        lifespan_calls.append("started")
        yield
        await llm.shutdown()
        lifespan_calls.append("stopped")

    api = FastAPI(lifespan=lifespan)

    @api.get("/ping")
    def ping() -> dict[str, bool]:
        return {"pong": True}

    api.mount("/llm", llm)
    with serve(api) as app:
        client = sdk(app.url + "/llm/v1")
        answer = client.chat.completions.create(model="m", messages=USER, store=True)
        chunks = list(client.chat.completions.create(model="m", messages=USER, stream=True))
        stored = client.chat.completions.retrieve(answer.id)
        ping = httpx.get(app.url + "/ping").json()
        outside = httpx.get(app.url + "/v1/models")
    assert answer.choices[0].message.content == "mounted at /v1/chat/completions"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "mounted at /v1/chat/completions"
    assert stored.id == answer.id and ping == {"pong": True} and outside.status_code == 404
    assert lifespan_calls == ["started", "stopped"]


def test_a_client_that_leaves_closes_the_handlers_generator(storage: str) -> None:
    started, closed = threading.Event(), threading.Event()

    async def handler(messages: Any) -> AsyncIterator[str]:
        try:
            yield "first"
            started.set()
            await asyncio.sleep(60)  # a slow model: the client leaves meanwhile
            yield "never sent"
        finally:
            closed.set()

    with serve(frontend(handler, storage)) as app:
        body = {"model": "m", "messages": USER, "stream": True}
        with httpx.stream("POST", app.url + "/v1/chat/completions", json=body) as resp:
            first = next(resp.iter_lines())
            assert started.wait(10)
        assert json.loads(first.removeprefix("data: "))["choices"][0]["delta"]["content"] == "first"
        assert closed.wait(10), "the handler's generator was not closed when the client left"


# -- the Responses API ---------------------------------------------------------------------------------------------


def test_responses_through_the_handlers_chat_answer(storage: str) -> None:
    """A chat handler gets the whole Responses surface: the conversation it sees is Manifold's (instructions,
    the chain of previous responses), and token counts, background runs, cancel and compaction work."""
    seen: list[list[dict[str, Any]]] = []
    release = threading.Event()

    def handler(messages: list[dict[str, Any]], model: str) -> str:
        seen.append(messages)
        if model == "slow":
            release.wait(20)
        return f"turn {len(seen)}"

    with serve(frontend(handler, storage)) as app, httpx.Client(base_url=app.url, timeout=20) as http:
        client = sdk(app.url + "/v1")
        first = client.responses.create(model="m", input="hello", instructions="Be brief.")
        second = client.responses.create(model="m", input="more", previous_response_id=first.id)
        assert (first.output_text, second.output_text) == ("turn 1", "turn 2")
        assert seen[1] == [
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "turn 1"},
            {"role": "user", "content": "more"},
        ]
        assert seen[0][0] == {"role": "system", "content": "Be brief."}

        count = http.post("/v1/responses/input_tokens", json={"model": "m", "input": "a few words here"})
        assert_valid("TokenCountsResource", count.json())
        assert count.json()["input_tokens"] > 0

        compacted = http.post("/v1/responses/compact", json={"model": "m", "previous_response_id": second.id})
        assert compacted.status_code == 200, compacted.text
        assert_valid("CompactResource", compacted.json())
        assert compacted.json()["output"][-1]["type"] == "compaction"
        after = client.responses.create(
            model="m", input=[*compacted.json()["output"], {"role": "user", "content": "x"}]
        )
        assert after.status == "completed"

        background = client.responses.create(model="slow", input="take your time", background=True)
        assert background.status in ("queued", "in_progress")
        cancelled = client.responses.cancel(background.id)
        release.set()
        assert cancelled.status == "cancelled"
        assert client.responses.retrieve(background.id).status == "cancelled"
        check_response(http.get(f"/v1/responses/{background.id}").json())


class ResponsesNative:
    """A handler that answers `POST /responses` from its own fields, and a few stored routes itself."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def create_response(self, input: Any, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        self.calls.append({"input": input, "messages": messages, **kwargs})
        if kwargs.get("tools"):
            return {
                "output": [{"type": "function_call", "call_id": "call_9", "name": "lookup", "arguments": '{"q": "x"}'}],
                "usage": {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7},
            }
        if kwargs.get("stream"):
            return iter([{"type": "response.output_text.delta", "delta": "event "}, "and text"])
        return {
            "id": "ignored: Manifold names the response",
            "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "own"}]}],
            "usage": {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4},
        }

    def retrieve_response(self, response_id: str) -> Any:
        if response_id != "resp_own":
            return NotImplemented
        return {**OWN_RESPONSE, "internal": True}

    def count_response_input_tokens(self, input: Any = None, **kwargs: Any) -> int:
        return 42


OWN_RESPONSE: dict[str, Any] = {
    "id": "resp_own",
    "created_at": 1_700_000_000,
    "status": "completed",
    "error": None,
    "incomplete_details": None,
    "instructions": None,
    "metadata": {},
    "model": "kept",
    "output": [
        {
            "type": "message",
            "id": "msg_1",
            "status": "completed",
            "role": "assistant",
            "content": [
                {"type": "output_text", "text": "from the handler's own store", "annotations": [], "logprobs": []}
            ],
        }
    ],
    "parallel_tool_calls": True,
    "temperature": None,
    "tool_choice": "auto",
    "tools": [],
    "top_p": None,
}


def test_create_response_gets_the_responses_fields(storage: str) -> None:
    handler = ResponsesNative()
    tool = {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}
    with serve(frontend(handler, storage)) as app, httpx.Client(base_url=app.url, timeout=20) as http:
        client = sdk(app.url + "/v1")
        raw = client.responses.with_raw_response.create(
            model="m", input="hi", instructions="Short.", metadata={"a": "b"}
        )
        own = raw.parse()
        check_response(json.loads(raw.text))
        chained = client.responses.create(model="m", input="next", previous_response_id=own.id, tools=[tool])  # type: ignore[list-item]
        events = post_stream(http, {"model": "m", "input": "stream"})
        stored = client.responses.retrieve(own.id)  # not the handler's: the engine's store
        from_handler = http.get("/v1/responses/resp_own").json()
        tokens = client.responses.input_tokens.count(model="m", input="x")
    assert own.output_text == "own" and own.id.startswith("resp_") and own.usage.total_tokens == 4  # type: ignore[union-attr]
    assert stored.output_text == "own"
    first = handler.calls[0]
    assert first["input"] == "hi" and first["instructions"] == "Short." and first["metadata"] == {"a": "b"}
    assert first["messages"] == [{"role": "system", "content": "Short."}, {"role": "user", "content": "hi"}]
    assert first["body"]["model"] == "m"
    second = handler.calls[1]
    assert second["previous_response_id"] == own.id and second["input"] == "next"
    assert [m["content"] for m in second["messages"]] == ["hi", "own", "next"]
    call = chained.output[0]
    assert call.type == "function_call" and call.call_id == "call_9" and call.arguments == '{"q": "x"}'  # type: ignore[union-attr]
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == "event and text"
    assert check_response(from_handler)["output"][0]["content"][0]["text"] == "from the handler's own store"
    assert "internal" not in from_handler
    assert tokens.input_tokens == 42


def test_a_dispatcher_may_leave_responses_to_its_chat_answer(storage: str) -> None:
    seen: list[tuple[str, bool]] = []

    def dispatch(request_path: str, request_method: str, **kwargs: Any) -> Any:
        seen.append((f"{request_method} {request_path}", "input" in kwargs))
        if "input" in kwargs or request_method != "POST":
            return NotImplemented  # POST /responses with its own fields, stored routes: the defaults
        return "from chat"

    with serve(frontend(dispatch, storage, include_url_info=True)) as app:
        client = sdk(app.url + "/v1")
        response = client.responses.create(model="m", input="hi")
        assert response.output_text == "from chat"
        assert client.responses.retrieve(response.id).output_text == "from chat"
    assert seen[:2] == [("POST /v1/responses", True), ("POST /v1/responses", False)]
    assert ("GET", f"/v1/responses/{response.id}") == tuple(seen[2][0].split(" "))
