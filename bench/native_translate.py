"""CPU per translated answer for the two translating backends (Anthropic Messages, KServe v2), in process.

Times the pure translators on typical answers: an Anthropic message (two text blocks and a tool call) and a
streamed one (message_start, 40 text deltas, message_delta, message_stop); a KServe tensor-convention reply, an
`/infer_stream` stream of 40 events, a 16x384 embedding tensor, and a `generate_stream` of 40 events. Prints
microseconds per answer (the best of `--repeat` runs of `--number` calls each). Asserts nothing.

    PYTHONPATH=src .venv/bin/python bench/native_translate.py
    PYTHONPATH=/path/to/other/checkout/src .venv/bin/python bench/native_translate.py   # compare two versions
"""

from __future__ import annotations

import argparse
import json
import sys
import timeit
from collections.abc import Callable
from typing import Any

from manifold.api.sse_decoder import SSEEvent
from manifold.providers.anthropic.stream import AnthropicStreamParser
from manifold.providers.anthropic.translate import from_anthropic
from manifold.providers.kserve_v2.stream import GenerateStreamParser, InferStreamParser
from manifold.providers.kserve_v2.translate import from_generate, from_infer_chat, from_infer_embeddings

DELTAS = 40

MESSAGE = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5",
    "content": [
        {"type": "text", "text": "Let me check the weather for you. " * 4},
        {"type": "text", "text": "One moment."},
        {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris", "unit": "c"}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {"input_tokens": 120, "output_tokens": 48, "cache_read_input_tokens": 0},
}


def _event(data: dict[str, Any]) -> SSEEvent:
    return SSEEvent(str(data["type"]), json.dumps(data, separators=(",", ":")).encode())


ANTHROPIC_EVENTS = [
    _event({"type": "message_start", "message": {**MESSAGE, "content": [], "stop_reason": None}}),
    _event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    *[
        _event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": f"word{i} "}})
        for i in range(DELTAS)
    ],
    _event({"type": "content_block_stop", "index": 0}),
    _event({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 48}}),
    _event({"type": "message_stop"}),
]


def _tensor(name: str, data: list[Any], shape: list[int] | None = None, datatype: str = "BYTES") -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape or [len(data)], "data": data}


INFER = {
    "model_name": "chat_llm",
    "id": "r1",
    "parameters": {"content_type": "str"},
    "outputs": [_tensor("role", ["assistant"]), _tensor("content", ["The weather in Paris is sunny. " * 4])],
}
EMBEDDING = {
    "model_name": "embed",
    "outputs": [_tensor("embedding", [i / 7 for i in range(16 * 384)], [16, 384], "FP32")],
}
INFER_STREAM = b"".join(
    b"data: " + json.dumps({"model_name": "m", "outputs": [_tensor("content", [f"word{i} "])]}).encode() + b"\n\n"
    for i in range(DELTAS)
)
GENERATE = {"model_name": "g", "text_output": "The weather in Paris is sunny.", "finish_reason": "stop"}
GENERATE_STREAM = (
    b"".join(
        b"data: " + json.dumps({"model_name": "g", "text_output": f"word{i} ", "done": False}).encode() + b"\n\n"
        for i in range(DELTAS)
    )
    + b'data: {"model_name": "g", "text_output": "", "done": true}\n\n'
)


def anthropic_stream() -> None:
    parser = AnthropicStreamParser("claude", created=1)
    for event in ANTHROPIC_EVENTS:
        parser.feed(event)
    parser.check_complete()


def infer_stream() -> None:
    parser = InferStreamParser()
    parser.feed(INFER_STREAM)
    parser.close()


def generate_stream() -> None:
    parser = GenerateStreamParser()
    parser.feed(GENERATE_STREAM)
    parser.close()


CASES: list[tuple[str, Callable[[], Any]]] = [
    ("anthropic message", lambda: from_anthropic(MESSAGE, "claude", created=1)),
    (f"anthropic stream ({len(ANTHROPIC_EVENTS)} events)", anthropic_stream),
    ("kserve infer reply (chat)", lambda: from_infer_chat(INFER)),
    (f"kserve infer_stream ({DELTAS} events)", infer_stream),
    ("kserve embeddings (16x384)", lambda: from_infer_embeddings(EMBEDDING)),
    ("kserve generate reply", lambda: from_generate(GENERATE)),
    (f"kserve generate_stream ({DELTAS + 1} events)", generate_stream),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=2000, help="calls per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the best is reported")
    args = parser.parse_args()
    print("| translation | µs per answer |")
    print("|---|---:|")
    for name, fn in CASES:
        number = max(1, args.number // 20) if "embeddings" in name else args.number
        best = min(timeit.repeat(fn, number=number, repeat=args.repeat)) / number
        print(f"| {name} | {best * 1e6:.1f} |")
    print(f"\n`{' '.join(sys.argv)}`, Python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
