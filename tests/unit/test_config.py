"""Config loading: YAML and JSON files, every problem with its location, `${ENV}` references, env overrides."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from manifold.config import Config, Deployment, UpstreamDeployment
from manifold.errors import ConfigError
from manifold.providers.registry import PROVIDERS
from manifold.validation import load_config, parse_config

VALID: dict[str, Any] = {
    "model_list": [
        {
            "model_name": "gpt-4o-mini",
            "provider": "openai",
            "api_base": "https://api.openai.com/v1",
            "api_key": "sk-test",
            "timeouts": {"connect": 2.5, "first_byte": 30, "total": 120},
            "headers": {"x-team": "a"},
        },
        {
            "model_name": "gpt-4o-mini",
            "provider": "azure",
            "api_base": "https://example.openai.azure.com",
            "api_version": "2024-10-21",
            "model": "my-deployment",
            "max_connections": 16,
        },
        {"model_name": "llama", "provider": "openai", "api_base": "http://127.0.0.1:8000/v1", "model": "meta/llama"},
        {"model_name": "tiny", "provider": "local", "context_length": 2048, "threads": 2},
    ],
    "server": {"host": "0.0.0.0", "port": 8000, "prefixes": ["/v1", "/openai/v1"], "log_level": "debug"},
}


def write(tmp_path: Path, data: Any, fmt: str = "yaml") -> Path:
    path = tmp_path / f"manifold.{fmt}"
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    elif fmt == "json":
        path.write_text(json.dumps(data), encoding="utf-8")
    else:
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def problems_of(tmp_path: Path, data: Any, fmt: str = "yaml", environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data, fmt), environ=environ or {})
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def with_deployment(**fields: Any) -> dict[str, Any]:
    dep = {"model_name": "m", "provider": "openai", "api_base": "http://127.0.0.1:8000/v1"}
    dep.update(fields)
    return {"model_list": [{k: v for k, v in dep.items() if v is not None}]}


# -- valid files ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_valid_config(tmp_path: Path, fmt: str) -> None:
    config = load_config(write(tmp_path, VALID, fmt), environ={})
    assert isinstance(config, Config)
    assert [d.model_name for d in config.model_list] == ["gpt-4o-mini", "gpt-4o-mini", "llama", "tiny"]
    first, azure, llama, tiny = config.model_list
    assert isinstance(first, Deployment)
    assert first.provider == "openai"
    assert first.api_key == "sk-test"
    assert first.headers == {"x-team": "a"}
    assert (first.timeouts.connect, first.timeouts.first_byte, first.timeouts.total) == (2.5, 30.0, 120.0)
    assert first.upstream_model == "gpt-4o-mini"
    assert azure.api_version == "2024-10-21"
    assert azure.upstream_model == "my-deployment"
    assert azure.max_connections == 16
    assert llama.upstream_model == "meta/llama"
    assert llama.timeouts.connect == 10.0  # defaults
    assert tiny.context_length == 2048
    assert config.server.host == "0.0.0.0"
    assert config.server.port == 8000
    assert config.server.prefixes == ["/v1", "/openai/v1"]
    assert config.server.log_level == "debug"


def test_handwritten_yaml(tmp_path: Path) -> None:
    text = """
# comment
model_list:
  - model_name: qwen
    provider: openai
    api_base: http://localhost:8000/v1
    timeouts:
      connect: 1
server:
  port: 9001
"""
    config = load_config(write(tmp_path, text), environ={})
    assert config.model_list[0].timeouts.connect == 1.0
    assert config.server.port == 9001
    assert config.server.prefixes == ["/v1"]


@pytest.mark.parametrize("text", ["", "   \n", "# only a comment\n", "{}", "storage: {data_dir: ./x}\n"])
def test_a_file_without_model_list_keeps_the_embedded_models(tmp_path: Path, text: str) -> None:
    config = load_config(write(tmp_path, text), environ={})
    assert [(d.model_name, d.provider) for d in config.model_list] == [
        ("smollm2", "local"),
        ("minilm", "local_embedding"),
    ]
    assert config.server.port == 8080
    assert load_config(write(tmp_path, "model_list: []\n"), environ={}).model_list == []


def test_parse_config_in_memory() -> None:
    config = parse_config(VALID, environ={})
    assert len(config.model_list) == 4
    with pytest.raises(ConfigError) as info:
        parse_config({"model_list": [{"model_name": "x", "provider": "nope"}]}, environ={})
    kinds = ", ".join(sorted(PROVIDERS))  # every registered kind, whichever branches added them
    assert info.value.problems == [f"model_list[0].provider: 'nope' is not one of: {kinds}"]


# -- one problem each -------------------------------------------------------------------------------------------

ONE_PROBLEM: list[Any] = [
    # (id, config, the location the one problem must start with, a fragment of it)
    ("unknown-top-level-key", {**VALID, "modle_list": []}, "modle_list:", "unknown key"),
    ("unknown-deployment-key", with_deployment(api_bsae="x"), "model_list[0].api_bsae:", "unknown key"),
    ("unknown-server-key", {"server": {"prot": 1}}, "server.prot:", "unknown key"),
    ("unknown-timeouts-key", with_deployment(timeouts={"read": 1}), "model_list[0].timeouts", "read"),
    ("bad-provider", with_deployment(provider="claude"), "model_list[0].provider:", "'claude'"),
    ("openai-without-api-base", with_deployment(api_base=None), "model_list[0].api_base:", "required"),
    ("api-base-without-scheme", with_deployment(api_base="localhost:8000"), "model_list[0].api_base:", "http"),
    (
        "azure-without-api-version",
        with_deployment(provider="azure", model="dep"),
        "model_list[0].api_version:",
        "required for azure",
    ),
    (
        "azure-without-model",
        with_deployment(provider="azure", api_version="2024-10-21"),
        "model_list[0].model:",
        "required for azure",
    ),
    ("prefix-without-slash", {"server": {"prefixes": ["v1"]}}, "server.prefixes[0]:", "must start with '/'"),
    ("prefix-trailing-slash", {"server": {"prefixes": ["/v1", "/x/"]}}, "server.prefixes[1]:", "must not end"),
    ("no-prefixes", {"server": {"prefixes": []}}, "server.prefixes:", "at least one"),
    ("duplicate-prefixes", {"server": {"prefixes": ["/v1", "/v1"]}}, "server.prefixes:", "duplicate"),
    ("bad-log-level", {"server": {"log_level": "loud"}}, "server.log_level:", "'loud'"),
    ("negative-timeout", with_deployment(timeouts={"connect": -1}), "model_list[0].timeouts.connect:", "> 0"),
    ("zero-total-timeout", with_deployment(timeouts={"total": 0}), "model_list[0].timeouts.total:", "> 0"),
    ("port-out-of-range", {"server": {"port": 70000}}, "server.port:", "65535"),
    ("port-wrong-type", {"server": {"port": "eighty"}}, "server.port:", "int"),
    ("prefixes-wrong-type", {"server": {"prefixes": "/v1"}}, "server.prefixes:", "array"),
    ("model-name-wrong-type", with_deployment(model_name=["a"]), "model_list[0].model_name:", "str"),
    ("model-name-empty", with_deployment(model_name=""), "model_list[0].model_name:", "length"),
    ("missing-model-name", {"model_list": [{"provider": "local"}]}, "model_list[0].model_name:", "required"),
    ("missing-provider", {"model_list": [{"model_name": "x"}]}, "model_list[0].provider:", "required"),
    ("headers-wrong-type", with_deployment(headers=["x"]), "model_list[0].headers:", "object"),
    ("max-connections-zero", with_deployment(max_connections=0), "model_list[0].max_connections:", ">= 1"),
    (
        "context-length-small",
        with_deployment(provider="local", api_base=None, context_length=64),
        "model_list[0].context_length:",
        ">= 128",
    ),
    ("model-list-not-list", {"model_list": {"model_name": "x"}}, "model_list:", "list"),
    ("deployment-not-mapping", {"model_list": ["gpt-4o"]}, "model_list[0]:", "object"),
    ("server-not-mapping", {"server": 8080}, "server:", "object"),
]


@pytest.mark.parametrize("fmt", ["yaml", "json"])
@pytest.mark.parametrize(("data", "where", "fragment"), [pytest.param(*c[1:], id=c[0]) for c in ONE_PROBLEM])
def test_one_problem(tmp_path: Path, data: Any, where: str, fragment: str, fmt: str) -> None:
    problems = problems_of(tmp_path, data, fmt)
    assert len(problems) == 1, problems
    assert problems[0].startswith(where), problems
    assert fragment in problems[0]


def test_local_model_path_must_exist(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path, {"model_list": [{"model_name": "x", "provider": "local", "model_path": str(tmp_path / "no.gguf")}]}
    )
    assert len(problems) == 1
    assert problems[0].startswith("model_list[0].model_path:")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    config = load_config(
        write(tmp_path, {"model_list": [{"model_name": "x", "provider": "local", "model_path": str(gguf)}]}), environ={}
    )
    assert config.model_list[0].model_path == str(gguf)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("model_list: [\n", "not valid YAML/JSON (line"),
        ('{"model_list": [}', "not valid YAML/JSON"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("just a string\n", "top level must be a mapping"),
    ],
)
def test_unparseable_file(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(str(path))
    assert fragment in info.value.problems[0]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.yaml", environ={})
    assert "cannot read" in info.value.problems[0]
    assert "absent.yaml" in info.value.problems[0]


# -- several problems: all of them, each with its location ------------------------------------------------------


def test_several_structural_problems_all_reported(tmp_path: Path) -> None:
    data = {
        "model_list": [
            {"model_name": "a", "provider": "openai", "api_base": "http://x/v1", "bogus": 1},
            {"model_name": "b", "provider": "openai", "api_base": "http://x/v1", "timeouts": {"connect": -1}},
            {"model_name": "c", "provider": "openai", "api_base": "http://x/v1", "max_connections": "many"},
        ],
        "server": {"port": "abc", "colour": "blue"},
        "extra": True,
    }
    problems = problems_of(tmp_path, data)
    locations = sorted(p.split(":", 1)[0] for p in problems)
    assert locations == sorted(
        [
            "extra",
            "model_list[0].bogus",
            "model_list[1].timeouts.connect",
            "model_list[2].max_connections",
            "server.colour",
            "server.port",
        ]
    )


def test_several_semantic_problems_all_reported(tmp_path: Path) -> None:
    data = {
        "model_list": [
            {"model_name": "ok", "provider": "openai", "api_base": "http://x/v1"},
            {"model_name": "b", "provider": "nope"},
            {"model_name": "c", "provider": "azure", "api_base": "https://x"},
            {"model_name": "d", "provider": "openai"},
        ],
        "server": {"prefixes": ["v1", "/v2/"], "log_level": "chatty"},
    }
    problems = problems_of(tmp_path, data)
    locations = sorted(p.split(":", 1)[0] for p in problems)
    assert locations == sorted(
        [
            "model_list[1].provider",
            "model_list[2].api_version",
            "model_list[2].model",
            "model_list[3].api_base",
            "server.prefixes[0]",
            "server.prefixes[1]",
            "server.log_level",
        ]
    )


def test_structural_and_semantic_problems_all_reported(tmp_path: Path) -> None:
    # One pass must report everything: a user fixing the type error should not discover the bad provider next.
    data = {
        "model_list": [
            {"model_name": "a", "provider": "openai", "api_base": "http://x/v1", "bogus": 1},
            {"model_name": "b", "provider": "nope"},
            {"model_name": "c", "provider": "azure", "api_base": "https://x", "api_version": "2024-10-21"},
        ],
        "server": {"port": "abc"},
    }
    problems = problems_of(tmp_path, data)
    locations = {p.split(":", 1)[0] for p in problems}
    assert "model_list[0].bogus" in locations
    assert "server.port" in locations
    assert "model_list[1].provider" in locations, problems
    assert "model_list[2].model" in locations, problems


# -- ${VAR} references ------------------------------------------------------------------------------------------


def test_env_references_expanded(tmp_path: Path) -> None:
    text = """
model_list:
  - model_name: ${NAME}
    provider: openai
    api_base: http://${HOST}:${UPSTREAM_PORT}/v1
    api_key: ${API_KEY:-sk-default}
    model: ${EMPTY:-}
    headers:
      x-org: ${ORG:-acme}
server:
  port: ${PORT:-8123}
  host: ${BIND}
"""
    env = {"NAME": "gpt", "HOST": "10.0.0.5", "UPSTREAM_PORT": "8000", "ORG": "globex", "BIND": "::"}
    config = load_config(write(tmp_path, text), environ=env)
    dep = config.model_list[0]
    assert dep.model_name == "gpt"
    assert dep.api_base == "http://10.0.0.5:8000/v1"
    assert dep.api_key == "sk-default"
    assert dep.model == ""
    assert dep.headers == {"x-org": "globex"}
    assert config.server.port == 8123
    assert isinstance(config.server.port, int)
    assert config.server.host == "::"


def test_env_value_wins_over_default(tmp_path: Path) -> None:
    text = "model_list:\n  - {model_name: m, provider: openai, api_base: 'http://h/v1', api_key: '${KEY:-fallback}'}\n"
    assert load_config(write(tmp_path, text), environ={"KEY": "sk-real"}).model_list[0].api_key == "sk-real"
    assert load_config(write(tmp_path, text), environ={"KEY": ""}).model_list[0].api_key == ""


def test_env_reference_in_json(tmp_path: Path) -> None:
    data = with_deployment(api_key="${OPENAI_API_KEY}")
    config = load_config(write(tmp_path, data, "json"), environ={"OPENAI_API_KEY": "sk-json"})
    assert config.model_list[0].api_key == "sk-json"


def test_env_values_are_not_expanded_again(tmp_path: Path) -> None:
    data = with_deployment(api_key="${A}")
    config = load_config(write(tmp_path, data), environ={"A": "${B}", "B": "nope"})
    assert config.model_list[0].api_key == "${B}"


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (with_deployment(api_key="${OPENAI_API_KEY}"), "model_list[0].api_key"),
        (with_deployment(headers={"x-key": "Bearer ${TOKEN}"}), "model_list[0].headers.x-key"),
        ({"server": {"prefixes": ["/v1", "${PREFIX}"]}}, "server.prefixes[1]"),
    ],
)
def test_missing_env_var_is_an_error_naming_its_location(tmp_path: Path, data: Any, where: str) -> None:
    problems = problems_of(tmp_path, data)
    assert problems[0].startswith(where + ":"), problems
    assert "is not set" in problems[0]
    assert all(p.startswith(where + ":") for p in problems), problems


def test_several_missing_env_vars_all_reported(tmp_path: Path) -> None:
    data = {
        "model_list": [
            {"model_name": "a", "provider": "openai", "api_base": "${BASE_A}"},
            {"model_name": "b", "provider": "openai", "api_base": "http://h/v1", "api_key": "${KEY_B}"},
        ]
    }
    problems = problems_of(tmp_path, data)
    joined = "\n".join(problems)
    assert "model_list[0].api_base" in joined and "BASE_A" in joined
    assert "model_list[1].api_key" in joined and "KEY_B" in joined


# -- MANIFOLD_* overrides ---------------------------------------------------------------------------------------


def test_env_override_sets_int(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, VALID), environ={"MANIFOLD_SERVER__PORT": "9000"})
    assert config.server.port == 9000
    assert isinstance(config.server.port, int)
    assert config.server.host == "0.0.0.0"  # the rest of the file stays


@pytest.mark.parametrize(
    ("name", "value", "attr", "expected"),
    [
        ("MANIFOLD_SERVER__HOST", "0.0.0.0", "host", "0.0.0.0"),
        ("MANIFOLD_SERVER__PREFIXES", '["/v1", "/openai"]', "prefixes", ["/v1", "/openai"]),
        ("MANIFOLD_SERVER__KEEPALIVE_INTERVAL", "2.5", "keepalive_interval", 2.5),
        ("MANIFOLD_SERVER__LOG_LEVEL", "warning", "log_level", "warning"),
        ("MANIFOLD_SERVER__WORKERS", "4", "workers", 4),
    ],
)
def test_env_override_values(name: str, value: str, attr: str, expected: Any) -> None:
    config = load_config(None, environ={name: value})
    assert getattr(config.server, attr) == expected


def test_env_override_without_file_keeps_default_model() -> None:
    config = load_config(None, environ={"MANIFOLD_SERVER__PORT": "9000", "HOME": "/root", "MANIFOLD_CONFIG": "x"})
    assert config.server.port == 9000
    assert [d.model_name for d in config.model_list] == ["smollm2", "minilm"]


@pytest.mark.parametrize(
    "name", ["MANIFOLD_SERVR__PORT", "MANIFOLD_MODEL_LIST__X", "MANIFOLD_SERVER__", "MANIFOLD___PORT"]
)
def test_unknown_env_override_is_an_error(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, VALID), environ={name: "9000"})
    assert any(p.startswith(name + ":") and "not a known setting" in p for p in info.value.problems), (
        info.value.problems
    )


def test_env_override_to_unknown_server_key_is_an_error(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, VALID, environ={"MANIFOLD_SERVER__PROT": "9000"})
    assert problems == ["server.prot: unknown key"]


def test_env_override_with_bad_value_is_an_error(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, VALID, environ={"MANIFOLD_SERVER__PORT": "99999"})
    assert len(problems) == 1
    assert problems[0].startswith("server.port:")


# -- no file: the embedded default ------------------------------------------------------------------------------


def test_default_config_without_path() -> None:
    config = load_config(None, environ={})
    assert [(d.model_name, d.provider) for d in config.model_list] == [
        ("smollm2", "local"),
        ("minilm", "local_embedding"),
    ]
    assert not any(isinstance(d, UpstreamDeployment) for d in config.model_list)  # no HTTP keys at all
    assert config.server.port == 8080
    assert config.server.prefixes == ["/v1"]


def test_kind_specific_keys_on_another_kind_are_errors() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "model_list": [
                    {"model_name": "a", "provider": "openai", "api_base": "http://127.0.0.1:1/v1", "mode": "tensors"},
                    {"model_name": "b", "provider": "local", "supports_completions": False},
                    {"model_name": "c", "provider": "azure", "api_base": "https://x", "api_version": "v", "model": "d"},
                ]
            },
            environ={},
        )
    assert info.value.problems == [
        "model_list[0].mode: only read by provider kserve_v2, not 'openai'",
        "model_list[1].supports_completions: only read by provider azure / openai, not 'local'",
    ]
