"""The typed shapes of the translating backends' answers (issue 10 §4), at the translators: what passes as real
upstreams send it, and what is refused with the path named. The end-to-end view is
tests/e2e/test_wrong_native_shapes.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from manifold.api.sse_decoder import SSEEvent
from manifold.api.upstream import UpstreamShapeError
from manifold.providers.anthropic.stream import AnthropicStreamParser
from manifold.providers.anthropic.translate import from_anthropic
from manifold.providers.kserve_v2 import translate
from manifold.providers.kserve_v2.translate import OIPFormatError

START = {"type": "message_start", "message": {"id": "msg_1", "content": [], "usage": {"input_tokens": 10}}}


def feed(parser: AnthropicStreamParser, *events: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for event in events:
        out.extend(parser.feed(SSEEvent(None, json.dumps(event).encode())))
    return out


def test_anthropic_usage_is_cumulative_across_typed_events() -> None:
    parser = AnthropicStreamParser("claude", created=1)
    chunks = feed(
        parser,
        START,
        {"type": "message_delta", "delta": {"stop_reason": None}, "usage": {"output_tokens": 5}},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 7}},
        {"type": "message_stop"},
    )
    assert chunks[-1]["usage"]["prompt_tokens"] == 10
    assert chunks[-1]["usage"]["completion_tokens"] == 7
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_anthropic_thinking_is_skipped_but_checked() -> None:
    thinking = {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}
    parser = AnthropicStreamParser("claude", created=1)
    chunks = feed(
        parser,
        START,
        thinking,
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "s"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": "ok"}},
    )
    assert [c["choices"][0]["delta"] for c in chunks] == [{"role": "assistant", "content": ""}, {"content": "ok"}]
    parser = AnthropicStreamParser("claude", created=1)
    with pytest.raises(UpstreamShapeError, match=r"at 'content_block.thinking': Expected `str`, got `int`"):
        feed(parser, START, {**thinking, "content_block": {"type": "thinking", "thinking": 5}})


def test_anthropic_message_names_the_block() -> None:
    message = {"type": "message", "content": [{"type": "text", "text": "a"}, {"type": "tool_use", "id": "t"}]}
    with pytest.raises(UpstreamShapeError, match=r"at 'content\[1\]': Object missing required field `name`"):
        from_anthropic(message, "claude")
    assert from_anthropic({"type": "message", "content": []}, "claude")["choices"][0]["message"]["content"] == ""


def _reply(*outputs: dict[str, Any]) -> dict[str, Any]:
    return {"model_name": "m", "outputs": list(outputs)}


def test_nested_tensor_data_is_read_row_major() -> None:
    reply = _reply({"name": "embedding", "datatype": "FP16", "shape": [2, 2], "data": [[1, 0.5], [0.25, 2]]})
    assert [d["embedding"] for d in translate.from_infer_embeddings(reply)["data"]] == [[1.0, 0.5], [0.25, 2.0]]


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({"datatype": "INT64", "shape": [1, 2], "data": [1.5, 2]}, r"\(INT64\) does not hold integers: element \[0\]"),
        ({"datatype": "FP32", "shape": [1, 2], "data": [True, 2]}, r"\(FP32\) does not hold numbers: element \[0\]"),
        ({"datatype": "FP32", "shape": [-1, 2], "data": [1, 2]}, r"at 'outputs\[0\].shape'"),
        ({"datatype": "FP32", "shape": [1, 2], "data": [[1], [2, 3]]}, r"shape \[1, 2\] but 3 elements"),
        ({"datatype": "UINT8", "shape": [1, 2], "data": [1, 2], "parameters": []}, r"at 'outputs\[0\].parameters'"),
    ],
)
def test_wrong_tensors_name_the_output(tensor: dict[str, Any], message: str) -> None:
    with pytest.raises(OIPFormatError, match=message):
        translate.from_infer_embeddings(_reply({"name": "embedding", **tensor}))


def test_generate_outputs_may_be_one_element_lists() -> None:
    reply = {"text_output": ["hi"], "finish_reason": ["length"], "num_input_tokens": [2], "num_output_tokens": [3]}
    completion = translate.from_generate(reply)
    assert completion["choices"][0]["message"]["content"] == "hi"
    assert completion["choices"][0]["finish_reason"] == "length"
    assert completion["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    with pytest.raises(OIPFormatError, match="2 elements at 'num_output_tokens'"):
        translate.from_generate({**reply, "num_output_tokens": [3, 4]})
