"""The pure parts of access control: secrets and their display, request bodies, money, budget resets, model
access as the router resolves names, the header a key comes in, and redaction of virtual keys."""

from __future__ import annotations

import datetime as dt

import pytest

from manifold.access import keys
from manifold.access.auth import is_loopback, secret_of
from manifold.access.model_access import allowed, model_allowed
from manifold.access.principal import Principal
from manifold.errors import InvalidRequestError
from manifold.observability.redaction import Redactor


def test_secrets_are_random_prefixed_and_shown_only_by_their_end() -> None:
    a, b = keys.new_secret(), keys.new_secret()
    assert a != b and a.startswith("sk-mf-") and len(a) == 6 + 43
    assert keys.display_of(a) == "sk-mf-..." + a[-4:]
    assert keys.display_of("short-key") == "***"
    assert keys.hash_secret(a) == keys.hash_secret(a) != keys.hash_secret(b)
    assert len(keys.hash_secret(a)) == 64 and a not in keys.hash_secret(a)


def test_bodies_name_the_field_at_fault() -> None:
    for body, param in ((b'{"rpm": -1}', "rpm"), (b'{"colour": 1}', "colour"), (b'{"models": "x"}', "models")):
        with pytest.raises(InvalidRequestError) as err:
            keys.parse_body(body, keys.KeyCreate)
        assert err.value.param == param
    with pytest.raises(InvalidRequestError):
        keys.parse_body(b"{", keys.KeyCreate)
    assert keys.row_values(keys.parse_body(b"", keys.KeyUpdate)) == {}


def test_money_is_exact_micro_dollars() -> None:
    values = keys.row_values(keys.parse_body(b'{"max_budget": 0.1, "user": "u", "admin": true}', keys.KeyCreate))
    assert values == {"max_budget_micros": 100_000, "user_id": "u", "admin": 1}
    values = keys.row_values(keys.parse_body(b'{"max_budget": 12.345678}', keys.TeamCreate))
    assert values["max_budget_micros"] == 12_345_678


def test_budgets_reset_on_utc_calendar_boundaries() -> None:
    wednesday = int(dt.datetime(2026, 12, 2, 17, 5, tzinfo=dt.UTC).timestamp())
    assert keys.next_reset("daily", wednesday) == int(dt.datetime(2026, 12, 3, tzinfo=dt.UTC).timestamp())
    assert keys.next_reset("weekly", wednesday) == int(dt.datetime(2026, 12, 7, tzinfo=dt.UTC).timestamp())
    assert keys.next_reset("monthly", wednesday) == int(dt.datetime(2027, 1, 1, tzinfo=dt.UTC).timestamp())
    assert keys.next_reset(None, wednesday) is None


def test_model_access_follows_names_aliases_and_wildcards() -> None:
    exact = {"gpt-4o": "gpt-4o", "fast": "gpt-4o", "mini": "gpt-4o-mini"}.get
    assert model_allowed(["fast"], "gpt-4o", "gpt-4o", exact)  # an alias allows its group
    assert model_allowed(["gpt-4o"], "fast", "gpt-4o", exact)  # and the group its aliases
    assert not model_allowed(["fast"], "mini", "gpt-4o-mini", exact)
    assert model_allowed(["openai/*"], "openai/o3", "openai/*", exact)
    assert model_allowed(["openai/gpt-*"], "openai/gpt-5", "openai/*", exact)
    assert not model_allowed(["openai/gpt-*"], "openai/o3", "openai/*", exact)
    # A name a wildcard group serves allows that name only, not the whole group.
    assert not model_allowed(["openai/gpt-5"], "openai/o3", "openai/*", lambda name: None)
    both = Principal(key_id="k", models=("gpt-4o", "mini"), team_models=("mini",))
    assert allowed(both, "mini", "gpt-4o-mini", exact) and not allowed(both, "gpt-4o", "gpt-4o", exact)
    assert allowed(Principal(key_id="k"), "anything", "anything", exact)


def test_the_key_comes_from_the_headers_the_sdks_use() -> None:
    assert secret_of([(b"authorization", b"Bearer sk-1 ")]) == "sk-1"
    assert secret_of([(b"authorization", b"bearer sk-1")]) == "sk-1"
    assert secret_of([(b"api-key", b"sk-2")]) == "sk-2"
    assert secret_of([(b"x-api-key", b"sk-3")]) == "sk-3"
    assert secret_of([(b"authorization", b"Basic abc")]) == ""
    assert secret_of([(b"host", b"x")]) is None
    # Authorization first, then api-key, then x-api-key, whatever the headers' order; a repeated header: the last.
    assert secret_of([(b"x-api-key", b"sk-3"), (b"api-key", b"sk-2"), (b"authorization", b"Bearer sk-1")]) == "sk-1"
    assert secret_of([(b"x-api-key", b"sk-3"), (b"api-key", b"sk-2")]) == "sk-2"
    assert secret_of([(b"api-key", b"sk-a"), (b"api-key", b"sk-b")]) == "sk-b"


def test_loopback_hosts() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "example.com"))


def test_virtual_keys_are_redacted_wherever_they_appear() -> None:
    secret = keys.new_secret()
    line = f"request failed for key={secret} display={keys.display_of(secret)}"
    redacted = Redactor()(line)
    assert secret not in redacted and keys.display_of(secret) in redacted
