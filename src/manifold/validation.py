"""The one validation step after loading: what the config's types cannot say alone.

`manifold.config` decodes (every key and value's shape, with its path); this module judges what needs the
providers or the router: each kind's own rules (`Provider.check`: an `api_base` it requires, a handler that
imports, a chat template that compiles), an upstream's headers, proxy and TLS files, `responses: native` on a kind
without it, and the router section's names (aliases, groups, fallback targets) against the deployments. Each
problem is found here, once: the router does not check them again.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from manifold import config as config_module
from manifold.config import Config, Decoded, DeploymentBase, UpstreamDeployment, secrets_of
from manifold.errors import ConfigError
from manifold.observability.redaction import Redactor
from manifold.providers import proxy, transport
from manifold.providers.base import Capability
from manifold.providers.registry import provider_kind
from manifold.routing.addressing import router_problems

__all__ = ["checked", "load_config", "parse_config", "validate", "validated"]


def validate(config: Config) -> list[str]:
    """Every problem of a decoded config, each with its location, in the order of the file."""
    problems: list[str] = []
    for i, dep in enumerate(config.model_list):
        problems.extend(deployment_problems(dep, f"model_list[{i}]"))
    problems.extend(router_problems(config.router, config.model_list))
    return problems


def validated(config: Config) -> Config:
    """`config` itself when `validate` finds nothing, else a ConfigError with every problem (secrets redacted)."""
    problems = validate(config)
    if problems:
        redact = Redactor(secrets_of(config))
        raise ConfigError([redact(p) for p in problems])
    return config


def load_config(path: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None) -> Config:
    """Load a config file and validate it: a config ready to serve, or a ConfigError with every problem."""
    return checked(config_module.decode_file(path, environ))


def parse_config(data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Config:
    """Decode an in-memory config mapping and validate it (the library entry point)."""
    return checked(config_module.decode_mapping(data, environ))


def checked(decoded: Decoded) -> Config:
    """The config decoding found, validated; with decoding's problems, those of every deployment that decoded
    (and of the router section when all did), so that one run reports everything the file has wrong."""
    problems: list[str] = []
    for i, dep in decoded.deployments.items():
        problems.extend(deployment_problems(dep, f"model_list[{i}]"))
    if decoded.router is not None:
        problems.extend(router_problems(decoded.router, list(decoded.deployments.values())))
    return decoded.result(problems)


def deployment_problems(dep: DeploymentBase, where: str) -> list[str]:
    """Its kind's own rules (`Provider.check`), its upstream HTTP options, and `responses`."""
    kind = provider_kind(dep)
    problems = [f"{where}.{problem}" for problem in kind.check(dep)]
    if isinstance(dep, UpstreamDeployment):
        problems.extend(_upstream_http_problems(dep, where))
    if dep.responses is not None:
        if dep.responses not in ("translate", "native"):
            problems.append(f"{where}.responses: {dep.responses!r} is not one of: native, translate")
        elif dep.responses == "native" and Capability.RESPONSES not in kind.load().capabilities:
            problems.append(
                f"{where}.responses: provider {dep.provider!r} has no native Responses API; "
                "leave it out (translated through chat completions)"
            )
    return problems


def _upstream_http_problems(dep: UpstreamDeployment, where: str) -> list[str]:
    """Headers that would break the request line (CR/LF: header injection), an unusable proxy or TLS files."""
    problems = []
    for name, value in dep.headers.items():
        why = transport.header_problem(name, value)
        if why is not None:
            problems.append(f"{where}.headers.{name}: {why}")
    if dep.api_key is not None and transport.header_problem("authorization", dep.api_key) is not None:
        # Never echo the key: say only what is wrong with it.
        problems.append(f"{where}.api_key: {transport.header_problem('authorization', dep.api_key)}")
    if dep.proxy is True:
        problems.append(f"{where}.proxy: expected a proxy URL, or false for none")
    elif isinstance(dep.proxy, str):
        try:
            proxy.Proxy.parse(dep.proxy)
        except ValueError as exc:
            problems.append(f"{where}.proxy: {exc}")
    tls = dep.tls
    if tls.key_file and not tls.cert_file:
        problems.append(f"{where}.tls.key_file: needs tls.cert_file (the client certificate it belongs to)")
    elif tls.ca_file or tls.cert_file:
        try:
            transport.tls_context(ca_file=tls.ca_file, cert_file=tls.cert_file, key_file=tls.key_file)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            problems.append(f"{where}.tls: cannot load the CA or client certificate: {exc}")
    if dep.transport == "httpx":
        try:
            import h2  # noqa: F401
            import httpx  # noqa: F401
        except ImportError:
            problems.append(f"{where}.transport: httpx needs the extra: pip install 'manifold[httpx]'")
    return problems
