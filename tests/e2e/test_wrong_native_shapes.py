"""Issue 10 §4 for the translating backends, through a real gateway: an Anthropic Messages upstream or a KServe v2
(Open Inference Protocol) upstream that answers 200 with a native answer of the wrong shape is a 502 in OpenAI's
envelope naming where (code `upstream_invalid_response`), or, once a stream has started, an error event that ends
it (no `[DONE]` after it). Never a 500, a traceback, or a 200 that invents or drops content.

The upstream is the scripted hostile fake (tests/fakes/hostile_upstream.py): it answers every POST, whatever the
path (`/v1/messages`, `/v2/models/m/infer`, `/v2/models/g/generate_stream`), with the current script."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ManifoldProcess
from tests.e2e.hostile import (
    ANTHROPIC,
    OIP,
    OIP_GENERATE,
    Answer,
    check_error_envelope,
    check_log_clean,
    check_stream_end,
    post,
    start_gateway,
)
from tests.fakes.hostile_upstream import HostileUpstream, Script

CLAUDE = ANTHROPIC
GEN = OIP_GENERATE
MESSAGES = [{"role": "user", "content": "hi"}]
SSE = "text/event-stream"


@pytest.fixture(scope="module")
def upstream() -> Iterator[HostileUpstream]:
    up = HostileUpstream().start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def gateway(upstream: HostileUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManifoldProcess]:
    proc = start_gateway(upstream, tmp_path_factory.mktemp("wrong-native-shapes"))
    yield proc
    proc.stop()
    check_log_clean(proc.log())


@pytest.fixture
def http(gateway: ManifoldProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=20) as c:
        yield c


def _routes(model: str, stream: bool) -> list[tuple[str, dict[str, Any], bool]]:
    """(path, request, is the Responses API) for every route a chat backend serves."""
    flag = {"stream": True} if stream else {}
    return [
        ("/v1/chat/completions", {"model": model, "messages": MESSAGES, **flag}, False),
        ("/v1/completions", {"model": model, "prompt": "hi", **flag}, False),
        ("/v1/responses", {"model": model, "input": "hi", **flag}, True),
    ]


def missing(field: str, at: str = "") -> str:
    """What the error says of a required field that is absent (msgspec names the object that lacks it)."""
    return (f"at '{at}': " if at else "") + f"Object missing required field `{field}`"


def _needle(where: str) -> str:
    return where if "missing required field" in where else f"'{where}'"


def _check_502(answer: Answer, where: str, context: Any) -> None:
    assert answer.status == 502, (context, answer)
    error = check_error_envelope(answer)
    assert error["type"] == "upstream_error", (context, error)
    assert error["code"] == "upstream_invalid_response", (context, error)
    assert _needle(where) in error["message"], (context, where, error)


def _check_error_event(answer: Answer, where: str, responses_api: bool, context: Any) -> None:
    assert answer.status == 200, (context, answer)
    end = check_stream_end(answer, responses_api)
    assert end in ("error", "response.failed"), (context, answer.body[-600:])
    assert b"[DONE]" not in answer.body, (context, answer.body[-600:])
    assert _needle(where).encode() in answer.body, (context, where, answer.body[-600:])


# -- Anthropic Messages ------------------------------------------------------------------------------------------


def _message(**fields: Any) -> dict[str, Any]:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [{"type": "text", "text": "ok"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 3, "output_tokens": 1},
    }
    return {**message, **fields}


WRONG_MESSAGES = {
    "content_string": (_message(content="hello"), "content"),
    "content_object": (_message(content={"type": "text", "text": "hi"}), "content"),
    "block_without_type": (_message(content=[{"text": "hi"}]), missing("type", "content[0]")),
    "block_a_string": (_message(content=["hi"]), "content[0]"),
    "text_a_number": (_message(content=[{"type": "text", "text": 5}]), "content[0].text"),
    "tool_input_a_string": (
        _message(content=[{"type": "tool_use", "id": "t1", "name": "f", "input": "x"}]),
        "content[0].input",
    ),
    "tool_without_name": (
        _message(content=[{"type": "tool_use", "id": "t1", "input": {}}]),
        missing("name", "content[0]"),
    ),
    "usage_strings": (_message(usage={"input_tokens": "3", "output_tokens": "1"}), "usage.input_tokens"),
    "stop_reason_a_number": (_message(stop_reason=7), "stop_reason"),
    "id_a_number": (_message(id=7), "id"),
    "not_a_message": (_message(type="completion"), "type"),
}


@pytest.mark.parametrize("case", WRONG_MESSAGES)
def test_wrong_anthropic_message_is_a_502(http: httpx.Client, upstream: HostileUpstream, case: str) -> None:
    body, where = WRONG_MESSAGES[case]
    upstream.script = Script(body=json.dumps(body).encode())
    for path, request, _ in _routes(CLAUDE, stream=False):
        _check_502(post(http, path, request), where, (case, path))


def _event(kind: str, **fields: Any) -> bytes:
    return json.dumps({"type": kind, **fields}).encode()


START = _event("message_start", message=_message(content=[], stop_reason=None))
TEXT_START = _event("content_block_start", index=0, content_block={"type": "text", "text": ""})
TEXT_DELTA = _event("content_block_delta", index=0, delta={"type": "text_delta", "text": "hi"})
TAIL = (
    _event("content_block_stop", index=0),
    _event("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 2}),
    _event("message_stop"),
)

WRONG_EVENTS = {
    "type_a_number": (TEXT_DELTA, b'{"type": 5, "index": 0}', "type"),
    "index_a_string": (
        TEXT_DELTA,
        _event("content_block_delta", index="0", delta={"type": "text_delta", "text": "x"}),
        "index",
    ),
    "text_a_number": (
        TEXT_DELTA,
        _event("content_block_delta", index=0, delta={"type": "text_delta", "text": 5}),
        "delta.text",
    ),
    "delta_without_type": (
        TEXT_DELTA,
        _event("content_block_delta", index=0, delta={"text": "x"}),
        missing("type", "delta"),
    ),
    "delta_a_list": (TEXT_DELTA, _event("content_block_delta", index=0, delta=["x"]), "delta"),
    "delta_for_no_block": (
        TEXT_DELTA,
        _event("content_block_delta", index=3, delta={"type": "text_delta", "text": "lost"}),
        "index",
    ),
    "json_delta_on_text": (
        TEXT_DELTA,
        _event("content_block_delta", index=0, delta={"type": "input_json_delta", "partial_json": "{}"}),
        "delta.type",
    ),
    "block_without_type": (
        TEXT_DELTA,
        _event("content_block_start", index=1, content_block={"text": "x"}),
        missing("type", "content_block"),
    ),
    "tool_input_a_list": (
        TEXT_DELTA,
        _event("content_block_start", index=1, content_block={"type": "tool_use", "id": "t", "name": "f", "input": []}),
        "content_block.input",
    ),
    "usage_a_string": (
        TEXT_DELTA,
        _event("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": "2"}),
        "usage.output_tokens",
    ),
    "stop_reason_a_list": (TEXT_DELTA, _event("message_delta", delta={"stop_reason": ["x"]}), "delta.stop_reason"),
}


@pytest.mark.parametrize("case", WRONG_EVENTS)
def test_wrong_anthropic_event_ends_the_stream_with_an_error_event(
    http: httpx.Client, upstream: HostileUpstream, case: str
) -> None:
    before, wrong, where = WRONG_EVENTS[case]
    head = (START, TEXT_START, before)
    upstream.script = Script(content_type=SSE, events=(*head, wrong, TEXT_DELTA, *TAIL), done=False)
    for path, request, responses_api in _routes(CLAUDE, stream=True):
        _check_error_event(post(http, path, request), where, responses_api, (case, path))


def test_a_wrong_first_anthropic_event_is_a_502(http: httpx.Client, upstream: HostileUpstream) -> None:
    """Nothing was sent yet: the client gets the 502 itself, not a stream."""
    wrong = b'{"type": "message_start", "message": "hi"}'
    upstream.script = Script(content_type=SSE, events=(wrong, TEXT_START, TEXT_DELTA, *TAIL), done=False)
    for path, request, _ in _routes(CLAUDE, stream=True):
        _check_502(post(http, path, request), "message", path)


def test_anthropic_unknown_blocks_and_events_are_skipped(http: httpx.Client, upstream: HostileUpstream) -> None:
    """The lenient side: types Anthropic may add are ignored, as the SDK ignores them."""
    blocks = [{"type": "future_block", "payload": 5}, {"type": "text", "text": "ok", "citations": None, "new": 1}]
    upstream.script = Script(body=json.dumps(_message(content=blocks, extra={"a": 1})).encode())
    answer = post(http, "/v1/chat/completions", {"model": CLAUDE, "messages": MESSAGES})
    assert answer.status == 200, answer
    assert answer.json()["choices"][0]["message"]["content"] == "ok"
    events = (
        START,
        _event("future_event", index="x", delta=5),
        _event("content_block_start", index=0, content_block={"type": "future_block", "x": [1]}),
        _event("content_block_delta", index=0, delta={"type": "future_delta", "y": 2}),
        _event("content_block_stop", index=0),
        _event("content_block_start", index=1, content_block={"type": "text", "text": ""}),
        _event("content_block_delta", index=1, delta={"type": "text_delta", "text": "ok"}),
        _event("content_block_stop", index=1),
        _event("ping"),
        _event("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 2}),
        _event("message_stop"),
    )
    upstream.script = Script(content_type=SSE, events=events, done=False)
    answer = post(http, "/v1/chat/completions", {"model": CLAUDE, "messages": MESSAGES, "stream": True})
    assert answer.status == 200, answer
    assert check_stream_end(answer, responses_api=False) == "done"
    assert b'"content":"ok"' in answer.body


# -- KServe v2: tensors ------------------------------------------------------------------------------------------


def _tensor(name: str, data: Any, shape: Any = None, datatype: str = "BYTES") -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": [len(data)] if shape is None else shape, "data": data}


def _infer(*outputs: dict[str, Any]) -> dict[str, Any]:
    return {"model_name": "m", "id": "r1", "outputs": list(outputs)}


ROLE = _tensor("role", ["assistant"])
WRONG_INFER = {
    "outputs_a_string": ({"model_name": "m", "outputs": "content"}, "outputs"),
    "outputs_an_object": ({"outputs": {"content": ["hi"]}}, "outputs"),
    "output_without_name": (
        _infer(ROLE, {"datatype": "BYTES", "shape": [1], "data": ["hi"]}),
        missing("name", "outputs[1]"),
    ),
    "output_a_string": (_infer(ROLE, "content"), "outputs[1]"),
    "name_a_number": (_infer(ROLE, {**_tensor("content", ["hi"]), "name": 5}), "outputs[1].name"),
    "data_not_an_array": (_infer(ROLE, {**_tensor("content", ["hi"]), "data": "hi"}), "outputs[1].data"),
    "data_numbers_as_bytes": (_infer(ROLE, _tensor("content", [1, 2])), "outputs[1].data"),
    "shape_mismatch": (_infer(ROLE, _tensor("content", ["hi"], shape=[3])), "outputs[1].shape"),
    "shape_strings": (_infer(ROLE, _tensor("content", ["hi"], shape=["1"])), "outputs[1].shape[0]"),
    "bool_data_with_strings": (_infer(ROLE, _tensor("content", ["hi"], datatype="BOOL")), "outputs[1].data"),
}


@pytest.mark.parametrize("case", WRONG_INFER)
def test_wrong_inference_response_is_a_502(http: httpx.Client, upstream: HostileUpstream, case: str) -> None:
    body, where = WRONG_INFER[case]
    upstream.script = Script(body=json.dumps(body).encode())
    for path, request, _ in _routes(OIP, stream=False):
        _check_502(post(http, path, request), where, (case, path))
    # The same JSON answering a stream request (a server that ignores the stream ask) is checked the same way.
    _check_502(post(http, "/v1/chat/completions", {"model": OIP, "messages": MESSAGES, "stream": True}), where, case)


WRONG_EMBEDDINGS = {
    "numbers_as_bytes": (_infer(_tensor("embedding", [0.5, 0.25], shape=[1, 2])), "outputs[0].data"),
    "strings_as_fp32": (_infer(_tensor("embedding", ["a", "b"], shape=[1, 2], datatype="FP32")), "outputs[0].data"),
    "shape_mismatch": (_infer(_tensor("embedding", [0.5, 0.25, 1], shape=[1, 2], datatype="FP32")), "outputs[0].shape"),
    "shape_1d": (_infer(_tensor("embedding", [0.5, 0.25], shape=[2], datatype="FP32")), "outputs[0].shape"),
    "outputs_missing": ({"model_name": "m"}, missing("outputs")),
}


@pytest.mark.parametrize("case", WRONG_EMBEDDINGS)
def test_wrong_embedding_tensor_is_a_502(http: httpx.Client, upstream: HostileUpstream, case: str) -> None:
    body, where = WRONG_EMBEDDINGS[case]
    upstream.script = Script(body=json.dumps(body).encode())
    answer = post(http, "/v1/embeddings", {"model": OIP, "input": "hi"})
    assert answer.status == 502, (case, answer)
    error = check_error_envelope(answer)
    assert error["code"] == "upstream_invalid_response", error
    assert _needle(where) in error["message"], (case, error)


@pytest.mark.parametrize("case", ["outputs_a_string", "output_without_name", "name_a_number", "output_a_string"])
def test_wrong_inference_response_for_images_is_a_502(http: httpx.Client, upstream: HostileUpstream, case: str) -> None:
    body, where = WRONG_INFER[case]
    upstream.script = Script(body=json.dumps(body).encode())
    answer = post(http, "/v1/images/generations", {"model": OIP, "prompt": "a cat"})
    _check_502(answer, where, case)


def _infer_event(*outputs: dict[str, Any]) -> bytes:
    return json.dumps(_infer(*outputs)).encode()


GOOD_INFER_EVENT = _infer_event(ROLE, _tensor("content", ["hi"]))
WRONG_INFER_EVENTS = {
    "output_all_choices_a_string": (
        _infer_event(_tensor("output_all", [json.dumps({"id": "c", "choices": "hello"})])),
        "choices",
    ),
    "output_all_choice_a_string": (
        _infer_event(_tensor("output_all", [json.dumps({"id": "c", "choices": ["x"]})])),
        "choices[0]",
    ),
    "output_all_index_a_list": (
        _infer_event(_tensor("output_all", [json.dumps({"id": "c", "choices": [{"index": [], "delta": {}}]})])),
        "choices[0].index",
    ),
    "outputs_a_string": (b'{"outputs": "hi"}', "outputs"),
    "shape_mismatch": (_infer_event(ROLE, _tensor("content", ["hi"], shape=[2])), "outputs[1].shape"),
    "data_not_an_array": (_infer_event(ROLE, {**_tensor("content", ["hi"]), "data": "hi"}), "outputs[1].data"),
}


@pytest.mark.parametrize("case", WRONG_INFER_EVENTS)
def test_wrong_infer_stream_event_ends_the_stream_with_an_error_event(
    http: httpx.Client, upstream: HostileUpstream, case: str
) -> None:
    wrong, where = WRONG_INFER_EVENTS[case]
    upstream.script = Script(content_type=SSE, events=(GOOD_INFER_EVENT, wrong, GOOD_INFER_EVENT), done=False)
    for path, request, responses_api in _routes(OIP, stream=True):
        _check_error_event(post(http, path, request), where, responses_api, (case, path))


def test_wrong_output_all_completion_for_a_stream_request_is_a_502(
    http: httpx.Client, upstream: HostileUpstream
) -> None:
    """A whole answer to a stream request is replayed as chunks: it is checked before it is replayed."""
    body = _infer(_tensor("output_all", [json.dumps({"id": "c", "choices": "hello"})]))
    upstream.script = Script(body=json.dumps(body).encode())
    answer = post(http, "/v1/chat/completions", {"model": OIP, "messages": MESSAGES, "stream": True})
    assert answer.status == 502, answer
    assert "'choices'" in check_error_envelope(answer)["message"]


def test_a_fastapi_error_body_of_another_shape_is_passed_on(http: httpx.Client, upstream: HostileUpstream) -> None:
    """MLServer and KServe answer 422 with FastAPI's `detail` list; an item of another shape is shown as JSON."""
    detail = [{"loc": 5, "msg": "bad"}, {"loc": ["body", "inputs"], "msg": "field required"}, 7]
    upstream.script = Script(status=422, reason="Unprocessable Entity", body=json.dumps({"detail": detail}).encode())
    answer = post(http, "/v1/chat/completions", {"model": OIP, "messages": MESSAGES})
    assert answer.status == 422, answer
    message = check_error_envelope(answer)["message"]
    assert "body.inputs: field required" in message and '"loc":5' in message, message


# -- KServe v2: the generate extension ---------------------------------------------------------------------------

WRONG_GENERATE = {
    "text_output_a_number": ({"model_name": "g", "text_output": 5}, "text_output"),
    "text_output_two_elements": ({"model_name": "g", "text_output": ["a", "b"]}, "text_output"),
    "finish_reason_a_number": ({"text_output": "hi", "finish_reason": 7}, "finish_reason"),
    "usage_strings": ({"text_output": "hi", "num_input_tokens": "3", "num_output_tokens": 1}, "num_input_tokens"),
    "done_a_string": ({"text_output": "hi", "done": "yes"}, "done"),
}


@pytest.mark.parametrize("case", WRONG_GENERATE)
def test_wrong_generate_response_is_a_502(http: httpx.Client, upstream: HostileUpstream, case: str) -> None:
    body, where = WRONG_GENERATE[case]
    upstream.script = Script(body=json.dumps(body).encode())
    for path, request, _ in _routes(GEN, stream=False):
        _check_502(post(http, path, request), where, (case, path))


GOOD_GENERATE_EVENT = b'{"text_output": "hi", "done": false}'
WRONG_GENERATE_EVENTS = {
    "text_output_a_number": (b'{"text_output": 5}', "text_output"),
    "text_output_missing": (b'{"model_name": "g", "done": true}', missing("text_output")),
    "done_a_string": (b'{"text_output": "a", "done": "true"}', "done"),
    "finish_reason_a_number": (b'{"text_output": "a", "finish_reason": 1}', "finish_reason"),
    "usage_a_list_of_strings": (
        b'{"text_output": "", "done": true, "num_output_tokens": ["2"]}',
        "num_output_tokens[0]",
    ),
}


@pytest.mark.parametrize("case", WRONG_GENERATE_EVENTS)
def test_wrong_generate_stream_event_ends_the_stream_with_an_error_event(
    http: httpx.Client, upstream: HostileUpstream, case: str
) -> None:
    wrong, where = WRONG_GENERATE_EVENTS[case]
    events = (GOOD_GENERATE_EVENT, wrong, b'{"text_output": "", "done": true}')
    upstream.script = Script(content_type=SSE, events=events, done=False)
    for path, request, responses_api in _routes(GEN, stream=True):
        _check_error_event(post(http, path, request), where, responses_api, (case, path))


def test_log_has_no_traceback(gateway: ManifoldProcess) -> None:
    check_log_clean(gateway.log())
