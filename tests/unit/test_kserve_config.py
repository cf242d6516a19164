"""kserve_v2 deployment settings: every problem reported with its location; the mode picks the provider class
and its declared capabilities."""

from __future__ import annotations

from typing import Any

import pytest

from manifold.config import KServeV2Deployment
from manifold.errors import ConfigError
from manifold.providers.base import Capability
from manifold.providers.kserve_v2.provider import GenerateProvider, KServeV2Provider, TensorsProvider
from manifold.providers.registry import create_provider
from manifold.validation import parse_config


def problems(**deployment: Any) -> list[str]:
    try:
        parse_config({"model_list": [{"model_name": "m", "provider": "kserve_v2", **deployment}]}, environ={})
    except ConfigError as exc:
        return exc.problems
    return []


def test_a_minimal_deployment_is_valid() -> None:
    assert problems(api_base="http://127.0.0.1:8080") == []
    assert problems(api_base="http://h:1", mode="generate", chat_template="chatml", generate_parameters_in="body") == []


@pytest.mark.parametrize(
    ("deployment", "expected"),
    [
        ({}, "model_list[0].api_base: required for kserve_v2"),
        ({"api_base": "127.0.0.1:8080"}, "model_list[0].api_base: '127.0.0.1:8080' must start with http://"),
        ({"api_base": "http://h", "mode": "grpc"}, "model_list[0].mode: 'grpc' is not one of: tensors, generate"),
        ({"api_base": "http://h", "chat_template": "chatml"}, "model_list[0].chat_template: only used with mode"),
        (
            {"api_base": "http://h", "mode": "generate", "chat_template": "llama9"},
            "model_list[0].chat_template: 'llama9' is not a built-in template",
        ),
        (
            {"api_base": "http://h", "mode": "generate", "chat_template": "{% if %}"},
            "model_list[0].chat_template: not a valid Jinja template (line 1)",
        ),
        (
            {"api_base": "http://h", "mode": "generate", "generate_parameters_in": "query"},
            "model_list[0].generate_parameters_in: 'query' is not one of: parameters, body",
        ),
        ({"api_base": "http://h", "model_version": "1/2"}, "model_list[0].model_version: '1/2' must be"),
        ({"api_base": "http://h", "modes": "tensors"}, "model_list[0].modes: unknown key"),
    ],
)
def test_problems_name_their_location(deployment: dict[str, Any], expected: str) -> None:
    found = problems(**deployment)
    assert any(p.startswith(expected) for p in found), found


def test_server_kserve_urls_setting() -> None:
    assert parse_config({}, environ={}).server.kserve_urls is True
    assert parse_config({"server": {"kserve_urls": False}}, environ={}).server.kserve_urls is False
    with pytest.raises(ConfigError, match=r"server\.kserve_urls"):
        parse_config({"server": {"kserve_urls": "sometimes"}}, environ={})


def test_mode_picks_the_class_and_its_capabilities() -> None:
    tensors = create_provider(KServeV2Deployment(model_name="m", api_base="http://h:1/"))
    generate = create_provider(KServeV2Deployment(model_name="m", api_base="http://h:1", mode="generate"))
    assert type(tensors) is TensorsProvider and isinstance(tensors, KServeV2Provider)
    assert type(generate) is GenerateProvider
    assert {Capability.CHAT, Capability.STREAM, Capability.TOOLS, Capability.VISION} <= tensors.capabilities
    assert {Capability.EMBEDDINGS, Capability.IMAGES} <= tensors.capabilities
    assert generate.capabilities == frozenset({Capability.CHAT, Capability.STREAM})


def test_urls() -> None:
    plain = KServeV2Provider(KServeV2Deployment(model_name="m", api_base="http://h:1/v2/", model="a b"))
    assert plain.model_url == "http://h:1/v2/models/a%20b"
    assert plain.server_url == "http://h:1/v2"
    versioned = KServeV2Provider(KServeV2Deployment(model_name="m", api_base="http://h:1", model_version="3"))
    assert versioned.model_url == "http://h:1/v2/models/m/versions/3"
