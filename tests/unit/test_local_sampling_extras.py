"""The llama.cpp sampling extras every local engine reads (top_k, min_p, typical_p, repeat_penalty, mirostat_*):
any JSON value is either accepted (a number of the right kind in range) or a 400 naming the option, never another
exception (a string once reached `float()` and became a 500)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from manifold.errors import InvalidRequestError
from manifold.providers.local.generation import _EXTRAS, check_sampling_extras

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


@given(st.sampled_from(sorted(_EXTRAS)), JSON)
def test_any_value_is_accepted_or_a_400_naming_the_option(key: str, value: Any) -> None:
    integer, low, high = _EXTRAS[key]
    valid = value is None or (
        (type(value) is int or (type(value) is float and not integer and math.isfinite(value))) and low <= value <= high
    )
    if valid:
        check_sampling_extras({key: value})
        return
    with pytest.raises(InvalidRequestError) as err:
        check_sampling_extras({key: value})
    assert err.value.param == key and err.value.status_code == 400


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"top_k": "x"}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"mirostat_mode": 3}, "mirostat_mode"),
        ({"repeat_penalty": True}, "repeat_penalty"),
        ({"mirostat_tau": float("nan")}, "mirostat_tau"),
    ],
)
def test_examples(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as err:
        check_sampling_extras(body)
    assert err.value.param == param
    check_sampling_extras({"top_k": 40, "min_p": 0.05, "typical_p": 1, "repeat_penalty": 1.1, "mirostat_mode": 2})
