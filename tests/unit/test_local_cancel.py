"""The local provider's token counter (a llama.cpp logits processor) stops generation at the request's limit
even where llama-cpp-python's own loop would not (its streaming detokenizer skips `max_tokens` while it holds
bytes that never form a character), and at once when the client left."""

from __future__ import annotations

import math

import pytest

from manifold.providers.local.provider import _Cancel

np = pytest.importorskip("numpy")  # comes with llama-cpp-python ([local]); llama.cpp hands the scores as an array

EOS = 2


def _step(cancel: _Cancel) -> list[float]:
    return [float(v) for v in cancel(None, np.array([0.5, 0.9, 0.1, 0.3]))]


def test_tokens_up_to_the_limit_are_free_then_only_end_of_sequence_is_left() -> None:
    cancel = _Cancel(EOS)
    cancel.limit = 3
    for _ in range(3):
        assert _step(cancel) == [0.5, 0.9, 0.1, 0.3]
    forced = _step(cancel)
    assert forced[EOS] == 0.0 and all(math.isinf(v) and v < 0 for i, v in enumerate(forced) if i != EOS)


def test_a_client_that_left_stops_it_at_the_next_token() -> None:
    cancel = _Cancel(EOS)
    assert _step(cancel)[1] == 0.9
    cancel.event.set()
    assert _step(cancel)[EOS] == 0.0
