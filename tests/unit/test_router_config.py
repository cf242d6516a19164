"""The `router` section and the routing keys of deployments: defaults, per-group overrides, and every problem with
its location."""

from __future__ import annotations

from typing import Any

import pytest

from manifold.config import RouterSettings
from manifold.errors import ConfigError
from manifold.routing.group import Policy
from manifold.validation import load_config, parse_config

BASE = "http://127.0.0.1:8000/v1"


def dep(name: str, **extra: Any) -> dict[str, Any]:
    return {"model_name": name, "provider": "openai", "api_base": BASE, **extra}


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, environ={})
    return info.value.problems


def test_defaults() -> None:
    config = parse_config({"model_list": [dep("m")]}, environ={})
    r = config.router
    assert (r.strategy, r.num_retries, r.retry_backoff, r.retry_backoff_max, r.max_retry_after) == (
        "weighted",
        2,
        0.5,
        8.0,
        10.0,
    )
    assert (r.allowed_fails, r.fail_window, r.cooldown_time) == (3, 60.0, 30.0)
    assert (r.fallbacks, r.context_window_fallbacks, r.allow_client_fallbacks) == ([], [], False)
    assert (r.model_alias, r.groups) == ({}, {})
    d = config.model_list[0]
    assert (d.id, d.weight, d.max_concurrency, d.max_queue, d.queue_timeout) == (None, 1.0, None, 64, 30.0)
    assert d.timeouts.stream_idle is None


def test_a_full_router_section() -> None:
    config = parse_config(
        {
            "model_list": [
                dep("gpt-4o", id="k1", weight=2, max_concurrency=8, max_queue=0, queue_timeout=1.5),
                dep("gpt-4o", id="k2", timeouts={"stream_idle": 20}),
                dep("mini"),
                dep("openai/*"),
                dep("fw/*", model="accounts/fw/models/*"),
            ],
            "router": {
                "strategy": "least_busy",
                "num_retries": 4,
                "model_alias": {"gpt-4": "gpt-4o", "fast": "openai/gpt-4o-mini"},
                "fallbacks": ["mini"],
                "groups": {
                    "gpt-4o": {
                        "strategy": "lowest_latency",
                        "fallbacks": ["mini", "openai/gpt-4.1"],
                        "context_window_fallbacks": ["fw/long"],
                        "allow_client_fallbacks": True,
                        "cooldown_time": 0,
                    }
                },
            },
        },
        environ={},
    )
    r = config.router
    group = Policy(r, r.groups["gpt-4o"])
    assert (group.strategy, group.num_retries, group.cooldown_time, group.allow_client_fallbacks) == (
        "lowest_latency",
        4,
        0.0,
        True,
    )
    assert group.fallbacks == ["mini", "openai/gpt-4.1"] and group.context_window_fallbacks == ["fw/long"]
    other = Policy(r, r.groups.get("mini"))
    assert (other.strategy, other.fallbacks, other.cooldown_time) == ("least_busy", ["mini"], 30.0)
    k1, k2 = config.model_list[:2]
    assert (k1.id, k1.weight, k1.max_concurrency, k1.max_queue, k1.queue_timeout) == ("k1", 2.0, 8, 0, 1.5)
    assert k2.timeouts.stream_idle == 20.0


def test_group_settings_mirror_router_settings() -> None:
    from manifold.config import GroupSettings

    assert set(GroupSettings.__struct_fields__) == set(RouterSettings.__struct_fields__) - {"model_alias", "groups"}


def test_env_overrides_reach_the_router(tmp_path: Any) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(f"model_list: [{{model_name: m, provider: openai, api_base: '{BASE}'}}]\n")
    config = load_config(
        path, environ={"MANIFOLD_ROUTER__NUM_RETRIES": "0", "MANIFOLD_ROUTER__STRATEGY": "round_robin"}
    )
    assert (config.router.num_retries, config.router.strategy) == (0, "round_robin")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"router": {"stratgy": "x"}}, "router.stratgy: unknown key"),
        ({"router": {"strategy": "fastest"}}, "router.strategy: Invalid enum value 'fastest'"),
        ({"router": {"num_retries": -1}}, "router.num_retries: Expected `int` >= 0"),
        ({"router": {"allowed_fails": 0}}, "router.allowed_fails: Expected `int` >= 1"),
        ({"router": {"latency_alpha": 2}}, "router.latency_alpha: Expected `float` <= 1"),
        ({"router": {"groups": {"m": {"colour": 1}}}}, "router.groups.m.colour: unknown key"),
        (
            {"router": {"groups": {"m": {"num_retries": "x"}}}},
            "router.groups.m.num_retries: Expected `int | null`, got `str`",
        ),
        ({"router": {"groups": {"nope": {}}}}, "router.groups.nope: no deployment has this model_name"),
        ({"router": {"model_alias": {"m": "m"}}}, "router.model_alias.m: a deployment already has the model_name"),
        ({"router": {"model_alias": {"x": "nope"}}}, "router.model_alias.x: 'nope' is not the model_name"),
        ({"router": {"fallbacks": ["m", "nope"]}}, "router.fallbacks[1]: 'nope' is not a model name"),
        (
            {"router": {"groups": {"m": {"context_window_fallbacks": ["nope"]}}}},
            "router.groups.m.context_window_fallbacks[0]: 'nope'",
        ),
        ({"model_list": [dep("m", weight=0)]}, "model_list[0].weight: Expected `float` > 0.0"),
        ({"model_list": [dep("m", id="has space")]}, "model_list[0].id: Expected `str` matching regex"),
        ({"model_list": [dep("m", max_concurrency=0)]}, "model_list[0].max_concurrency: Expected `int` >= 1"),
        ({"model_list": [dep("m", timeouts={"stream_idle": 0})]}, "model_list[0].timeouts.stream_idle: Expected"),
        ({"model_list": [dep("m", id="a"), dep("n", id="a")]}, "model_list[1].id: 'a' is already the id of"),
        ({"model_list": [dep("a*b")]}, "model_list[0].model_name: 'a*b': '*' may only end a name"),
        ({"model_list": [dep("openai/*", model="gpt-4o")]}, "model_list[0].model: a wildcard group forwards"),
    ],
)
def test_one_problem(data: dict[str, Any], expected: str) -> None:
    data = {"model_list": [dep("m")], **data}
    found = problems(data)
    assert len(found) == 1 and found[0].startswith(expected), found


def test_names_resolve_through_aliases_and_wildcards() -> None:
    parse_config(
        {
            "model_list": [dep("m"), dep("openai/*")],
            "router": {"model_alias": {"a": "openai/x"}, "fallbacks": ["a", "openai/y"]},
        },
        environ={},
    )


def test_router_and_deployment_problems_together() -> None:
    found = problems(
        {
            "model_list": [dep("m", weight=-1), dep("n")],
            "router": {"num_retries": "many", "groups": {"nope": {}}},
        }
    )
    assert sorted(p.split(":")[0] for p in found) == ["model_list[0].weight", "router.num_retries"]
