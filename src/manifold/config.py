"""Configuration: the file's types, loading (YAML or JSON), `${ENV}` references and env overrides.

Every problem is reported with its location (`model_list[1].timeouts.connect`); unknown keys are errors, never
silently ignored. Config keys equal constructor parameters.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import yaml

from manifold.errors import ConfigError
from manifold.observability.redaction import Redactor

_T = TypeVar("_T")
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]


class Timeouts(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Upstream timeouts in seconds. `first_byte` bounds the wait for the response headers (and, when
    streaming, for the first event); `total` bounds the whole exchange (None: no bound)."""

    connect: PositiveFloat = 10.0
    first_byte: PositiveFloat = 600.0
    total: PositiveFloat | None = None
    # Between two reads of a stream once its body started (None: `first_byte` bounds those gaps too).
    stream_idle: PositiveFloat | None = None


class Deployment(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One backend serving a public model name. Several deployments may share a `model_name`."""

    model_name: Annotated[str, msgspec.Meta(min_length=1)]
    provider: str
    model: str | None = None
    api_base: str | None = None
    api_key: str | None = None
    api_version: str | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    timeouts: Timeouts = msgspec.field(default_factory=Timeouts)
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 256
    owned_by: str | None = None
    # local provider
    model_path: str | None = None
    context_length: Annotated[int, msgspec.Meta(ge=128)] = 4096
    threads: Annotated[int, msgspec.Meta(ge=1)] | None = None
    # kserve_v2 provider (docs/backends-kserve.md)
    mode: str | None = None
    model_version: str | None = None
    chat_template: str | None = None
    generate_parameters_in: str | None = None
    # anthropic provider: `max_tokens` sent when the client sets neither max_tokens nor max_completion_tokens
    # (the Messages API requires it); None means the provider's own default
    default_max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    # legacy completions: False answers POST /completions through chat (a chat-only upstream); None: native
    supports_completions: bool | None = None
    # Responses API (docs/responses.md): "translate" serves POST /responses through chat completions (the
    # default); "native" forwards it to the upstream's own /responses (OpenAI-compatible upstreams only)
    responses: str | None = None
    # routing (docs/routing.md)
    id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._:/@#+-]{1,128}$")] | None = None
    weight: PositiveFloat = 1.0
    max_concurrency: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_queue: Annotated[int, msgspec.Meta(ge=0)] = 64
    queue_timeout: PositiveFloat = 30.0
    # python provider: the handler, `package.module:function` (docs/frontend.md)
    handler: str | None = None

    @property
    def upstream_model(self) -> str:
        return self.model if self.model is not None else self.model_name


class ServerSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    prefixes: list[str] = msgspec.field(default_factory=lambda: ["/v1"])
    max_body_size: Annotated[int, msgspec.Meta(ge=1024)] = 32 * 1024 * 1024
    keepalive_interval: PositiveFloat = 15.0
    workers: Annotated[int, msgspec.Meta(ge=1)] = 1
    log_level: str = "info"
    # KServe-style per-model URLs: /v2/models/{model}/infer/chat/completions, … (docs/backends-kserve.md)
    kserve_urls: bool = True
    # docs/observability.md: `json` writes one JSON object per log line; `access_log` one line per request.
    log_format: Literal["text", "json"] = "text"
    access_log: bool = True


class MetricsSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Prometheus metrics (docs/observability.md). `port`: serve `path` on this port instead of the main one."""

    enabled: bool = True
    path: Annotated[str, msgspec.Meta(pattern=r"^/[A-Za-z0-9._/-]*$")] = "/metrics"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] | None = None


class TracingSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """OpenTelemetry traces (the `[otel]` extra; docs/observability.md). `enabled` None: on when an OTLP
    exporter is configured by the standard `OTEL_*` variables. `capture_content`: prompts and completions on
    the GenAI spans (secrets redacted)."""

    enabled: bool | None = None
    capture_content: bool = False


class StorageSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Where stored objects (chat completions created with `store: true`, …) live.

    `url` None: SQLite in `<data_dir>/manifold.db` (relative paths are taken from the working directory).
    Otherwise a SQLAlchemy URL: `sqlite+aiosqlite:///path.db` or `postgresql+asyncpg://user:pass@host/db`
    (`sqlite:///` and `postgresql://` are accepted and get the async driver)."""

    url: str | None = None
    data_dir: str = "./data"
    pool_size: Annotated[int, msgspec.Meta(ge=1)] = 10


class ResponsesSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The Responses API engine (docs/responses.md).

    `compaction_key`: the secret that encrypts compaction items (any string; a key is derived from it). None:
    a random key per process, so compaction items do not survive a restart (nor work across workers).
    `stream_buffer_events`: events of each background response kept in memory for `GET ?stream=true`
    resumption; `stream_retention_s`: how long they are kept once the response finished.
    `background_lease_s`: a background response whose process stopped renewing it for this long (a crash, a
    restart) is marked failed."""

    compaction_key: str | None = None
    stream_buffer_events: Annotated[int, msgspec.Meta(ge=16)] = 20_000
    stream_retention_s: PositiveFloat = 600.0
    background_lease_s: Annotated[float, msgspec.Meta(ge=1)] = 15.0


NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]
Strategy = Literal["weighted", "round_robin", "least_busy", "lowest_latency"]


class RouterSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How requests are spread over a model group's deployments, retried, failed over and cooled down
    (docs/routing.md). Every key but `model_alias` and `groups` is a default that `groups.<name>` can override."""

    strategy: Strategy = "weighted"
    num_retries: Annotated[int, msgspec.Meta(ge=0)] = 2
    retry_backoff: NonNegativeFloat = 0.5
    retry_backoff_max: NonNegativeFloat = 8.0
    max_retry_after: NonNegativeFloat = 10.0
    allowed_fails: Annotated[int, msgspec.Meta(ge=1)] = 3
    fail_window: PositiveFloat = 60.0
    cooldown_time: NonNegativeFloat = 30.0
    fallbacks: list[str] = msgspec.field(default_factory=list)
    context_window_fallbacks: list[str] = msgspec.field(default_factory=list)
    allow_client_fallbacks: bool = False
    latency_alpha: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.3
    latency_buffer: NonNegativeFloat = 0.0
    model_alias: dict[str, str] = msgspec.field(default_factory=dict)
    groups: dict[str, GroupSettings] = msgspec.field(default_factory=dict)


class GroupSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """Per model group overrides of `RouterSettings` (None: the router-wide value)."""

    strategy: Strategy | None = None
    num_retries: Annotated[int, msgspec.Meta(ge=0)] | None = None
    retry_backoff: NonNegativeFloat | None = None
    retry_backoff_max: NonNegativeFloat | None = None
    max_retry_after: NonNegativeFloat | None = None
    allowed_fails: Annotated[int, msgspec.Meta(ge=1)] | None = None
    fail_window: PositiveFloat | None = None
    cooldown_time: NonNegativeFloat | None = None
    fallbacks: list[str] | None = None
    context_window_fallbacks: list[str] | None = None
    allow_client_fallbacks: bool | None = None
    latency_alpha: Annotated[float, msgspec.Meta(gt=0, le=1)] | None = None
    latency_buffer: NonNegativeFloat | None = None


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    model_list: list[Deployment] = msgspec.field(default_factory=list)
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    storage: StorageSettings = msgspec.field(default_factory=StorageSettings)
    responses: ResponsesSettings = msgspec.field(default_factory=ResponsesSettings)
    router: RouterSettings = msgspec.field(default_factory=RouterSettings)
    metrics: MetricsSettings = msgspec.field(default_factory=MetricsSettings)
    tracing: TracingSettings = msgspec.field(default_factory=TracingSettings)


def secrets_of(config: Config) -> list[str]:
    """What the logs must never show: upstream keys, deployment header values (they carry keys), the
    compaction key, the storage URL's password."""
    secrets: list[str] = []
    for dep in config.model_list:
        if dep.api_key:
            secrets.append(dep.api_key)
        secrets.extend(v for v in dep.headers.values() if v)
    if config.responses.compaction_key:
        secrets.append(config.responses.compaction_key)
    url = config.storage.url
    if url and "@" in url and ":" in url.split("@", 1)[0].split("//", 1)[-1]:
        secrets.append(url.split("@", 1)[0].split("//", 1)[-1].split(":", 1)[1])
    return secrets


ENV_PREFIX = "MANIFOLD_"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_LOG_LEVELS = {"critical", "error", "warning", "info", "debug", "trace"}


def default_config() -> Config:
    """With no config file: the embedded local models, served as `smollm2` (chat, completions) and `minilm`
    (embeddings)."""
    return Config(
        model_list=[
            Deployment(model_name="smollm2", provider="local", owned_by="manifold"),
            Deployment(model_name="minilm", provider="local_embedding", owned_by="manifold"),
        ]
    )


def load_config(path: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None) -> Config:
    """Load, expand and validate a config file (None: the embedded default plus env overrides)."""
    env = os.environ if environ is None else environ
    if path is None:
        raw: Any = msgspec.to_builtins(default_config())
    else:
        raw = _read_file(Path(path))
    problems: list[str] = []
    raw = _expand_env(raw, env, "", problems)
    _apply_env_overrides(raw, env, problems)
    return _build(raw, problems)


def parse_config(data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Config:
    """Validate an in-memory config mapping (the library entry point)."""
    env = os.environ if environ is None else environ
    problems: list[str] = []
    raw = _expand_env(dict(data), env, "", problems)
    return _build(raw, problems)


def _read_file(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:  # JSON is YAML, so one parser serves both
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError([f"{path}: not valid YAML/JSON{where}: {getattr(exc, 'problem', exc)}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping, got {type(data).__name__}"])
    return data


def _expand_env(node: Any, env: Mapping[str, str], where: str, problems: list[str]) -> Any:
    if isinstance(node, str):

        def sub(m: re.Match[str]) -> str:
            name, fallback = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if fallback is not None:
                return fallback
            problems.append(f"{where or '<root>'}: environment variable ${{{name}}} is not set")
            return ""

        return _ENV_REF.sub(sub, node)
    if isinstance(node, dict):
        return {k: _expand_env(v, env, _join(where, str(k)), problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_env(v, env, f"{where}[{i}]", problems) for i, v in enumerate(node)]
    return node


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _apply_env_overrides(raw: dict[str, Any], env: Mapping[str, str], problems: list[str]) -> None:
    """`MANIFOLD_SERVER__PORT=9000` sets `server.port`; values are parsed as YAML scalars."""
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX) :].split("__")]
        if not all(keys) or keys[0] not in Config.__struct_fields__ or keys[0] == "model_list":
            problems.append(f"{name}: not a known setting (expected e.g. MANIFOLD_SERVER__PORT)")
            continue
        try:
            value = yaml.safe_load(env[name])
        except yaml.YAMLError:
            value = env[name]
        node = raw
        for key in keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child
        node[keys[-1]] = value


def _build(raw: dict[str, Any], problems: list[str]) -> Config:
    """Convert section by section (and deployment by deployment) and check what converted, so every problem
    in the file is reported at once, not only the first."""
    unknown = sorted(set(raw) - set(Config.__struct_fields__))
    problems.extend(f"{k}: unknown key (expected one of: {', '.join(Config.__struct_fields__)})" for k in unknown)
    server = _convert_part(raw.get("server", {}), ServerSettings, "server", problems)
    if server is not None:
        problems.extend(_server_problems(server))
    model_list_raw = raw.get("model_list", [])
    deployments: list[Deployment] = []
    all_converted = isinstance(model_list_raw, list)
    if not isinstance(model_list_raw, list):
        problems.append("model_list: expected a list of deployments")
    else:
        for i, item in enumerate(model_list_raw):
            dep = _convert_part(item, Deployment, f"model_list[{i}]", problems)
            if dep is not None:
                problems.extend(_deployment_problems(dep, f"model_list[{i}]"))
                deployments.append(dep)
            else:
                all_converted = False
    storage = _convert_part(raw.get("storage", {}), StorageSettings, "storage", problems)
    if storage is not None:
        problems.extend(_storage_problems(storage))
    responses = _convert_part(raw.get("responses", {}), ResponsesSettings, "responses", problems)
    router = _convert_router(raw.get("router", {}), problems)
    metrics = _convert_part(raw.get("metrics", {}), MetricsSettings, "metrics", problems)
    tracing = _convert_part(raw.get("tracing", {}), TracingSettings, "tracing", problems)
    if router is not None and all_converted:
        # Names are checked against the deployments only when all of them could be read.
        problems.extend(_router_problems(router, deployments))
    if metrics is not None and server is not None and metrics.port is not None and metrics.port == server.port:
        problems.append(f"metrics.port: {metrics.port} is the server's own port (leave it out to serve it there)")
    if (
        problems
        or server is None
        or storage is None
        or responses is None
        or router is None
        or metrics is None
        or tracing is None
    ):
        raise ConfigError(_without_secrets(raw, problems))
    return Config(
        model_list=deployments,
        server=server,
        storage=storage,
        responses=responses,
        router=router,
        metrics=metrics,
        tracing=tracing,
    )


def _without_secrets(raw: dict[str, Any], problems: list[str]) -> list[str]:
    """Problems as printed: a key pasted into the wrong field must not be echoed (docs/observability.md)."""
    secrets: list[str] = []
    deployments = raw.get("model_list")
    for dep in deployments if isinstance(deployments, list) else []:
        if isinstance(dep, dict):
            secrets.append(str(dep.get("api_key") or ""))
            headers = dep.get("headers")
            if isinstance(headers, dict):
                secrets.extend(str(v) for v in headers.values())
    responses = raw.get("responses")
    if isinstance(responses, dict):
        secrets.append(str(responses.get("compaction_key") or ""))
    redact = Redactor(secrets)
    return [redact(p) for p in problems]


def _convert_part(data: Any, typ: type[_T], where: str, problems: list[str]) -> _T | None:
    # Report every unknown key at this level before msgspec stops at its first error.
    if isinstance(data, dict):
        fields = typ.__struct_fields__  # type: ignore[attr-defined]
        extra = [k for k in data if k not in fields]
        for k in extra:
            problems.append(f"{where}.{k}: unknown key")
        if extra:
            data = {k: v for k, v in data.items() if k in fields}
    try:
        return msgspec.convert(data, typ, strict=False)
    except msgspec.ValidationError as exc:
        problems.append(_locate(str(exc), where))
        return None


_AT = re.compile(r" - at `\$(.*)`$")


def _locate(message: str, where: str) -> str:
    m = _AT.search(message)
    path = where + (m.group(1) if m else "")
    text = message[: m.start()] if m else message
    missing = re.match(r"Object missing required field `(\w+)`", text)
    if missing:
        return f"{path}.{missing.group(1)}: required"
    unknown = re.match(r"Object contains unknown field `(\w+)`", text)
    if unknown:
        return f"{path}.{unknown.group(1)}: unknown key"
    return f"{path}: {text}"


def _server_problems(s: ServerSettings) -> list[str]:
    out: list[str] = []
    if not s.prefixes:
        out.append("server.prefixes: at least one prefix is needed (e.g. /v1)")
    for i, p in enumerate(s.prefixes):
        if not p.startswith("/"):
            out.append(f"server.prefixes[{i}]: {p!r} must start with '/' (e.g. '/v1')")
        elif p != "/" and p.endswith("/"):
            out.append(f"server.prefixes[{i}]: {p!r} must not end with '/'")
    if len(set(s.prefixes)) != len(s.prefixes):
        out.append("server.prefixes: duplicate prefixes")
    if s.log_level.lower() not in _LOG_LEVELS:
        out.append(f"server.log_level: {s.log_level!r} is not one of {sorted(_LOG_LEVELS)}")
    return out


_STORAGE_SCHEMES = ("sqlite", "sqlite+aiosqlite", "postgresql", "postgres", "postgresql+asyncpg")


def _storage_problems(s: StorageSettings) -> list[str]:
    if s.url is None:
        return [] if s.data_dir else ["storage.data_dir: must not be empty"]
    scheme, sep, rest = s.url.partition("://")
    if not sep or scheme not in _STORAGE_SCHEMES:
        shown = scheme + sep if sep else repr(s.url)
        return [
            f"storage.url: {shown} is not supported "
            "(expected sqlite+aiosqlite:///path/to/file.db or postgresql+asyncpg://user@host/db)"
        ]
    if scheme.startswith("sqlite") and rest.split("?", 1)[0] in ("", "/", "/:memory:"):
        # Each pooled connection would get its own empty database, and nothing would outlive the process.
        return ["storage.url: an in-memory SQLite database cannot hold stored objects; name a file"]
    return []


def _deployment_problems(dep: Deployment, where: str) -> list[str]:
    from manifold.providers.registry import PROVIDERS, misplaced_fields

    kind = PROVIDERS.get(dep.provider)
    if kind is None:
        return [f"{where}.provider: {dep.provider!r} is not one of: {', '.join(sorted(PROVIDERS))}"]
    problems = [f"{where}.{problem}" for problem in misplaced_fields(dep) + kind.check(dep)]
    if dep.responses is not None:
        from manifold.providers.base import Capability

        if dep.responses not in ("translate", "native"):
            problems.append(f"{where}.responses: {dep.responses!r} is not one of: native, translate")
        elif dep.responses == "native" and Capability.RESPONSES not in kind.load().capabilities:
            problems.append(
                f"{where}.responses: provider {dep.provider!r} has no native Responses API; "
                "leave it out (translated through chat completions)"
            )
    return problems


def _convert_router(data: Any, problems: list[str]) -> RouterSettings | None:
    # Each group on its own, so that problems name it (`router.groups.gpt-4o.num_retries`), not `groups[...]`.
    groups_raw = data.get("groups") if isinstance(data, dict) else None
    if not isinstance(groups_raw, dict):
        return _convert_part(data, RouterSettings, "router", problems)
    groups: dict[str, GroupSettings] = {}
    failed = False
    for name, group_raw in groups_raw.items():
        group = _convert_part(group_raw, GroupSettings, f"router.groups.{name}", problems)
        if group is None:
            failed = True
        else:
            groups[str(name)] = group
    router = _convert_part({k: v for k, v in data.items() if k != "groups"}, RouterSettings, "router", problems)
    if router is None or failed:
        return None
    router.groups = groups
    return router


def _router_problems(settings: RouterSettings, deployments: list[Deployment]) -> list[str]:
    from manifold.routing.addressing import router_problems

    return router_problems(settings, deployments)
