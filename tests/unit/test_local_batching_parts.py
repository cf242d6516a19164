"""The batching engine's per-sequence text handling (providers/local/batching.py), fed token by token at hostile
points: characters split across tokens, stop sequences spanning tokens, and the limits that end a sequence."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from manifold.config import LocalDeployment
from manifold.providers.local.batching import BatchSequence, Detokenizer, Event, Outbox
from manifold.providers.registry import create_provider
from manifold.validation import deployment_problems

# Token id → bytes: a character split across tokens (é = c3 a9, 😀 = f0 9f 98 80), and plain words.
VOCAB = {1: b"H", 2: b"\xc3", 3: b"\xa9llo", 4: b" \xf0\x9f", 5: b"\x98", 6: b"\x80", 7: b" wor", 8: b"ld", 9: b"!"}
END = 0


def decode(ids: list[int]) -> str:
    """As OpenVINO's tokenizer decodes: bytes that do not (yet) form a character are left out."""
    return b"".join(VOCAB[i] for i in ids).decode("utf-8", "ignore")


def test_detokenizer_waits_for_a_characters_last_byte() -> None:
    detok = Detokenizer(decode)
    pieces = [detok.feed(t) for t in (1, 2, 3, 4, 5, 6, 7, 8)]
    assert pieces == ["H", "", "éllo", " ", "", "😀", " wor", "ld"]
    assert detok.flush() == ""


async def run(tokens: list[int], stop: list[str], max_tokens: int = 100, logprobs: bool = False) -> list[Event]:
    outbox = Outbox()
    seq = BatchSequence(None, None, stop, max_tokens, 3, outbox, logprobs=logprobs)
    seq.detok = Detokenizer(decode)
    for token in tokens:
        seq.take(token, -0.5, frozenset({END}))
        if seq.ended:
            break
    seq.end("length")
    await asyncio.sleep(0)  # the events cross with call_soon_threadsafe
    events = []
    while not outbox.queue.empty():
        events.append(outbox.queue.get_nowait())
    return events


def texts(events: list[Event]) -> tuple[str, Any]:
    return "".join(e[2] for e in events if e[0] == "text"), [e[2] for e in events if e[0] == "end"]


@pytest.mark.parametrize(
    ("stop", "expected"),
    [
        (["llo 😀 w"], ("Hé", [("stop", 7)])),  # spans five tokens, begins inside one
        (["ld!"], ("Héllo 😀 wor", [("stop", 9)])),
        (["\U0001f600"], ("Héllo ", [("stop", 6)])),  # a stop made of a character split across tokens
        (["nowhere"], ("Héllo 😀 world!", [("length", 9)])),
    ],
)
async def test_stop_sequences_across_tokens(stop: list[str], expected: tuple[str, Any]) -> None:
    assert texts(await run([1, 2, 3, 4, 5, 6, 7, 8, 9], stop)) == expected


async def test_end_of_sequence_and_max_tokens() -> None:
    assert texts(await run([1, 2, 3, END, 7], [])) == ("Héllo", [("stop", 3)])
    assert texts(await run([1, 2, 3, 7, 8], [], max_tokens=4)) == ("Héllo wor", [("length", 4)])
    # max_tokens reached inside a character: the incomplete bytes are dropped at the end, as the tokenizer does
    assert texts(await run([1, 2, 3, 4, 5], [], max_tokens=5)) == ("Héllo ", [("length", 5)])


async def test_logprobs_travel_with_the_text_they_produced() -> None:
    events = await run([1, 2, 3, 4, 5, 6], [], logprobs=True)
    pairs = [(e[0], e[2]) for e in events if e[0] in ("tokens", "text")]
    assert pairs == [
        ("tokens", [(1, -0.5)]),
        ("text", "H"),
        ("tokens", [(2, -0.5), (3, -0.5)]),
        ("text", "éllo"),
        ("tokens", [(4, -0.5)]),
        ("text", " "),
        ("tokens", [(5, -0.5), (6, -0.5)]),
        ("text", "😀"),
    ]


def test_the_engine_picks_the_provider_and_its_model_path_may_be_an_ir_folder(tmp_path: Path) -> None:
    ov = LocalDeployment(model_name="m", engine="openvino", model_path=str(tmp_path))
    assert type(create_provider(ov)).__name__ == "OpenVinoModelProvider"
    assert type(create_provider(LocalDeployment(model_name="m"))).__name__ == "LocalModelProvider"
    assert deployment_problems(ov, "x") == [
        f"x.model_path: {str(tmp_path)!r} is neither a GGUF file nor an OpenVINO IR folder (with openvino_model.xml)"
    ]
    (tmp_path / "openvino_model.xml").write_text("<net/>")
    assert deployment_problems(ov, "x") == []
    llama = LocalDeployment(model_name="m", model_path=str(tmp_path))
    assert deployment_problems(llama, "x") == [f"x.model_path: {str(tmp_path)!r} is not a file"]
    # The batch size is the router's concurrency limit unless max_concurrency says otherwise.
    assert create_provider(ov).concurrency_limit == 16
    assert create_provider(LocalDeployment(model_name="m", engine="openvino", max_batch=4)).concurrency_limit == 4
    limited = LocalDeployment(model_name="m", engine="openvino", max_batch=4, max_concurrency=2)
    assert create_provider(limited).concurrency_limit == 2
    assert create_provider(LocalDeployment(model_name="m")).concurrency_limit is None
