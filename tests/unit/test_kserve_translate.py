"""Golden tests of the KServe v2 / OIP translations, both ways (see tests/fixtures/kserve_v2/PROVENANCE.md)."""

from __future__ import annotations

import base64
import copy
import json
import struct
from pathlib import Path
from typing import Any

import pytest

from manifold.errors import InvalidRequestError, UnsupportedError
from manifold.providers.kserve_v2 import translate
from manifold.providers.kserve_v2.chat_template import ChatTemplate, template_problem

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "kserve_v2"
REQUESTS = json.loads((FIXTURES / "golden_requests.json").read_text())
RESPONSES = json.loads((FIXTURES / "golden_responses.json").read_text())


def _build(case: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    fn = getattr(translate, case["translation"])
    if case["translation"] == "to_generate":
        return fn(body, case["prompt"], stream=case["stream"], parameters_in=case["parameters_in"])  # type: ignore[no-any-return]
    return fn(body, case["request_id"])  # type: ignore[no-any-return]


@pytest.mark.parametrize("case", REQUESTS, ids=[c["name"] for c in REQUESTS])
def test_request_goldens(case: dict[str, Any]) -> None:
    body = copy.deepcopy(case["openai"])
    assert _build(case, body) == case["expected"]
    assert body == case["openai"], "the translation mutated its input"


@pytest.mark.parametrize("case", RESPONSES, ids=[c["name"] for c in RESPONSES])
def test_response_goldens(case: dict[str, Any]) -> None:
    oip = copy.deepcopy(case["oip"])
    assert getattr(translate, case["translation"])(oip, **case.get("kwargs", {})) == case["expected"]
    assert oip == case["oip"], "the translation mutated its input"


def test_every_request_sends_an_id_and_bytes_tensors_have_matching_shapes() -> None:
    for case in REQUESTS:
        if case["translation"] == "to_generate":
            continue
        assert case["expected"]["id"] == case["request_id"]
        for tensor in case["expected"]["inputs"]:
            assert tensor["datatype"] == "BYTES"
            assert tensor["shape"] == [len(tensor["data"])]
            assert all(isinstance(v, str) for v in tensor["data"])


def test_base64_embedding_decodes_to_the_floats() -> None:
    reply = {"outputs": [{"name": "embedding", "shape": [1, 3], "datatype": "FP32", "data": [0.5, -1.0, 0.25]}]}
    encoded = translate.from_infer_embeddings(reply, "base64")["data"][0]["embedding"]
    assert list(struct.unpack("<3f", base64.b64decode(encoded))) == [0.5, -1.0, 0.25]


# -- recorded MLServer traffic -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlserver_infer_local", "mlserver_infer_tools", "mlserver_infer_embeddings"])
def test_recorded_mlserver_replies(name: str) -> None:
    recorded = json.loads((FIXTURES / f"{name}.json").read_text())
    assert recorded["request"]["id"] == recorded["response"]["id"]  # MLServer echoes the id it was given
    if name == "mlserver_infer_embeddings":
        out = translate.from_infer_embeddings(recorded["response"])
        assert [len(d["embedding"]) for d in out["data"]] == [8, 8]
        assert [d["index"] for d in out["data"]] == [0, 1]
        return
    completion = translate.from_infer_chat(recorded["response"])
    choice = completion["choices"][0]
    if name == "mlserver_infer_local":
        assert choice["message"] == {"role": "assistant", "content": "echo: hello"}
        assert choice["finish_reason"] == "stop"
    else:
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


# -- malformed replies -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ([], "not a JSON object"),
        ({"model_name": "m"}, "missing required field `outputs`"),
        ({"outputs": [{"name": "role", "datatype": "BYTES", "shape": [1], "data": ["assistant"]}]}, "neither"),
        ({"outputs": [{"name": "output_all", "datatype": "BYTES", "shape": [1], "data": ["{not json"]}]}, "JSON"),
        ({"outputs": [{"name": "output_all", "datatype": "BYTES", "shape": [1], "data": ["[1]"]}]}, "object"),
        ({"outputs": [{"name": "content", "datatype": "FP32", "shape": [1], "data": [1.5]}]}, "strings"),
    ],
)
def test_malformed_chat_replies_are_named(reply: Any, message: str) -> None:
    with pytest.raises(translate.OIPFormatError, match=message):
        translate.from_infer_chat(reply)


@pytest.mark.parametrize(
    "tensor",
    [
        {"name": "embedding", "shape": [4], "datatype": "FP32", "data": [1, 2, 3, 4]},
        {"name": "embedding", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]},
        {"name": "embedding", "shape": [1, 2], "datatype": "BYTES", "data": ["a", "b"]},
    ],
)
def test_malformed_embeddings_are_named(tensor: dict[str, Any]) -> None:
    with pytest.raises(translate.OIPFormatError, match="embedding"):
        translate.from_infer_embeddings({"outputs": [tensor]})


def test_images_need_output_all() -> None:
    with pytest.raises(translate.OIPFormatError, match="output_all"):
        translate.from_infer_images({"outputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["x"]}]})


def test_generate_reply_without_text_output() -> None:
    with pytest.raises(translate.OIPFormatError, match="text_output"):
        translate.from_generate({"model_name": "m", "outputs": []})


# -- requests a backend cannot take ------------------------------------------------------------------------------


def test_token_array_embeddings_are_a_clear_400() -> None:
    with pytest.raises(UnsupportedError) as err:
        translate.to_infer_embeddings({"model": "e", "input": [[1, 2, 3]]}, "r")
    assert err.value.param == "input" and err.value.status_code == 400


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
    ],
)
def test_generate_refuses_what_it_cannot_do(extra: dict[str, Any], param: str) -> None:
    body = {"model": "g", "messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(UnsupportedError) as err:
        translate.check_generate_request(body, "g")
    assert err.value.param == param


def test_generate_refuses_image_parts_naming_the_part() -> None:
    body = {
        "model": "g",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {}}]}
        ],
    }
    with pytest.raises(UnsupportedError) as err:
        translate.prompt_messages(body)
    assert err.value.param == "messages[0].content[1]"


def test_without_a_template_only_one_user_message_goes_through() -> None:
    one = translate.prompt_messages({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]})
    assert translate.bare_prompt(one, "g") == "hi"
    two = translate.prompt_messages(
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]}
    )
    with pytest.raises(UnsupportedError, match="chat_template") as err:
        translate.bare_prompt(two, "g")
    assert err.value.param == "messages"


# -- chat templates ----------------------------------------------------------------------------------------------


def test_chatml_template() -> None:
    messages = translate.prompt_messages(
        {"messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}
    )
    assert ChatTemplate("chatml").render(messages, "g") == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_jinja_template_with_tokens_and_raise_exception() -> None:
    source = (
        "{{ bos_token }}{% for m in messages %}"
        "{% if m['role'] == 'system' %}{{ raise_exception('no system messages') }}{% endif %}"
        "[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    template = ChatTemplate(source, bos_token="<s>")
    assert template.render([{"role": "user", "content": "Hi"}], "g") == "<s>[user] Hi\n[assistant] "
    with pytest.raises(InvalidRequestError, match="rejected the conversation: no system messages") as err:
        template.render([{"role": "system", "content": "x"}], "g")
    assert err.value.param == "messages" and err.value.status_code == 400


def test_template_sandbox_blocks_attribute_escapes() -> None:
    template = ChatTemplate("{{ messages.__class__.__mro__ }}")
    with pytest.raises(InvalidRequestError, match="failed on this conversation"):
        template.render([], "g")


def test_template_problems_for_config() -> None:
    assert template_problem("chatml") is None
    assert template_problem("{% for m in messages %}{{ m.content }}{% endfor %}") is None
    assert "not a built-in template" in (template_problem("llama3") or "")
    assert "not a valid Jinja template" in (template_problem("{% for m in messages %}") or "")


# -- error bodies ------------------------------------------------------------------------------------------------


def test_error_texts_of_real_servers() -> None:
    unprocessable = json.loads((FIXTURES / "mlserver_error_422.json").read_text())
    assert unprocessable["status"] == 422
    text = translate.error_body_text(unprocessable["body"].encode())
    assert text.startswith("body.inputs.0.datatype: Input should be 'BOOL'")
    missing = json.loads((FIXTURES / "mlserver_error_404.json").read_text())
    assert translate.error_body_text(missing["body"].encode()) == "Model nope not found"
    assert translate.error_body_text(b"Internal Server Error") == "Internal Server Error"
    assert translate.error_body_text(b'{"error": {"message": "m", "type": "t"}}') == "m"
    assert translate.error_body_text(b"") == ""
