"""uvicorn's check of response header names, remembered by name (server/protocol.py `_CheckedNames`): the same
verdicts as uvicorn's own expression, for any name, and bounded."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from uvicorn.protocols.http import httptools_impl

from manifold.config import ServerSettings
from manifold.server import protocol


@pytest.fixture
def checked() -> protocol._CheckedNames:
    protocol.configure(ServerSettings())  # what every `manifold serve` worker does
    check = httptools_impl.HEADER_RE
    assert isinstance(check, protocol._CheckedNames)
    return check


def test_configure_installs_it_once(checked: protocol._CheckedNames) -> None:
    protocol.configure(ServerSettings())
    assert httptools_impl.HEADER_RE is checked
    assert not isinstance(checked.pattern, protocol._CheckedNames)


@settings(max_examples=300, deadline=None)
@given(name=st.binary(max_size=40) | st.sampled_from([b"x-ratelimit-limit-requests", b"bad name", b"a(b)", b"x\x00"]))
def test_every_name_gets_uvicorns_verdict_the_first_time_and_after(name: bytes) -> None:
    protocol.configure(ServerSettings())
    check = httptools_impl.HEADER_RE
    expected = check.pattern.search(name) is not None  # type: ignore[attr-defined]
    assert (check.search(name) is not None) == expected
    assert (check.search(name) is not None) == expected  # remembered
    assert name in check  # type: ignore[operator]


def test_invalid_names_are_still_refused(checked: protocol._CheckedNames) -> None:
    for bad in (b"bad name", b"x-a:b", b"x\r\ny", b'q"'):
        assert checked.search(bad) is not None
        assert checked.search(bad) is not None
    for good in (b"content-type", b"x-ratelimit-remaining-tokens", b"x-manifold-cost"):
        assert checked.search(good) is None


def test_the_memory_is_bounded(checked: protocol._CheckedNames, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol._CheckedNames, "KEPT", 8)
    for i in range(100):
        assert checked.search(b"x-name-%d" % i) is None
        assert len(checked) <= 8
