"""The Anthropic provider's declaration and configuration: capabilities, registry entry, URLs, headers, checks."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from manifold.config import Deployment
from manifold.errors import ConfigError
from manifold.providers.anthropic.provider import AnthropicProvider, endpoint
from manifold.providers.base import Capability
from manifold.providers.registry import PROVIDERS, create_provider
from manifold.validation import parse_config


def deployment(**fields: Any) -> Deployment:
    return msgspec.convert({"model_name": "claude", "provider": "anthropic", **fields}, Deployment)


def test_registered_and_declares_what_it_supports() -> None:
    assert PROVIDERS["anthropic"].load() is AnthropicProvider
    assert isinstance(create_provider(deployment()), AnthropicProvider)
    assert AnthropicProvider.capabilities == {Capability.CHAT, Capability.STREAM, Capability.TOOLS, Capability.VISION}


@pytest.mark.parametrize(
    ("api_base", "url"),
    [
        ("https://api.anthropic.com", "https://api.anthropic.com/v1/messages"),
        ("https://api.anthropic.com/", "https://api.anthropic.com/v1/messages"),
        ("http://127.0.0.1:9000/v1", "http://127.0.0.1:9000/v1/messages"),
        ("https://gateway.example.com/anthropic", "https://gateway.example.com/anthropic/v1/messages"),
    ],
)
def test_messages_url(api_base: str, url: str) -> None:
    assert endpoint(api_base, "messages") == url
    assert AnthropicProvider(deployment(api_base=api_base)).messages_url == url


def test_defaults_and_headers() -> None:
    p = AnthropicProvider(deployment(api_key="sk-ant"))
    assert p.messages_url == "https://api.anthropic.com/v1/messages"
    assert p.headers == {"content-type": "application/json", "anthropic-version": "2023-06-01", "x-api-key": "sk-ant"}
    p = AnthropicProvider(deployment(api_version="2026-10-21", headers={"anthropic-beta": "x"}))
    assert p.headers == {"content-type": "application/json", "anthropic-version": "2026-10-21", "anthropic-beta": "x"}


def test_config_problems_are_located() -> None:
    bad = {"model_name": "claude", "provider": "anthropic", "api_base": "api.anthropic.com", "default_max_tokens": 0}
    with pytest.raises(ConfigError) as info:
        parse_config({"model_list": [bad]})
    text = "\n".join(info.value.problems)
    assert "model_list[0].default_max_tokens" in text
    bad.pop("default_max_tokens")
    with pytest.raises(ConfigError) as info:
        parse_config({"model_list": [bad]})
    assert info.value.problems == ["model_list[0].api_base: 'api.anthropic.com' must start with http:// or https://"]
    assert (
        parse_config({"model_list": [{"model_name": "claude", "provider": "anthropic"}]}).model_list[0].api_base is None
    )
