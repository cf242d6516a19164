"""The local model's own token loop (providers/local/generation.py), fed token bytes split at hostile points:
a character split across tokens waits for its last byte, bytes that can never form one become U+FFFD at once
(llama-cpp-python's stream held them back forever and ran to the end of the context: issue 17)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from manifold.providers.local.generation import Generation, Plan, StopText, Utf8Text

STAR = "🌟".encode()  # F0 9F 8C 9F
END = 0


class TokenBytes:
    """Stands in for llama.cpp's model where only its tokens matter: `generate` replays `tokens` (then the end
    token), `detokenize` gives each token's bytes."""

    def __init__(self, pieces: Sequence[bytes], then_end: bool = True) -> None:
        self.pieces = {i + 1: p for i, p in enumerate(pieces)}
        self.then_end = then_end
        self._seed = 0

    def set_seed(self, seed: int) -> None:
        self._seed = seed

    def generate(self, prompt: list[int], **kwargs: Any) -> Iterator[int]:
        yield from self.pieces
        while True:
            if self.then_end:
                yield END
            else:
                yield len(self.pieces)  # the last piece, forever: only max_tokens stops it

    def detokenize(self, tokens: list[int]) -> bytes:
        return b"".join(self.pieces[t] for t in tokens)


def run(pieces: Sequence[bytes], max_tokens: int = 100, stop: Sequence[str] = (), then_end: bool = True) -> Any:
    llama = TokenBytes(pieces, then_end)
    g = Generation(llama, Plan([1, 2], {}, list(stop), max_tokens, None, 7), None, is_end=lambda t: t == END)
    out = list(g)
    return "".join(t for t, _ in out), out[-1][1], g.generated, [t for t, _ in out if t]


@pytest.mark.parametrize("split", [1, 2, 3])
def test_a_character_split_across_tokens_waits_for_its_last_byte(split: int) -> None:
    text, finish, generated, pieces = run([b"Hi ", STAR[:split], STAR[split:], b"!"])
    assert text == "Hi 🌟!"
    assert finish == "stop" and generated == 4
    assert pieces == ["Hi ", "🌟", "!"]


def test_bytes_that_never_form_a_character_become_a_replacement_at_once() -> None:
    # The first two bytes of an emoji, then plain text: no later token can complete them.
    text, finish, _, pieces = run([STAR[:2], b"Hello", b" there"])
    assert text == "\ufffdHello there"
    assert pieces[0] == "\ufffdHello"
    assert finish == "stop"


def test_a_lead_byte_forever_is_still_bounded_by_max_tokens() -> None:
    # llama-cpp-python skipped its max_tokens test while the text ended in an incomplete character.
    text, finish, generated, _ = run([b"\xf0"], max_tokens=8, then_end=False)
    assert finish == "length" and generated == 8
    assert text == "\ufffd" * 8


def test_a_truncated_character_at_the_end_is_not_lost() -> None:
    text, finish, _, _ = run([b"ok ", STAR[:3]], max_tokens=2, then_end=False)
    assert (text, finish) == ("ok \ufffd", "length")


def test_stop_sequences_across_tokens_and_inside_characters() -> None:
    text, finish, generated, pieces = run([b"one, t", b"wo, th", b"ree"], stop=["two"])
    assert (text, finish, generated) == ("one, ", "stop", 2)
    assert "".join(pieces) == "one, "
    text, finish, _, _ = run([b"a ", STAR[:2], STAR[2:], b" b"], stop=["🌟"])
    assert (text, finish) == ("a ", "stop")


def test_utf8_text_feeds_byte_by_byte() -> None:
    decoder = Utf8Text()
    data = "añ€🌟".encode()
    assert "".join(decoder.feed(data[i : i + 1]) for i in range(len(data))) + decoder.flush() == "añ€🌟"
    decoder = Utf8Text()
    assert decoder.feed(b"\xe2\x82") == ""
    assert decoder.flush() == "\ufffd"


def test_stop_text_holds_only_what_could_begin_a_stop() -> None:
    stops = StopText(["<|im_end|>", "END"])
    assert stops.feed("hello <|im") == ("hello ", False)
    assert stops.feed("_e") == ("", False)
    assert stops.feed("x") == ("<|im_ex", False)
    assert stops.feed("E") == ("", False)
    assert stops.feed("N") == ("", False)
    assert stops.feed("D and more") == ("", True)
    assert StopText([]).feed("E") == ("E", False)
