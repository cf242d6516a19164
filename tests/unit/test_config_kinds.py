"""Each provider kind is its own Struct (a tagged union on `provider`): a key of another kind is a decode error
naming its path; what needs providers or routing is judged once, by `manifold.validation`, after decoding."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import pytest

from manifold import config as config_module
from manifold.config import (
    DEPLOYMENT_KINDS,
    AzureDeployment,
    Deployment,
    DeploymentBase,
    LocalDeployment,
    OpenAIDeployment,
    PythonDeployment,
    UpstreamDeployment,
)
from manifold.errors import ConfigError
from manifold.providers.registry import PROVIDERS
from manifold.validation import parse_config, validate

HTTP_KINDS = "anthropic / azure / kserve_v2 / openai"


def decode_problems(*deployments: dict[str, Any]) -> list[str]:
    """The problems of decoding alone (`manifold.config`, no validation step)."""
    with pytest.raises(ConfigError) as info:
        config_module.parse_config({"model_list": list(deployments)}, environ={})
    return info.value.problems


def test_every_registered_kind_has_its_struct() -> None:
    assert set(DEPLOYMENT_KINDS) == set(PROVIDERS)
    for kind, cls in DEPLOYMENT_KINDS.items():
        assert issubclass(cls, DeploymentBase)
        assert cls.__struct_config__.tag == kind


def test_each_entry_decodes_as_its_kind() -> None:
    config = parse_config(
        {
            "model_list": [
                {"model_name": "a", "provider": "openai", "api_base": "http://127.0.0.1:1/v1"},
                {"model_name": "b", "provider": "azure", "api_base": "https://x", "api_version": "v", "model": "d"},
                {"model_name": "c", "provider": "local", "context_length": 2048},
            ]
        },
        environ={},
    )
    openai, azure, local = config.model_list
    assert type(openai) is OpenAIDeployment and openai.provider == "openai"
    # azure is an openai deployment with more keys: the Azure provider is an OpenAI-compatible one
    assert type(azure) is AzureDeployment and isinstance(azure, OpenAIDeployment) and azure.provider == "azure"
    assert azure.api_version == "v" and azure.supports_completions == "auto"
    assert type(local) is LocalDeployment and local.context_length == 2048
    assert not isinstance(local, UpstreamDeployment) and not hasattr(local, "api_base")
    # and back: the tag is written as `provider`
    assert msgspec.to_builtins(azure)["provider"] == "azure"
    assert msgspec.convert(msgspec.to_builtins(azure), Deployment) == azure


@pytest.mark.parametrize(
    ("deployment", "expected"),
    [
        (
            {"provider": "openai", "api_base": "http://h/v1", "model_path": "/m.gguf"},
            "model_list[0].model_path: only read by provider local / local_embedding, not 'openai'",
        ),
        (
            {"provider": "local", "api_base": "http://h/v1"},
            f"model_list[0].api_base: only read by provider {HTTP_KINDS}, not 'local'",
        ),
        (
            {"provider": "python", "handler": "m:f", "timeouts": {"connect": 1}},
            f"model_list[0].timeouts: only read by provider {HTTP_KINDS}, not 'python'",
        ),
        (
            {"provider": "local_embedding", "context_length": 512},
            "model_list[0].context_length: only read by provider local, not 'local_embedding'",
        ),
        (
            {"provider": "anthropic", "supports_completions": False},
            "model_list[0].supports_completions: only read by provider azure / openai, not 'anthropic'",
        ),
        (
            {"provider": "openai", "api_base": "http://h/v1", "api_version": "2024-10-21"},
            "model_list[0].api_version: only read by provider anthropic / azure, not 'openai'",
        ),
        (
            {"provider": "kserve_v2", "api_base": "http://h", "handler": "m:f"},
            "model_list[0].handler: only read by provider python, not 'kserve_v2'",
        ),
        ({"provider": "openai", "api_base": "http://h/v1", "colour": "blue"}, "model_list[0].colour: unknown key"),
    ],
)
def test_a_key_of_another_kind_is_a_decode_error_naming_its_path(deployment: dict[str, Any], expected: str) -> None:
    assert decode_problems({"model_name": "m", **deployment}) == [expected]


def test_every_misplaced_key_is_reported_with_the_other_problems() -> None:
    problems = decode_problems(
        {"model_name": "a", "provider": "local", "api_base": "http://h", "headers": {"x": "y"}, "threads": 0},
        {"model_name": "b", "provider": "openai", "api_base": "http://h/v1", "repeat_penalty": 1.0},
    )
    assert problems == [
        f"model_list[0].api_base: only read by provider {HTTP_KINDS}, not 'local'",
        f"model_list[0].headers: only read by provider {HTTP_KINDS}, not 'local'",
        "model_list[0].threads: Expected `int` >= 1",
        "model_list[1].repeat_penalty: only read by provider local, not 'openai'",
    ]


def test_the_union_itself_refuses_a_key_of_another_kind() -> None:
    # A library user decoding a deployment with msgspec gets the same refusal, without Manifold's wording.
    with pytest.raises(msgspec.ValidationError, match="unknown field `model_path`"):
        msgspec.convert({"model_name": "m", "provider": "openai", "model_path": "/m.gguf"}, Deployment)
    with pytest.raises(msgspec.ValidationError, match=r"Invalid value 'nope' - at `\$.provider`"):
        msgspec.convert({"model_name": "m", "provider": "nope"}, Deployment)


def test_a_wrong_kind_key_is_never_echoed_with_its_secret() -> None:
    problems = decode_problems({"model_name": "m", "provider": "local", "api_key": "sk-very-secret"})
    # (what follows `api_key:` in any message is redacted, whatever it is: here the message's first word)
    assert problems == [f"model_list[0].api_key: [REDACTED] read by provider {HTTP_KINDS}, not 'local'"]
    # a key pasted into a field of the wrong type: decoding names the field, never the value
    problems = decode_problems(
        {"model_name": "m", "provider": "openai", "api_base": "http://h/v1", "api_key": "sk-x1", "weight": "sk-x1"}
    )
    assert len(problems) == 1 and problems[0].startswith("model_list[0].weight:") and "sk-x1" not in problems[0]


def test_decoding_alone_does_not_judge_what_needs_providers_or_routing() -> None:
    data = {
        "model_list": [{"model_name": "a", "provider": "azure", "api_base": "https://x"}],
        "router": {"fallbacks": ["nope"]},
    }
    config = config_module.parse_config(data, environ={})  # no api_version, no `model`, an unknown fallback
    assert validate(config) == [
        "model_list[0].api_version: required for azure (e.g. 2024-10-21)",
        "model_list[0].model: required for azure: the Azure deployment name",
        "router.fallbacks[0]: 'nope' is not a model name, alias or wildcard match",
    ]


def test_each_problem_is_reported_once_with_decoding_and_validation_together() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "model_list": [
                    {"model_name": "a", "provider": "openai", "api_base": "ftp://h", "max_queue": -1},
                    {"model_name": "b", "provider": "azure", "api_base": "https://x", "api_version": "v"},
                    {"model_name": "c", "provider": "python", "handler": "no_such_module_here:f"},
                ],
                "router": {"fallbacks": ["nope"], "groups": {"b": {"fallbacks": ["gone"]}}},
            },
            environ={},
        )
    problems = info.value.problems
    assert [p for p, n in Counter(problems).items() if n > 1] == []
    locations = [p.split(":", 1)[0] for p in problems]
    assert locations[0] == "model_list[0].max_queue"  # decoding's problem first, then the validation step's
    assert sorted(locations[1:]) == ["model_list[1].model", "model_list[2].handler"]
    # the router's names are judged only against a model_list that decoded whole (else every name would be
    # "unknown"); fixed, they are reported, once each
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "model_list": [{"model_name": "b", "provider": "openai", "api_base": "http://h/v1"}],
                "router": {"fallbacks": ["nope"], "groups": {"b": {"fallbacks": ["gone", "gone"]}}},
            },
            environ={},
        )
    assert info.value.problems == [
        "router.fallbacks[0]: 'nope' is not a model name, alias or wildcard match",
        "router.groups.b.fallbacks[0]: 'gone' is not a model name, alias or wildcard match",
        "router.groups.b.fallbacks[1]: 'gone' is not a model name, alias or wildcard match",
    ]


def test_the_python_frontend_and_the_embedded_default_build_their_kinds() -> None:
    default = config_module.default_config()
    assert [type(d) for d in default.model_list] == [LocalDeployment, config_module.LocalEmbeddingDeployment]
    assert validate(default) == []
    handler = PythonDeployment(model_name="echo", handler="examples.echo_handler:answer")
    assert handler.provider == "python" and msgspec.to_builtins(handler)["provider"] == "python"


def test_config_may_not_import_providers_or_routing() -> None:
    # `import manifold.config` runs the package's __init__ (which imports the server), so the rule is static:
    # scripts/check_imports.py, run by scripts/check.
    path = Path(__file__).resolve().parents[2] / "scripts" / "check_imports.py"
    spec = importlib.util.spec_from_file_location("check_imports", path)
    assert spec is not None and spec.loader is not None
    rules = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rules)
    forbidden = {"api", "server", "routing", "providers", "responses", "storage", "frontend", "cli", "validation"}
    assert rules.FORBIDDEN["config"] >= forbidden
    assert rules.main() == 0
