"""Configuration: the file's types, loading (YAML or JSON), `${ENV}` references and env overrides.

Schema and loading only: every problem of a value's shape is reported with its location
(`model_list[1].timeouts.connect`); unknown keys are errors, never silently ignored. What needs the providers or
the router to judge (an upstream's headers and TLS files, a handler that imports, fallback targets, groups) is
checked after loading, once, by `manifold.validation.validate`. Config keys equal constructor parameters.
"""

from __future__ import annotations

import importlib.util
import os
import re
import typing
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, TypeAlias, TypeVar

import msgspec
import yaml

from manifold.errors import ConfigError
from manifold.observability.redaction import Redactor

_T = TypeVar("_T")
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
# A price: a number (or its text) of dollars, read exactly (as its decimal text, never a binary float sum).
DollarAmount = float | str


class Timeouts(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Upstream timeouts in seconds. `first_byte` bounds the wait for the response headers (and, when
    streaming, for the first event); `total` bounds the whole exchange (None: no bound)."""

    connect: PositiveFloat = 10.0
    first_byte: PositiveFloat = 600.0
    total: PositiveFloat | None = None
    # Between two reads of a stream once its body started (None: `first_byte` bounds those gaps too).
    stream_idle: PositiveFloat | None = None
    # The wait for a free upstream connection when all `max_connections` are busy (then 429 + Retry-After).
    pool: PositiveFloat = 30.0


class TLSOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """TLS to an https upstream: `ca_file` replaces the system's CAs, `cert_file`/`key_file` are a client
    certificate (mutual TLS), `verify: false` turns verification off (tests and private networks only)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True


class UpstreamLimits(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What an upstream may send before its answer is refused with a 502 naming the limit."""

    max_header_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 64 * 1024
    max_headers: Annotated[int, msgspec.Meta(ge=8)] = 256
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 128 * 1024 * 1024  # after gzip/deflate decoding
    max_sse_line_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 16 * 1024 * 1024


class DeploymentBase(msgspec.Struct, tag_field="provider", forbid_unknown_fields=True, kw_only=True):
    """What every deployment has: one backend serving a public model name (several may share a `model_name`).

    A deployment is of one kind, named by its `provider` key (the tag of the `Deployment` union): each kind is
    its own Struct below, so a key another kind reads is a decode error naming its path."""

    model_name: Annotated[str, msgspec.Meta(min_length=1)]
    model: str | None = None
    owned_by: str | None = None
    # Responses API (docs/responses.md): "translate" serves POST /responses through chat completions (the
    # default); "native" forwards it to the upstream's own /responses (OpenAI-compatible upstreams only)
    responses: str | None = None
    # routing (docs/routing.md)
    id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._:/@#+-]{1,128}$")] | None = None
    weight: PositiveFloat = 1.0
    max_concurrency: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_queue: Annotated[int, msgspec.Meta(ge=0)] = 64
    queue_timeout: PositiveFloat = 30.0
    # access (docs/access.md): this deployment's own quota (requests and tokens per minute: the router prefers
    # deployments with room, 429 when none has), and its prices in dollars per million tokens (None: from the
    # genai-prices dataset; local and python deployments cost 0 unless set)
    rpm: Annotated[int, msgspec.Meta(ge=1)] | None = None
    tpm: Annotated[int, msgspec.Meta(ge=1)] | None = None
    input_cost_per_million: DollarAmount | None = None
    output_cost_per_million: DollarAmount | None = None
    cached_input_cost_per_million: DollarAmount | None = None

    @property
    def provider(self) -> str:
        """The kind (`openai`, `local`, …): the `provider` key this deployment was decoded from."""
        return str(type(self).__struct_config__.tag)

    @property
    def upstream_model(self) -> str:
        return self.model if self.model is not None else self.model_name


class UpstreamDeployment(DeploymentBase):
    """The keys of the kinds that call an upstream over HTTP (openai, azure, anthropic, kserve_v2)."""

    api_base: str | None = None
    api_key: str | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    timeouts: Timeouts = msgspec.field(default_factory=Timeouts)
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 256
    # upstream HTTP (docs/configuration.md): "builtin" (HTTP/1.1, the fastest) or "httpx" (HTTP/2; the extra
    # `manifold[httpx]`); `proxy`: a URL, false for none, absent to follow HTTPS_PROXY/HTTP_PROXY/NO_PROXY
    transport: Literal["builtin", "httpx"] = "builtin"
    proxy: str | bool | None = None
    tls: TLSOptions = msgspec.field(default_factory=TLSOptions)
    limits: UpstreamLimits = msgspec.field(default_factory=UpstreamLimits)


class OpenAIDeployment(UpstreamDeployment, tag="openai"):
    """`provider: openai`: any OpenAI-compatible upstream."""

    # legacy completions: "auto" tries the upstream's /completions and, on a 404 (or OpenAI's "chat model"
    # answer), answers through chat from then on; False: always through chat; True: always native
    supports_completions: bool | Literal["auto"] = "auto"


class AzureDeployment(OpenAIDeployment, tag="azure"):
    """`provider: azure`: Azure OpenAI (`model` is the Azure deployment name)."""

    # Azure's `api-version` query value (required)
    api_version: str | None = None


class AnthropicDeployment(UpstreamDeployment, tag="anthropic"):
    """`provider: anthropic`: the Messages API."""

    # Anthropic's `anthropic-version` header (None: 2023-06-01)
    api_version: str | None = None
    # the output limit when the client sets neither max_tokens nor max_completion_tokens (the Messages API
    # requires one; None: 4096)
    default_max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None


class KServeV2Deployment(UpstreamDeployment, tag="kserve_v2"):
    """`provider: kserve_v2`: an Open Inference Protocol server (docs/backends-kserve.md)."""

    mode: str | None = None
    model_version: str | None = None
    chat_template: str | None = None
    generate_parameters_in: str | None = None


class LocalFilesDeployment(DeploymentBase):
    """The keys of the in-process kinds (local, local_embedding)."""

    model_path: str | None = None
    threads: Annotated[int, msgspec.Meta(ge=1)] | None = None


class LocalDeployment(LocalFilesDeployment, tag="local"):
    """`provider: local`: a GGUF model run by llama.cpp in the gateway's process."""

    context_length: Annotated[int, msgspec.Meta(ge=128)] = 4096
    # llama.cpp's repeat penalty when the client sends none (None: 1.1, which keeps a small model from
    # repeating one sentence until its context is full)
    repeat_penalty: Annotated[float, msgspec.Meta(ge=0)] | None = None
    # the output limit when the client sets neither max_tokens nor max_completion_tokens (a small local model
    # would otherwise run to the end of its context; None: 512)
    default_max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    # what runs the model (docs/local-models.md#engines): "llama_cpp" (llama-cpp-python, one request at a time;
    # every feature), "llama_cpp_batched" (llama.cpp decoding many requests together, prefix caching) or
    # "openvino" (OpenVINO GenAI's continuous batching: many requests at once, prefix caching; the extra
    # `manifold[openvino]`; no top_logprobs or logit_bias)
    engine: Literal["llama_cpp", "llama_cpp_batched", "openvino"] = "llama_cpp"
    # openvino, llama_cpp_batched: the most sequences generated together; also the deployment's concurrency limit
    # when max_concurrency is not set (more requests wait in its queue of max_queue places, then 429) (None: 16 on
    # openvino; 8 on llama_cpp_batched, whose KV cache is max_batch x context_length tokens, allocated at load)
    max_batch: Annotated[int, msgspec.Meta(ge=1)] | None = None
    # openvino: the KV cache's size in whole GB, shared by every sequence: the memory budget (None: 1)
    kv_cache_gb: Annotated[int, msgspec.Meta(ge=1)] | None = None
    # openvino, llama_cpp_batched: reuse the KV cache of a prompt prefix that an earlier request computed (a shared
    # system prompt, a conversation's history)
    prefix_caching: bool = True
    # openvino, llama_cpp_batched: the most tokens one step computes, the decoding sequences' next tokens and the
    # prompt chunks of those prefilling together (at least max_batch): smaller spreads a long prompt over more steps,
    # so the others' tokens come more evenly, larger prefills it in fewer (None: 256; docs/local-models.md#engines)
    prefill_chunk: Annotated[int, msgspec.Meta(ge=16)] | None = None
    # openvino, llama_cpp_batched: the KV cache's element type: "f16", or "q8_0" (8 bits a value: on
    # llama_cpp_batched about half the memory of f16, and greedy answers may differ from f16's; on openvino its CPU
    # plugin's u8, which is its default there) (None: f16 on llama_cpp_batched, the plugin's default on openvino)
    kv_cache_type: Literal["f16", "q8_0"] | None = None


class LocalEmbeddingDeployment(LocalFilesDeployment, tag="local_embedding"):
    """`provider: local_embedding`: a BERT-style ONNX embedding model run in the gateway's process."""


class PythonDeployment(DeploymentBase, tag="python"):
    """`provider: python`: a Python handler (docs/frontend.md)."""

    # the handler, `package.module:function`
    handler: str | None = None


# A deployment as the config file holds it: the kind its `provider` key names.
Deployment: TypeAlias = (
    OpenAIDeployment
    | AzureDeployment
    | AnthropicDeployment
    | KServeV2Deployment
    | LocalDeployment
    | LocalEmbeddingDeployment
    | PythonDeployment
)
DEPLOYMENT_KINDS: dict[str, type[DeploymentBase]] = {
    str(cls.__struct_config__.tag): cls for cls in typing.get_args(Deployment)
}


class ServerSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    prefixes: list[str] = msgspec.field(default_factory=lambda: ["/v1"])
    max_body_size: Annotated[int, msgspec.Meta(ge=1024)] = 32 * 1024 * 1024
    keepalive_interval: PositiveFloat = 15.0
    # Against slow or oversized requests (slowloris), where `manifold serve` runs the app (server/protocol.py):
    # seconds for a request's line and headers, seconds for its body once the headers are in, bytes of the head
    header_timeout: PositiveFloat = 10.0
    body_timeout: PositiveFloat = 60.0
    max_header_size: Annotated[int, msgspec.Meta(ge=1024)] = 64 * 1024
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
    (`sqlite:///` and `postgresql://` are accepted and get the async driver).
    `retry_interval_s`: while the database cannot be opened, the server tries again this often."""

    url: str | None = None
    data_dir: str = "./data"
    pool_size: Annotated[int, msgspec.Meta(ge=1)] = 10
    retry_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0


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


class KeyModelLimits(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    rpm: Annotated[int, msgspec.Meta(ge=1)] | None = None
    tpm: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_parallel_requests: Annotated[int, msgspec.Meta(ge=1)] | None = None


class McpChatSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The MCP servers whose tools are added to every chat request for one public model (`mcp.models.<name>`),
    named `server__tool`. `mode: return`: the model's calls go back to the client (`POST /v1/mcp/tools/call`
    runs one); `execute`: the gateway runs them and answers with the model's final message."""

    servers: Annotated[list[str], msgspec.Meta(min_length=1)]
    mode: Literal["return", "execute"] = "return"


class StaticTeam(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A team's limits and budget, shared by the static keys that name it."""

    rpm: Annotated[int, msgspec.Meta(ge=1)] | None = None
    tpm: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_parallel_requests: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_budget: DollarAmount | None = None
    budget_duration: Literal["daily", "weekly", "monthly"] | None = None
    # the `mcp_servers` its keys may use: labels, or `label__tool` for one tool (None: all; []: none)
    mcp_servers: list[str] | None = None
    # MCP servers whose tools its keys' chat requests get, for models without an `mcp.models` entry
    mcp_chat: McpChatSettings | None = None


class StaticKey(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A key declared in the config (`key` usually `${ENV}`): its limits and budget (dollars), its team."""

    key: Annotated[str, msgspec.Meta(min_length=8)]
    alias: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    user: str | None = None
    team: str | None = None
    models: list[str] | None = None
    rpm: Annotated[int, msgspec.Meta(ge=1)] | None = None
    tpm: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_parallel_requests: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_budget: DollarAmount | None = None
    budget_duration: Literal["daily", "weekly", "monthly"] | None = None
    model_limits: dict[str, KeyModelLimits] = msgspec.field(default_factory=dict)
    # the `mcp_servers` it may use: labels, or `label__tool` for one tool (None: all; []: none)
    mcp_servers: list[str] | None = None
    # MCP servers whose tools its chat requests get, for models without an `mcp.models` entry (wins over its team's)
    mcp_chat: McpChatSettings | None = None


class AuthSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Inbound authentication (docs/access.md). With a master key, or once any virtual key exists, every API
    route needs a key. `key_cache_ttl_s`: how long a replica trusts a key it looked up (a revoked key stops
    within this time without Redis; within 1 s with it). `rotation_grace_s`: how long a rotated key's old secret
    still works."""

    master_key: str | None = None
    # Keys declared in the config (docs/access.md "static keys"): hashed at load, never logged.
    keys: list[StaticKey] = msgspec.field(default_factory=list)
    teams: dict[str, StaticTeam] = msgspec.field(default_factory=dict)
    key_cache_ttl_s: Annotated[float, msgspec.Meta(gt=0, le=5)] = 5.0
    rotation_grace_s: NonNegativeFloat = 3600.0


class RedisSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Shared state across workers and replicas (docs/access.md): rate limits, budgets, in-flight counts, key
    invalidation. `url` None: in process memory. `on_redis_error`: `open` serves (logged, counted), `closed`
    answers 503."""

    url: str | None = None
    on_redis_error: Literal["open", "closed"] = "open"
    timeout_s: PositiveFloat = 0.5
    # Without `url`, several workers are a config error unless this says that limits are per process.
    limits_per_process: bool = False
    # Prefix of every key Manifold writes in Redis (several gateways, or tests, may share one Redis).
    key_prefix: Annotated[str, msgspec.Meta(max_length=64)] = "manifold:"


class LedgerSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The usage ledger (docs/access.md): one row per API request in the store's database (`storage:`).
    `enabled` None (the default): on when `auth.master_key` or `auth.keys` is set, off otherwise. Rows are
    buffered and written every `flush_interval_s` in batches of at most `max_batch` rows (one INSERT each); while
    the database is down at most `max_buffered_rows` wait in memory, and rows beyond that are dropped (counted,
    logged)."""

    enabled: bool | None = None
    flush_interval_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0
    max_batch: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 500
    max_buffered_rows: Annotated[int, msgspec.Meta(ge=1)] = 100_000


McpApproval = Literal["always", "never"]


class McpServerCommon(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What every MCP server has, whatever its transport (docs/mcp.md). `allowed_tools` None: all of its tools.
    `require_approval`: `always`, `never`, or per tool (`{tool: always|never}`, the rest `never`).
    `call_timeout_s` bounds one tool call; `max_output_bytes` truncates a longer output (with a marker);
    `connect_timeout_s` bounds connecting and listing its tools."""

    allowed_tools: list[str] | None = None
    require_approval: McpApproval | dict[str, McpApproval] = "never"
    call_timeout_s: PositiveFloat = 60.0
    connect_timeout_s: PositiveFloat = 30.0
    max_output_bytes: Annotated[int, msgspec.Meta(ge=64)] = 100_000


class McpStdioServer(McpServerCommon, tag_field="transport", tag="stdio"):
    """A server run as a child process speaking MCP on its stdin/stdout (restarted when it dies)."""

    command: str
    args: list[str] = msgspec.field(default_factory=list)
    env: dict[str, str] = msgspec.field(default_factory=dict)
    cwd: str | None = None


class McpHttpServer(McpServerCommon, tag_field="transport", tag="streamable_http"):
    """A server at a streamable HTTP URL; `headers` (with `${ENV}` secrets) go with every request."""

    url: str
    headers: dict[str, str] = msgspec.field(default_factory=dict)


class McpSseServer(McpServerCommon, tag_field="transport", tag="sse"):
    """A server speaking the legacy HTTP+SSE transport."""

    url: str
    headers: dict[str, str] = msgspec.field(default_factory=dict)


McpServerSettings = McpStdioServer | McpHttpServer | McpSseServer


class McpSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The gateway's MCP behaviour (docs/mcp.md). `allow_client_servers`: URL patterns (fnmatch, `*` any text)
    a request's `mcp` tool may name in `server_url`; empty (the default): none, only configured labels.
    `max_tool_rounds`: model turns with tool calls one response may take before it ends `incomplete`.
    `reconnect_backoff_s`/`reconnect_backoff_max_s`: the wait before reconnecting a server, doubled each try."""

    allow_client_servers: list[str] = msgspec.field(default_factory=list)
    max_tool_rounds: Annotated[int, msgspec.Meta(ge=1)] = 8
    reconnect_backoff_s: PositiveFloat = 1.0
    reconnect_backoff_max_s: PositiveFloat = 30.0
    models: dict[str, McpChatSettings] = msgspec.field(default_factory=dict)


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    model_list: list[Deployment] = msgspec.field(default_factory=list)
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    storage: StorageSettings = msgspec.field(default_factory=StorageSettings)
    responses: ResponsesSettings = msgspec.field(default_factory=ResponsesSettings)
    router: RouterSettings = msgspec.field(default_factory=RouterSettings)
    metrics: MetricsSettings = msgspec.field(default_factory=MetricsSettings)
    tracing: TracingSettings = msgspec.field(default_factory=TracingSettings)
    auth: AuthSettings = msgspec.field(default_factory=AuthSettings)
    redis: RedisSettings = msgspec.field(default_factory=RedisSettings)
    mcp_servers: dict[str, McpServerSettings] = msgspec.field(default_factory=dict)
    mcp: McpSettings = msgspec.field(default_factory=McpSettings)
    ledger: LedgerSettings = msgspec.field(default_factory=LedgerSettings)

    @property
    def ledger_on(self) -> bool:
        """Whether the usage ledger records requests (`ledger.enabled`, or by default a master key or static keys;
        virtual keys need a master key to be created)."""
        enabled = self.ledger.enabled
        if enabled is None:
            return self.auth.master_key is not None or bool(self.auth.keys)
        return enabled


def secrets_of(config: Config) -> list[str]:
    """What the logs must never show: upstream keys, deployment header values (they carry keys), the
    compaction key, the master key, the storage and Redis URLs' passwords."""
    secrets: list[str] = []
    for dep in config.model_list:
        if not isinstance(dep, UpstreamDeployment):
            continue
        if dep.api_key:
            secrets.append(dep.api_key)
        secrets.extend(v for v in dep.headers.values() if v)
    if config.responses.compaction_key:
        secrets.append(config.responses.compaction_key)
    if config.auth.master_key:
        secrets.append(config.auth.master_key)
    for server in config.mcp_servers.values():
        if isinstance(server, McpStdioServer):
            secrets.extend(v for v in server.env.values() if v)
        else:
            secrets.extend(v for v in server.headers.values() if v)
    secrets.extend(k.key for k in config.auth.keys)
    for url in (config.storage.url, config.redis.url):
        if url and "@" in url and ":" in url.split("@", 1)[0].split("//", 1)[-1]:
            secrets.append(url.split("@", 1)[0].split("//", 1)[-1].split(":", 1)[1])
    return secrets


ENV_PREFIX = "MANIFOLD_"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_LOG_LEVELS = {"critical", "error", "warning", "info", "debug", "trace"}


def default_config() -> Config:
    """With no config file, or a file without `model_list`: the embedded local models, served as `smollm2`
    (chat, completions) and `minilm` (embeddings)."""
    return Config(model_list=embedded_deployments())


def embedded_deployments() -> list[Deployment]:
    return [
        LocalDeployment(model_name="smollm2", owned_by="manifold"),
        LocalEmbeddingDeployment(model_name="minilm", owned_by="manifold"),
    ]


def serves_embedded_default(config: Config) -> bool:
    """Whether the deployments are the embedded default (no `model_list` in the file)."""
    return config.model_list == embedded_deployments()


class Decoded(NamedTuple):
    """What decoding a config found. `config`: None when anything failed. `deployments`: the `model_list` entries
    that decoded, by index, so that the validation step can judge them even when others failed (a user fixing
    one problem must not discover the next only then); `router`: the router section when it and every deployment
    decoded. `problems`: decoding's own, in the order of the file's sections; `redact` hides the file's secrets
    (a key pasted into the wrong field must not be echoed, docs/observability.md)."""

    config: Config | None
    deployments: dict[int, Deployment]
    router: RouterSettings | None
    problems: list[str]
    redact: Redactor

    def result(self, more: Iterable[str] = ()) -> Config:
        """The config, or a ConfigError with decoding's problems and `more` (the validation step's), redacted."""
        problems = [*self.problems, *more]
        if problems or self.config is None:
            raise ConfigError([self.redact(p) for p in problems])
        return self.config


def load_config(path: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None) -> Config:
    """Load, expand and decode a config file (None: the embedded default plus env overrides). What needs the
    providers or the router is not checked here: `manifold.validation.load_config` does both."""
    return decode_file(path, environ).result()


def parse_config(data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Config:
    """Decode an in-memory config mapping (`manifold.validation.parse_config` validates it too)."""
    return decode_mapping(data, environ).result()


def decode_file(path: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None) -> Decoded:
    """`load_config` without raising: every decoding problem, and what decoded."""
    env = os.environ if environ is None else environ
    if path is None:
        raw: Any = msgspec.to_builtins(default_config())
    else:
        raw = _read_file(Path(path))
        # A file that only tunes `storage:` or `responses:` keeps the embedded models; `model_list: []` serves none.
        raw.setdefault("model_list", msgspec.to_builtins(embedded_deployments()))
    problems: list[str] = []
    raw = _expand_env(raw, env, "", problems)
    _apply_env_overrides(raw, env, problems)
    return _decode(raw, problems)


def decode_mapping(data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Decoded:
    """`parse_config` without raising: every decoding problem, and what decoded."""
    env = os.environ if environ is None else environ
    problems: list[str] = []
    raw = _expand_env(dict(data), env, "", problems)
    return _decode(raw, problems)


def environment_problems(config: Config) -> list[str]:
    """What a valid file can still ask for that `serve` would fail on at start: a bind address this host cannot
    resolve or bind, a port taken by another server (or privileged), a data directory it cannot write.
    `manifold check` and `manifold serve` both run this, so they agree."""
    import socket
    import tempfile

    problems: list[str] = []
    host = config.server.host
    try:
        infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        problems.append(f"server.host: {host!r} is not an address of this host ({exc})")
    else:
        family, kind, proto, _, address = infos[0]
        port = config.server.port
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.bind(address)  # port 0: tests the address only
        except OSError as exc:
            problems.append(f"server.host: cannot bind {host!r}: {exc.strerror or exc}")
        else:
            try:
                with socket.socket(family, kind, proto) as probe:
                    # As uvicorn binds: a port in TIME_WAIT is free, one with a listener is not.
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    probe.bind((address[0], port, *address[2:]))
            except OSError as exc:
                problems.append(f"server.port: cannot listen on {host}:{port}: {exc.strerror or exc}")
    if config.storage.url is None:
        folder = Path(config.storage.data_dir).expanduser().absolute()
        missing = folder
        while not missing.parent.exists() and missing.parent != missing:
            missing = missing.parent
        try:
            if folder.exists():
                # A file created and removed at once: only writing proves the folder is writable (as root too).
                with tempfile.TemporaryFile(dir=folder):
                    pass
            else:
                missing.mkdir()
                missing.rmdir()
        except OSError as exc:
            problems.append(f"storage.data_dir: cannot write {config.storage.data_dir!r}: {exc.strerror or exc}")
    return problems


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


def _decode(raw: dict[str, Any], problems: list[str]) -> Decoded:
    """Convert section by section (and deployment by deployment) and check what converted, so every problem
    in the file is reported at once, not only the first, in the order of the file's sections."""
    found: dict[str, list[str]] = {name: [] for name in Config.__struct_fields__}
    unknown = sorted(set(raw) - set(Config.__struct_fields__))
    problems.extend(f"{k}: unknown key (expected one of: {', '.join(Config.__struct_fields__)})" for k in unknown)
    server = _convert_part(raw.get("server", {}), ServerSettings, "server", found["server"])
    if server is not None:
        found["server"].extend(_server_problems(server))
    model_list_raw = raw.get("model_list", [])
    deployments: dict[int, Deployment] = {}
    all_decoded = isinstance(model_list_raw, list)
    if not isinstance(model_list_raw, list):
        found["model_list"].append("model_list: expected a list of deployments")
    else:
        for i, item in enumerate(model_list_raw):
            dep = _convert_deployment(item, f"model_list[{i}]", found["model_list"])
            if dep is not None:
                deployments[i] = dep
                for name in ("input_cost_per_million", "output_cost_per_million", "cached_input_cost_per_million"):
                    found["model_list"].extend(_dollar_problems(getattr(dep, name), f"model_list[{i}].{name}"))
            else:
                all_decoded = False
    storage = _convert_part(raw.get("storage", {}), StorageSettings, "storage", found["storage"])
    if storage is not None:
        found["storage"].extend(_storage_problems(storage))
    responses = _convert_part(raw.get("responses", {}), ResponsesSettings, "responses", found["responses"])
    router = _convert_router(raw.get("router", {}), found["router"])
    metrics = _convert_part(raw.get("metrics", {}), MetricsSettings, "metrics", found["metrics"])
    tracing = _convert_part(raw.get("tracing", {}), TracingSettings, "tracing", found["tracing"])
    auth = _convert_part(raw.get("auth", {}), AuthSettings, "auth", found["auth"])
    if auth is not None:
        found["auth"].extend(_auth_problems(auth))
    redis = _convert_part(raw.get("redis", {}), RedisSettings, "redis", found["redis"])
    if redis is not None and server is not None:
        limited = auth is not None and (auth.master_key is not None or bool(auth.keys))
        limited = limited or any(d.rpm is not None or d.tpm is not None for d in deployments.values())
        found["redis"].extend(_redis_problems(redis, server, limited))
    mcp_servers = _convert_mcp_servers(raw.get("mcp_servers", {}), found["mcp_servers"])
    mcp = _convert_part(raw.get("mcp", {}), McpSettings, "mcp", found["mcp"])
    ledger = _convert_part(raw.get("ledger", {}), LedgerSettings, "ledger", found["ledger"])
    order = [k for k in raw if k in found] + [k for k in found if k not in raw]
    for name in order:
        problems.extend(found[name])
    if mcp is not None and mcp_servers is not None:
        problems.extend(_mcp_problems(mcp, mcp_servers))
    if auth is not None and mcp_servers is not None:
        problems.extend(_auth_mcp_problems(auth, mcp_servers))
    if metrics is not None and server is not None and metrics.port is not None and metrics.port == server.port:
        problems.append(f"metrics.port: {metrics.port} is the server's own port (leave it out to serve it there)")
    config = None
    if not (
        problems
        or server is None
        or storage is None
        or responses is None
        or router is None
        or metrics is None
        or tracing is None
        or auth is None
        or redis is None
        or mcp_servers is None
        or mcp is None
        or ledger is None
    ):
        config = Config(
            model_list=list(deployments.values()),
            server=server,
            storage=storage,
            responses=responses,
            router=router,
            metrics=metrics,
            tracing=tracing,
            auth=auth,
            redis=redis,
            mcp_servers=mcp_servers,
            mcp=mcp,
            ledger=ledger,
        )
    # Names are checked against the deployments only when all of them could be read.
    return Decoded(config, deployments, router if all_decoded else None, problems, _redactor(raw))


def _auth_problems(a: AuthSettings) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for i, key in enumerate(a.keys):
        where = f"auth.keys[{i}]"
        if key.alias in seen:
            out.append(f"{where}.alias: {key.alias!r} is used by another key")
        seen.add(key.alias)
        if key.team is not None and key.team not in a.teams:
            out.append(f"{where}.team: {key.team!r} is not in auth.teams")
        out.extend(_dollar_problems(key.max_budget, f"{where}.max_budget"))
    for name, team in a.teams.items():
        out.extend(_dollar_problems(team.max_budget, f"auth.teams.{name}.max_budget"))
    if len({k.key for k in a.keys}) != len(a.keys):
        out.append("auth.keys: two keys have the same secret")
    return out


def _auth_mcp_problems(a: AuthSettings, servers: Mapping[str, object]) -> list[str]:
    """A static key's or team's `mcp_servers` names configured servers only (`label` or `label__tool`; a typo
    would silently allow nothing)."""
    named = [(f"auth.keys[{i}].mcp_servers", k.mcp_servers) for i, k in enumerate(a.keys)]
    named += [(f"auth.teams.{n}.mcp_servers", t.mcp_servers) for n, t in a.teams.items()]
    known = ", ".join(servers) or "none"
    out = [
        f"{where}[{i}]: unknown MCP server {label!r} (configured: {known})"
        for where, labels in named
        for i, label in enumerate(labels or ())
        if label.split("__", 1)[0] not in servers
    ]
    chats = [(f"auth.keys[{i}].mcp_chat", k.mcp_chat) for i, k in enumerate(a.keys)]
    chats += [(f"auth.teams.{n}.mcp_chat", t.mcp_chat) for n, t in a.teams.items()]
    for where, chat in chats:
        if chat is not None:
            out.extend(mcp_chat_problems(chat.servers, servers, f"{where}.servers"))
    return out


def _dollar_problems(value: DollarAmount | None, where: str) -> list[str]:
    from decimal import Decimal, InvalidOperation

    if value is None:
        return []
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return [f"{where}: {value!r} is not a number of dollars"]
    if not amount.is_finite() or amount < 0:
        return [f"{where}: {value!r} must be a number of dollars, 0 or more"]
    return []


def _redis_problems(r: RedisSettings, server: ServerSettings, limited: bool) -> list[str]:
    """`limited`: keys or deployment quotas exist, whose counts several workers would have to share."""
    out: list[str] = []
    if r.url is not None:
        if not r.url.startswith(("redis://", "rediss://", "unix://")):
            out.append("redis.url: expected redis://host:port/db, rediss://… or unix://…")
        elif importlib.util.find_spec("hiredis") is None:
            out.append("redis.url: needs the hiredis parser, which is not installed: pip install 'manifold[redis]'")
    elif limited and server.workers > 1 and not r.limits_per_process:
        out.append(
            f"redis: server.workers is {server.workers} but redis.url is not set: rate limits, budgets and in-flight "
            "counts would be per worker. Set redis.url, or redis.limits_per_process: true to accept per-worker limits"
        )
    return out


def _mcp_problems(mcp: McpSettings, servers: dict[str, McpServerSettings]) -> list[str]:
    """`mcp.models.<name>.servers` name configured servers, each once (so that `server__tool` names of one
    model cannot collide: a label holds no `__`)."""
    out: list[str] = []
    if servers and importlib.util.find_spec("mcp") is None:
        out.append("mcp_servers: MCP needs the extra: pip install 'manifold[mcp]'")
    for model, chat in mcp.models.items():
        out.extend(mcp_chat_problems(chat.servers, servers, f"mcp.models.{model}.servers"))
    return out


def mcp_chat_problems(labels: list[str], servers: Collection[str], where: str) -> list[str]:
    """An `mcp_chat` (or `mcp.models.<name>`) entry's `servers` name configured servers, each once (so that
    `server__tool` names cannot collide: a label holds no `__`)."""
    out: list[str] = []
    seen: set[str] = set()
    for i, label in enumerate(labels):
        if label not in servers:
            known = ", ".join(servers) or "none"
            out.append(f"{where}[{i}]: unknown MCP server '{label}' (configured: {known})")
        elif label in seen:
            out.append(f"{where}[{i}]: '{label}' is listed twice")
        seen.add(label)
    return out


def _convert_mcp_servers(data: Any, problems: list[str]) -> dict[str, McpServerSettings] | None:
    """Each server on its own, so that problems name it (`mcp_servers.git.command: required`)."""
    if not isinstance(data, dict):
        problems.append("mcp_servers: expected a mapping of server labels to servers")
        return None
    out: dict[str, McpServerSettings] = {}
    failed = False
    kinds: dict[str, type[McpServerSettings]] = {
        "stdio": McpStdioServer,
        "streamable_http": McpHttpServer,
        "sse": McpSseServer,
    }
    for label, item in data.items():
        where = f"mcp_servers.{label}"
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", str(label)) or "__" in str(label):
            problems.append(f"{where}: a label is 1-40 letters, digits, '_' or '-' (no '__', the namespace mark)")
            failed = True
            continue
        kind = item.get("transport", "stdio" if "command" in item else None) if isinstance(item, dict) else None
        typ = kinds.get(kind) if isinstance(kind, str) else None
        if typ is None:
            problems.append(f"{where}.transport: expected one of: stdio, streamable_http, sse")
            failed = True
            continue
        fields = {k: v for k, v in item.items() if k != "transport"}  # the tag is not a field
        server: McpServerSettings | None = _convert_part(fields, typ, where, problems)
        if server is None:
            failed = True
            continue
        if not isinstance(server, McpStdioServer) and not server.url.startswith(("http://", "https://")):
            problems.append(f"{where}.url: expected an http:// or https:// URL")
            failed = True
        out[str(label)] = server
    return None if failed else out


def _redactor(raw: dict[str, Any]) -> Redactor:
    """What problems must not show: the keys and header values the file holds, wherever they were written."""
    secrets: list[str] = []
    deployments = raw.get("model_list")
    for dep in deployments if isinstance(deployments, list) else []:
        if isinstance(dep, dict):
            secrets.append(str(dep.get("api_key") or ""))
            headers = dep.get("headers")
            if isinstance(headers, dict):
                secrets.extend(str(v) for v in headers.values())
    servers = raw.get("mcp_servers")
    for server in servers.values() if isinstance(servers, dict) else []:
        for key in ("env", "headers"):
            values = server.get(key) if isinstance(server, dict) else None
            if isinstance(values, dict):
                secrets.extend(str(v) for v in values.values())
    responses = raw.get("responses")
    if isinstance(responses, dict):
        secrets.append(str(responses.get("compaction_key") or ""))
    auth = raw.get("auth")
    if isinstance(auth, dict):
        secrets.append(str(auth.get("master_key") or ""))
        keys = auth.get("keys")
        for key in keys if isinstance(keys, list) else []:
            if isinstance(key, dict):
                secrets.append(str(key.get("key") or ""))
    return Redactor(secrets)


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


def _convert_deployment(data: Any, where: str, problems: list[str]) -> Deployment | None:
    """One `model_list` entry, decoded as the kind its `provider` names. A key of another kind says which kinds
    read it; every such key is reported, not only the first."""
    kind = data.get("provider") if isinstance(data, dict) else None
    if isinstance(kind, str):
        cls = DEPLOYMENT_KINDS.get(kind)
        if cls is None:
            problems.append(f"{where}.provider: {kind!r} is not one of: {', '.join(sorted(DEPLOYMENT_KINDS))}")
            return None
        extra = [k for k in data if k != "provider" and k not in cls.__struct_fields__]
        for k in extra:
            readers = sorted(name for name, other in DEPLOYMENT_KINDS.items() if k in other.__struct_fields__)
            if readers:
                problems.append(f"{where}.{k}: only read by provider {' / '.join(readers)}, not {kind!r}")
            else:
                problems.append(f"{where}.{k}: unknown key")
        if extra:
            data = {k: v for k, v in data.items() if k not in extra}
    try:
        dep: Deployment = msgspec.convert(data, Deployment, strict=False)
    except msgspec.ValidationError as exc:
        problems.append(_locate(str(exc), where))
        return None
    return dep


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
    if scheme.startswith("postgres") and importlib.util.find_spec("asyncpg") is None:
        # Found here, not at the first stored request: a server that cannot store anything must not start.
        return [
            "storage.url: PostgreSQL needs the asyncpg driver, which is not installed: pip install 'manifold[postgres]'"
        ]
    return []


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
