"""The handler frontend as a user runs it: `manifold serve --handler` with the example handler, a dispatcher with
`--include-url-info`, and `provider: python` beside a remote upstream in one config. The official `openai` SDK
is the client; every body and chunk is judged by OpenAI's schemas.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conformance.schema import assert_valid
from tests.conftest import ROOT
from tests.e2e.conftest import ManifoldProcess
from tests.e2e.responses_helpers import TEXT_STREAM, check_response, collapsed, post_stream
from tests.e2e.test_chat import sse_events
from tests.e2e.test_observability import CHAT, access_line, scrape
from tests.fakes.openai_upstream import FakeUpstream

# The examples are imported from the checkout; so is manifold itself (src/ before any installed copy).
ENV = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
USER = [{"role": "user", "content": "hello there"}]
MESSAGE_PAGE_RELAXED = {"stored_message_roles", "empty_page_null_ids"}


def sdk(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, _strict_response_validation=True)


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManifoldProcess]:
    """`manifold serve --handler examples.echo_handler:answer`, storing in SQLite under its working directory."""
    proc = ManifoldProcess(
        None, tmp_path_factory.mktemp("example"), env=ENV, extra_args=("--handler", "examples.echo_handler:answer")
    )
    yield proc
    proc.stop()


# -- the example handler answers the official SDK ------------------------------------------------------------------


def test_example_answers_chat(example: ManifoldProcess) -> None:
    client = sdk(example.base_url)
    raw = client.chat.completions.with_raw_response.create(model="echo-1", messages=USER)
    body = json.loads(raw.text)
    assert_valid("CreateChatCompletionResponse", body)
    completion = raw.parse()
    assert completion.choices[0].message.content == "echo-1 heard: hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "echo-1" and completion.id.startswith("chatcmpl-")


def test_example_streams_chat(example: ManifoldProcess) -> None:
    client = sdk(example.base_url)
    chunks = list(client.chat.completions.create(model="echo-1", messages=USER, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "echo-1 heard: hello there"
    assert len(chunks) >= 4  # one per word, then the finish
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len({c.id for c in chunks}) == 1
    with client.chat.completions.stream(model="echo-1", messages=USER) as stream:
        assert stream.get_final_completion().choices[0].message.content == "echo-1 heard: hello there"
    resp = httpx.post(
        example.base_url + "/chat/completions", json={"model": "echo-1", "messages": USER, "stream": True}
    )
    events = sse_events(resp.text)
    assert events[-1] == "[DONE]"
    for chunk in events[:-1]:
        assert_valid("CreateChatCompletionStreamResponse", chunk)


def test_example_gets_the_stored_routes(example: ManifoldProcess) -> None:
    client = sdk(example.base_url)
    tag = uuid.uuid4().hex
    first = client.chat.completions.create(model="echo-1", messages=USER, store=True, metadata={"run": tag})
    streamed = list(
        client.chat.completions.create(
            model="echo-2",
            messages=[{"role": "user", "content": "second one"}],
            store=True,
            stream=True,
            metadata={"run": tag},
        )
    )
    second_id = streamed[0].id

    got = httpx.get(f"{example.base_url}/chat/completions/{first.id}")
    assert got.status_code == 200
    assert_valid("CreateChatCompletionResponse", got.json())
    assert client.chat.completions.retrieve(second_id).choices[0].message.content == "echo-2 heard: second one"

    listed = client.chat.completions.list(metadata={"run": tag}, order="asc")
    assert [c.id for c in listed.data] == [first.id, second_id]
    page = httpx.get(f"{example.base_url}/chat/completions", params={"metadata[run]": tag}).json()
    assert_valid("ChatCompletionList", page)

    # The SDK types a stored message as an assistant message, so only a lenient client reads user messages.
    with openai.OpenAI(base_url=example.base_url, api_key="unused", max_retries=0) as lenient:
        messages = lenient.chat.completions.messages.list(first.id)
    assert [m.content for m in messages.data] == ["hello there"]
    raw_messages = httpx.get(f"{example.base_url}/chat/completions/{first.id}/messages").json()
    assert_valid("ChatCompletionMessageList", raw_messages, relaxed=MESSAGE_PAGE_RELAXED)

    updated = client.chat.completions.update(first.id, metadata={"run": tag, "reviewed": "yes"})
    assert updated.metadata == {"run": tag, "reviewed": "yes"}
    deleted = client.chat.completions.delete(first.id)
    assert deleted.deleted and deleted.id == first.id
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.retrieve(first.id)


def test_example_answers_the_responses_api(example: ManifoldProcess) -> None:
    client = sdk(example.base_url)
    raw = client.responses.with_raw_response.create(model="echo-1", input="hello there", instructions="Be brief.")
    first = raw.parse()
    check_response(json.loads(raw.text))
    assert first.output_text == "echo-1 heard: hello there" and first.status == "completed"
    assert first.instructions == "Be brief." and first.model == "echo-1"

    with httpx.Client(base_url=example.url, timeout=20) as http:
        events = post_stream(http, {"model": "echo-1", "input": "stream this"})
    assert collapsed([e["type"] for e in events]) == TEXT_STREAM
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == (
        "echo-1 heard: stream this"
    )
    with client.responses.stream(model="echo-1", input="with the helper") as stream:
        assert stream.get_final_response().output_text == "echo-1 heard: with the helper"

    chained = client.responses.create(model="echo-1", input="and again", previous_response_id=first.id)
    assert chained.output_text == "echo-1 heard: and again" and chained.previous_response_id == first.id
    got = httpx.get(f"{example.base_url}/responses/{chained.id}")
    assert check_response(got.json())["output"] == json.loads(chained.model_dump_json(exclude_unset=True))["output"]
    assert client.responses.retrieve(chained.id).output_text == chained.output_text
    items = client.responses.input_items.list(chained.id)
    assert [i.content[0].text for i in items.data] == ["and again"]  # type: ignore[union-attr]
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)


def test_example_serves_legacy_completions_and_models(example: ManifoldProcess) -> None:
    client = sdk(example.base_url)
    raw = client.completions.with_raw_response.create(model="echo-1", prompt="say hi")
    assert_valid("CreateCompletionResponse", json.loads(raw.text))
    assert raw.parse().choices[0].text == "echo-1 heard: say hi"
    models = client.models.list()
    assert [m.id for m in models.data] == ["answer"]
    assert client.models.retrieve("any-name").id == "any-name"


def test_example_without_embeddings_says_so(example: ManifoldProcess) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk(example.base_url).embeddings.create(model="echo-1", input="x")
    assert info.value.code == "unsupported_model"


def test_missing_mandatory_field_is_422_from_the_server(example: ManifoldProcess) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as info:
        sdk(example.base_url).chat.completions.create(model=openai.NOT_GIVEN, messages=USER)  # type: ignore[call-overload]
    assert info.value.status_code == 422 and info.value.param == "model"
    resp = httpx.post(example.base_url + "/chat/completions", json={"model": "echo-1"})
    assert resp.status_code == 422
    assert resp.json()["error"] == {
        "message": "Missing required parameter: 'messages'.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "missing_required_parameter",
    }


# -- a dispatcher (`--include-url-info`), some groups only ----------------------------------------------------------


def test_serve_handler_dispatcher_with_url_info(tmp_path: Path) -> None:
    proc = ManifoldProcess(
        None,
        tmp_path,
        env=ENV,
        extra_args=(
            "--handler",
            "tests.e2e.frontend_handlers:dispatch",
            "--include-url-info",
            "--endpoints",
            "chat_completions,models",
        ),
    )
    try:
        client = sdk(proc.base_url)
        completion = client.chat.completions.create(model="m", messages=USER, store=True)
        assert completion.choices[0].message.content == "POST /v1/chat/completions"
        # NotImplemented from the dispatcher: the store answers
        assert client.chat.completions.retrieve(completion.id).id == completion.id
        with pytest.raises(openai.NotFoundError) as info:
            client.chat.completions.retrieve("missing-1")
        assert info.value.code == "not_found" and "missing-1" in info.value.message
        assert httpx.post(proc.base_url + "/embeddings", json={"model": "m", "input": "x"}).status_code == 404
        assert [m.id for m in client.models.list().data] == ["dispatch"]
    finally:
        proc.stop()


def manifold(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "manifold", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **ENV},
        cwd=cwd,
    )


def test_serve_handler_reports_a_bad_reference(tmp_path: Path) -> None:
    result = manifold("serve", "--handler", "tests.e2e.frontend_handlers:nothing_here", "--port", "1")
    assert result.returncode == 1
    assert "--handler: 'tests.e2e.frontend_handlers' has no attribute 'nothing_here'" in result.stderr
    result = manifold("serve", "--handler", "no_such_module_here:answer", "--endpoints", "chat,models")
    assert result.returncode == 1
    assert "cannot import module 'no_such_module_here'" in result.stderr
    assert "--endpoints: 'chat' is not one of" in result.stderr
    config = tmp_path / "with-models.yaml"
    config.write_text("model_list:\n  - {model_name: a, provider: openai, api_base: 'http://127.0.0.1:1/v1'}\n")
    result = manifold("serve", "--handler", "examples.echo_handler:answer", "--config", str(config))
    assert result.returncode == 1 and "model_list: must be empty with --handler" in result.stderr


def test_handler_in_the_working_directory_is_found(tmp_path: Path) -> None:
    (tmp_path / "my_model.py").write_text("def reply(messages):\n    return 'from the working directory'\n")
    proc = ManifoldProcess(None, tmp_path, extra_args=("--handler", "my_model:reply"))
    try:
        answer = sdk(proc.base_url).chat.completions.create(model="x", messages=USER)
        assert answer.choices[0].message.content == "from the working directory"
    finally:
        proc.stop()


# -- provider: python beside a remote upstream ---------------------------------------------------------------------


def mixed_config(fake: FakeUpstream) -> dict[str, Any]:
    return {
        "model_list": [
            {"model_name": "remote", "provider": "openai", "api_base": fake.base("echo"), "api_key": "sk-up"},
            {"model_name": "in-process", "provider": "python", "handler": "tests.e2e.frontend_handlers:shout"},
        ]
    }


def test_python_provider_beside_a_remote_upstream(fake: FakeUpstream, tmp_path: Path) -> None:
    proc = ManifoldProcess(mixed_config(fake), tmp_path, env=ENV)
    try:
        client = sdk(proc.base_url)
        remote = client.chat.completions.create(model="remote", messages=USER)
        assert remote.choices[0].message.content == "echo: hello there"
        raw = client.chat.completions.with_raw_response.create(model="in-process", messages=USER)
        assert_valid("CreateChatCompletionResponse", json.loads(raw.text))
        assert raw.parse().choices[0].message.content == "in-process: HELLO THERE"
        chunks = list(client.chat.completions.create(model="in-process", messages=USER, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == "in-process: HELLO THERE"
        stored = client.chat.completions.create(model="in-process", messages=USER, store=True)
        assert client.chat.completions.retrieve(stored.id).model == "in-process"
        assert {m.id for m in client.models.list().data} == {"remote", "in-process"}
        assert {m.owned_by for m in client.models.list().data} == {"openai", "python"}
    finally:
        proc.stop()


def test_check_reports_python_provider_problems(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "model_list:\n"
        "  - {model_name: a, provider: python}\n"
        "  - {model_name: b, provider: python, handler: 'not a reference'}\n"
        "  - {model_name: c, provider: python, handler: 'tests.e2e.frontend_handlers:missing'}\n"
        "  - {model_name: d, provider: python, handler: 'tests.e2e.frontend_handlers:not_a_handler'}\n"
        "  - {model_name: e, provider: openai, api_base: 'http://127.0.0.1:1/v1', handler: 'x:y'}\n"
        "  - {model_name: f, provider: python, handler: 'tests.e2e.frontend_handlers:shout'}\n"
    )
    result = manifold("check", "--config", str(path))
    assert result.returncode == 1
    err = result.stderr
    assert "model_list[0].handler: required for provider 'python'" in err
    assert "model_list[1].handler: 'not a reference' is not of the form 'package.module:function'" in err
    assert "model_list[2].handler: 'tests.e2e.frontend_handlers' has no attribute 'missing'" in err
    assert "model_list[3].handler: 'tests.e2e.frontend_handlers:not_a_handler' is neither callable" in err
    assert "model_list[4].handler: only read by provider python, not 'openai'" in err
    assert "model_list[5]" not in err


# -- observability: the handler's server has the gateway's /metrics, access log and traces ------------------------


def test_serve_handler_is_observed(tmp_path: Path) -> None:
    """`/metrics` (exact counts, by prometheus-client's parser) and the JSON access line of `serve --handler`;
    its traces are tested in test_tracing.py."""
    config = {"server": {"log_format": "json", "log_level": "info"}, "metrics": {"path": "/observed"}}
    proc = ManifoldProcess(config, tmp_path, env=ENV, extra_args=("--handler", "examples.echo_handler:answer"))
    try:
        client = sdk(proc.base_url)
        raw = client.chat.completions.with_raw_response.create(model="echo-1", messages=USER)
        assert raw.status_code == 200
        chunks = list(client.chat.completions.create(model="echo-1", messages=USER, stream=True))
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert httpx.post(proc.base_url + "/chat/completions", json={"model": "echo-1"}).status_code == 422
        assert httpx.get(proc.url + "/metrics").status_code == 404  # the path is the configured one
        page = scrape(proc.url, "/observed")
        # The handler serves every name: its wildcard group `*` is the model label (bounded by the config).
        assert page.value("manifold_requests_total", route=CHAT, status="200", model="*") == 2
        assert page.value("manifold_requests_total", route=CHAT, status="422") == 1
        assert page.value("manifold_upstream_attempts_total", outcome="ok", model="*") == 2
        assert page.value("manifold_stream_outcomes_total", outcome="completed", model="*") == 1
        assert page.value("gen_ai_server_time_to_first_token_seconds_count", gen_ai_provider_name="python") == 1
        # The 422 never reached the handler: no GenAI operation.
        assert page.value("gen_ai_server_request_duration_seconds_count", gen_ai_operation_name="chat") == 2
        line = access_line(proc, raw.headers["x-request-id"])
        assert line["route"] == CHAT and line["model"] == "echo-1" and line["status"] == 200
        assert line["stream"] is False and line["attempts"] == 1
    finally:
        proc.stop()
