"""Every metric Manifold exports, in one file (docs/observability.md lists them with their labels).

Names follow OpenTelemetry's GenAI semantic conventions as Prometheus spells them (`gen_ai.client.token.usage`
→ `gen_ai_client_token_usage`); the gateway's own figures are under `manifold_`. Label values come from the
config (model group names, deployment labels, provider kinds) or from short fixed sets, never from what a client
sent: a model name the config does not know is `unknown`.

The metric objects live on prometheus-client's default registry, as the ecosystem expects of a library (an app
that mounts Manifold shows them on its own `/metrics`). With `workers > 1`, `manifold serve` sets
`PROMETHEUS_MULTIPROC_DIR` before any worker imports prometheus-client, and a scrape sums every worker's files.

Hot-path rules: a request never calls `.labels()` (a lock, a tuple, a dict lookup under the lock): the children
a request touches are looked up once per deployment or per label tuple and cached (`DeploymentMetrics`,
`RequestMetrics`). And a request does not take a lock per figure: counters and histograms are counted in plain
attributes on the event loop (`Buffered`: an add; `BufferedHistogram`: a `list.append`) and moved into
prometheus-client's children by `flush_all`, before every scrape on the main port and once a second (so that
the other workers' files and the `metrics.port` thread see them).
"""

from __future__ import annotations

import asyncio
import os
import threading
from array import array
from bisect import bisect_right
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import exposition as _exposition

if TYPE_CHECKING:
    from manifold.observability.record import RequestRecord

__all__ = [
    "UNKNOWN",
    "DeploymentMetrics",
    "OperationMetrics",
    "RequestMetrics",
    "add_spend",
    "count_refusal",
    "render",
]

UNKNOWN: Final = "unknown"
UNMATCHED: Final = "unmatched"  # the route of a path no route matched (404): raw paths would be unbounded
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"

# gen_ai.operation.name values (OTel GenAI); the router names each of its operations with one of these.
CHAT: Final = "chat"
TEXT_COMPLETION: Final = "text_completion"
EMBEDDINGS: Final = "embeddings"
GENERATE_CONTENT: Final = "generate_content"

# Bucket boundaries advised by the GenAI semantic conventions.
_DURATION = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
_TOKENS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
_TTFT = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_TPOT = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
# The gateway's own time is sub-millisecond when healthy: finer buckets.
_GATEWAY = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_TOKENS_PER_SECOND = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
_STORAGE = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

_GEN_AI_MODEL = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "gen_ai_response_model")

# -- OpenTelemetry GenAI -------------------------------------------------------------------------------------------

CLIENT_OPERATION_DURATION = Histogram(
    "gen_ai_client_operation_duration_seconds",
    "Duration of each upstream attempt (the gateway as a GenAI client), streams until their last chunk.",
    (*_GEN_AI_MODEL, "error_type"),
    buckets=_DURATION,
)
CLIENT_TOKEN_USAGE = Histogram(
    "gen_ai_client_token_usage",
    "Tokens per answered request, by gen_ai_token_type (input, output).",
    (*_GEN_AI_MODEL, "gen_ai_token_type"),
    buckets=_TOKENS,
)
SERVER_REQUEST_DURATION = Histogram(
    "gen_ai_server_request_duration_seconds",
    "Duration of each GenAI request the gateway served, retries and fallbacks included.",
    ("gen_ai_operation_name", "gen_ai_request_model", "error_type"),
    buckets=_DURATION,
)
SERVER_TIME_TO_FIRST_TOKEN = Histogram(
    "gen_ai_server_time_to_first_token_seconds",
    "Time from the request's arrival to the first chunk of a streamed answer.",
    _GEN_AI_MODEL,
    buckets=_TTFT,
)
SERVER_TIME_PER_OUTPUT_TOKEN = Histogram(
    "gen_ai_server_time_per_output_token_seconds",
    "Time per output token of a streamed answer after its first.",
    _GEN_AI_MODEL,
    buckets=_TPOT,
)

# -- the gateway -----------------------------------------------------------------------------------------------

REQUESTS = Counter(
    "manifold_requests",
    "HTTP requests answered, by route template, status and model group.",
    ("route", "status", "model"),
)
GATEWAY_TIME = Histogram(
    "manifold_gateway_time_seconds",
    "Each request's time minus the time spent waiting on upstreams: the gateway's own share.",
    ("route",),
    buckets=_GATEWAY,
)
IN_FLIGHT = Gauge(
    "manifold_deployment_in_flight",
    "Requests a deployment is serving now.",
    ("deployment", "model"),
    multiprocess_mode="livesum",
)
QUEUED = Gauge(
    "manifold_deployment_queued",
    "Requests waiting for a concurrency slot of a deployment.",
    ("deployment", "model"),
    multiprocess_mode="livesum",
)
BREAKER_STATE = Gauge(
    "manifold_deployment_breaker_state",
    "Circuit breaker of a deployment: 0 closed, 1 open (cooling down), 2 half-open (probing).",
    ("deployment", "model"),
    multiprocess_mode="livemax",
)
UPSTREAM_ATTEMPTS = Counter(
    "manifold_upstream_attempts",
    "Upstream attempts by outcome: ok, retried, failed_over, failed, timed_out, cancelled.",
    ("deployment", "model", "outcome"),
)
STREAM_OUTCOMES = Counter(
    "manifold_stream_outcomes",
    "Streamed answers by how they ended: completed, client_left, upstream_cut.",
    ("model", "outcome"),
)
STREAM_OUTPUT_TOKENS_PER_SECOND = Histogram(
    "manifold_stream_output_tokens_per_second",
    "Output tokens per second of each completed stream, after its first chunk.",
    ("model",),
    buckets=_TOKENS_PER_SECOND,
)
STORAGE_WRITE_DURATION = Histogram(
    "manifold_storage_write_seconds",
    "Duration of each committed storage write transaction as its writers waited (BEGIN to COMMIT, the sync included).",
    buckets=_STORAGE,
)
LEDGER_BACKLOG = Gauge(
    "manifold_ledger_backlog",
    "Spend-ledger entries waiting to be written.",
    multiprocess_mode="livesum",
)
LEDGER_DROPPED = Counter(
    "manifold_ledger_dropped_rows",
    "Usage-ledger rows dropped: the buffer was full while the database was unreachable, or left at shutdown.",
)
# Access control (issue 12) feeds these two through `count_refusal` and `add_spend` (below); they are declared
# here so that every name lives in this file.
RATE_LIMIT_REFUSALS = Counter(
    "manifold_rate_limit_refusals",
    "Requests refused by access control, by the limit (rpm, tpm, max_parallel_requests, budget) and the scope "
    "whose limit it was (key, team, key_model: a key's limit for one model).",
    ("limit", "scope"),
)
SPEND = Counter(
    "manifold_spend_usd",
    "Spend in US dollars by key alias, team alias and model group (past the first 1000 aliases: `other`).",
    ("key_alias", "team", "model"),
)

OUTCOMES: Final = ("ok", "retried", "failed_over", "failed", "timed_out", "cancelled")
BREAKER_CLOSED: Final = 0
BREAKER_OPEN: Final = 1
BREAKER_HALF_OPEN: Final = 2


_BUFFERED: list[Buffered | BufferedHistogram] = []
FLUSH_INTERVAL: Final = 1.0


class Buffered:
    """A counter child counted on the event loop, moved to prometheus-client by `flush`."""

    __slots__ = ("child", "n")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.n = 0.0
        _BUFFERED.append(self)

    def inc(self, amount: float = 1.0) -> None:
        self.n += amount

    def flush(self) -> None:
        n = self.n
        if n:
            self.n = 0.0
            self.child.inc(n)


class BufferedHistogram:
    """A histogram child: `observe` is the C method `append` of an array of doubles (no Python frame on the
    request path, and no float object kept: a list would hold a second's worth of them, thousands of objects
    whose memory the next requests could not reuse); `flush` buckets them (`bisect` over the child's bounds) and
    adds them to the child's buckets and sum. Between two flushes (a second apart) the array holds what the
    process observed meanwhile."""

    __slots__ = ("bounds", "child", "observe", "values")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.bounds: list[float] = list(child._upper_bounds)  # ends with +Inf
        self.values = array("d")
        self.observe: Callable[[float], None] = self.values.append
        _BUFFERED.append(self)

    def flush(self) -> None:
        values = self.values
        if not values:
            return
        # Sorted (in C), each bucket's count is the distance between two bisections: a Python step per bucket,
        # not per value (a second of traffic is thousands of values).
        taken = sorted(values)
        del values[:]  # the same array: `observe` is its bound `append`
        buckets = self.child._buckets
        below = 0
        for i, bound in enumerate(self.bounds):
            upto = bisect_right(taken, bound, below)  # values <= bound: prometheus-client's `le`
            if upto > below:
                buckets[i].inc(upto - below)
                below = upto
        self.child._sum.inc(sum(taken))


def flush_all() -> None:
    """Move every buffered figure into prometheus-client (on the event loop's thread: the buffers are its)."""
    for buffered in _BUFFERED:
        buffered.flush()


async def flush_periodically(interval: float = FLUSH_INTERVAL) -> None:
    try:
        while True:
            await asyncio.sleep(interval)
            flush_all()
    finally:
        flush_all()


class OperationMetrics:
    """The children one deployment and one operation touches per request."""

    __slots__ = ("_errors", "_labels", "duration", "input_tokens", "output_tokens", "tpot", "ttft")

    def __init__(self, labels: tuple[str, str, str, str]) -> None:
        self._labels = labels
        self.duration = BufferedHistogram(CLIENT_OPERATION_DURATION.labels(*labels, ""))
        self.input_tokens = BufferedHistogram(CLIENT_TOKEN_USAGE.labels(*labels, "input"))
        self.output_tokens = BufferedHistogram(CLIENT_TOKEN_USAGE.labels(*labels, "output"))
        self.ttft = BufferedHistogram(SERVER_TIME_TO_FIRST_TOKEN.labels(*labels))
        self.tpot = BufferedHistogram(SERVER_TIME_PER_OUTPUT_TOKEN.labels(*labels))
        self._errors: dict[str, BufferedHistogram] = {}

    def failed(self, error_type: str, seconds: float) -> None:
        child = self._errors.get(error_type)
        if child is None:
            child = self._errors[error_type] = BufferedHistogram(
                CLIENT_OPERATION_DURATION.labels(*self._labels, error_type)
            )
        child.observe(seconds)


def usage_tokens(usage: object) -> tuple[int | None, int | None]:
    """(input, output) tokens of an OpenAI `usage` object, in the chat/completions/embeddings or the Responses
    spelling."""
    if not isinstance(usage, dict):
        return None, None
    given = usage.get("prompt_tokens")
    if given is None:
        given = usage.get("input_tokens")
    made = usage.get("completion_tokens")
    if made is None:
        made = usage.get("output_tokens")
    return (given if isinstance(given, int) else None), (made if isinstance(made, int) else None)


class DeploymentMetrics:
    """One deployment's cached children. `model` is its group's name, `provider` its provider kind, `upstream`
    the model it serves as configured (gen_ai.response.model)."""

    __slots__ = (
        "_lock",
        "breaker",
        "breaker_state",
        "cancelled",
        "deployment",
        "failed",
        "failed_over",
        "in_flight",
        "model",
        "multiprocess",
        "ok",
        "ops",
        "provider",
        "queued",
        "retried",
        "stream_client_left",
        "stream_completed",
        "stream_upstream_cut",
        "timed_out",
        "tokens_per_second",
        "upstream",
    )

    def __init__(self, deployment: str, model: str, provider: str, upstream: str) -> None:
        self.deployment = deployment
        self.model = model
        self.provider = provider
        self.upstream = upstream
        self.multiprocess = multiprocess_dir() is not None
        self.in_flight = IN_FLIGHT.labels(deployment, model)
        self.queued = QUEUED.labels(deployment, model)
        self.breaker = BREAKER_STATE.labels(deployment, model)
        self.breaker.set(BREAKER_CLOSED)
        self.breaker_state = BREAKER_CLOSED
        attempts = UPSTREAM_ATTEMPTS
        self.ok = Buffered(attempts.labels(deployment, model, "ok"))
        self.retried = Buffered(attempts.labels(deployment, model, "retried"))
        self.failed_over = Buffered(attempts.labels(deployment, model, "failed_over"))
        self.failed = Buffered(attempts.labels(deployment, model, "failed"))
        self.timed_out = Buffered(attempts.labels(deployment, model, "timed_out"))
        self.cancelled = Buffered(attempts.labels(deployment, model, "cancelled"))
        self.stream_completed = Buffered(STREAM_OUTCOMES.labels(model, "completed"))
        self.stream_client_left = Buffered(STREAM_OUTCOMES.labels(model, "client_left"))
        self.stream_upstream_cut = Buffered(STREAM_OUTCOMES.labels(model, "upstream_cut"))
        self.tokens_per_second = BufferedHistogram(STREAM_OUTPUT_TOKENS_PER_SECOND.labels(model))
        self.ops: dict[str, OperationMetrics] = {}  # by operation name; `operation` makes a missing one
        self._lock = threading.Lock()

    def sync_breaker(self, breaker: Any) -> None:
        """Show a circuit breaker's state (anything with `open_until` and `probing`)."""
        state = (BREAKER_HALF_OPEN if breaker.probing else BREAKER_OPEN) if breaker.open_until else BREAKER_CLOSED
        if state != self.breaker_state:
            self.breaker_state = state
            self.breaker.set(state)

    def operation(self, name: str) -> OperationMetrics:
        ops = self.ops.get(name)
        if ops is None:
            with self._lock:
                ops = self.ops.get(name)
                if ops is None:
                    ops = self.ops[name] = OperationMetrics((name, self.provider, self.model, self.upstream))
        return ops


class RequestMetrics:
    """The per-request children, cached by what decides them (the route template, the status, the model group,
    the operation, the error type): routes are templates and models are group names, so the cache stays as
    small as the config. `finished` is one dict lookup and three appends per request."""

    __slots__ = ("_children",)

    def __init__(self) -> None:
        self._children: dict[tuple[Any, ...], tuple[Buffered, Callable[[float], None], Any]] = {}

    def finished(self, rec: RequestRecord) -> None:
        """Count a finished request: `manifold_requests`, `manifold_gateway_time_seconds`, and for a GenAI
        operation `gen_ai_server_request_duration_seconds`."""
        key = (rec.route, rec.status, rec.model_label, rec.model is None, rec.operation, rec.error_type)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = self._make(*key)
        requests, gateway, server = children
        requests.n += 1.0  # Buffered.inc without the call
        elapsed = rec.end - rec.start
        own = elapsed - rec.upstream_seconds
        gateway(own if own > 0.0 else 0.0)
        if server is not None:
            server(elapsed)

    def _make(
        self, route: str | None, status: int, label: str, no_model: bool, operation: str | None, error: str | None
    ) -> tuple[Buffered, Callable[[float], None], Any]:
        route = route or UNMATCHED
        model = UNKNOWN if not label and not no_model else label  # named a model the config does not have
        requests = self.request(route, status, model)
        gateway = self.gateway_time(route).observe
        server = None
        if operation is not None:
            if error is None and status >= 400:
                error = str(status)
            server = self.server_duration(operation, model, error or "").observe
        return requests, gateway, server

    # One child per label tuple, however many keys of `finished` lead to it.

    def request(self, route: str, status: int, model: str) -> Buffered:
        return _child(REQUESTS, (route, str(status), model), Buffered)

    def gateway_time(self, route: str) -> BufferedHistogram:
        return _child(GATEWAY_TIME, (route,), BufferedHistogram)

    def server_duration(self, operation: str, model: str, error_type: str) -> BufferedHistogram:
        return _child(SERVER_REQUEST_DURATION, (operation, model, error_type), BufferedHistogram)


_CHILDREN: dict[tuple[Any, tuple[str, ...]], Any] = {}


_B = TypeVar("_B", "Buffered", "BufferedHistogram")


def _child(metric: Any, labels: tuple[str, ...], kind: type[_B]) -> _B:
    """The buffered child of `metric` for `labels`, made once per process (prometheus-client's own child is
    one per label tuple too; two buffers of one child would both flush into it, which is also right)."""
    key = (metric, labels)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = kind(metric.labels(*labels))
    return child


# -- access control (issue 12 feeds these) ------------------------------------------------------------------

LIMITS: Final = ("rpm", "tpm", "max_parallel_requests", "budget", "quota")
SCOPES: Final = ("key", "team", "key_model", "deployment")
OTHER: Final = "other"
# Key and team aliases are set by an admin, not sent by clients, but a deployment may have many keys: past this
# many distinct aliases of each kind a process shows the rest as `other` (so one process exports at most
# (MAX_ALIASES + 1)^2 * models spend series; in practice: keys * their team * the models they use).
MAX_ALIASES: Final = 1000


class AccessMetrics:
    """The children access control touches, cached by label tuple. `count_refusal` and `add_spend` call the
    process's one instance (on the event loop's thread)."""

    __slots__ = ("_keys", "_refusals", "_spend", "_teams", "max_aliases")

    def __init__(self, max_aliases: int = MAX_ALIASES) -> None:
        self.max_aliases = max_aliases
        self._refusals: dict[tuple[str, str], Buffered] = {}
        self._spend: dict[tuple[str, str, str], Buffered] = {}
        self._keys: set[str] = set()
        self._teams: set[str] = set()

    def count_refusal(self, limit: str, scope: str) -> None:
        key = (limit, scope)
        child = self._refusals.get(key)
        if child is None:
            labels = (limit if limit in LIMITS else OTHER, scope if scope in SCOPES else OTHER)
            child = self._refusals.get(labels)
            if child is None:
                child = self._refusals[labels] = Buffered(RATE_LIMIT_REFUSALS.labels(*labels))
        child.inc()

    def add_spend(self, key_alias: str | None, team: str | None, model: str | None, micros: int) -> None:
        if micros <= 0:
            return
        key = (key_alias or "", team or "", model or "")
        child = self._spend.get(key)
        if child is None:
            labels = (self._bounded(key[0], self._keys), self._bounded(key[1], self._teams), key[2] or UNKNOWN)
            # Only label tuples are cached (an alias past the cap is looked up again, as `other`, each time).
            child = self._spend.get(labels)
            if child is None:
                child = self._spend[labels] = Buffered(SPEND.labels(*labels))
        child.inc(micros / 1_000_000)

    def _bounded(self, alias: str, seen: set[str]) -> str:
        if not alias or alias in seen:
            return alias
        if len(seen) >= self.max_aliases:
            return OTHER
        seen.add(alias)
        return alias


ACCESS: Final = AccessMetrics()


def count_refusal(limit: str, scope: str) -> None:
    """One request refused by access control: `limit` one of `LIMITS` (rpm, tpm, max_parallel_requests,
    budget), `scope` one of `SCOPES` (key, team, key_model); anything else is counted as `other`."""
    ACCESS.count_refusal(limit, scope)


def add_spend(key_alias: str | None, team: str | None, model: str | None, micros: int) -> None:
    """Spend of one request, in integer micro-dollars (the ledger's unit), shown in US dollars. `key_alias` and
    `team` (alias) as the admin set them ("" when unset; past the first `MAX_ALIASES` distinct ones, `other`);
    `model` the group name the router resolved (None: `unknown`), never the client's raw model string."""
    ACCESS.add_spend(key_alias, team, model, micros)


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def render(accept: str, flush: bool = True) -> tuple[bytes, str]:
    """The exposition for a scrape: OpenMetrics when the `Accept` header asks for it, else Prometheus text.
    With `PROMETHEUS_MULTIPROC_DIR` set, the sum over every worker's files (dead workers' live gauges removed
    first). `flush`: move this process's buffered figures in first (only from the event loop's thread)."""
    if flush:
        flush_all()
    registry: CollectorRegistry = REGISTRY
    directory = multiprocess_dir()
    if directory is not None:
        from prometheus_client import multiprocess

        forget_dead_workers(directory)
        registry = CollectorRegistry(auto_describe=False)
        multiprocess.MultiProcessCollector(registry, directory)  # type: ignore[no-untyped-call]
    encoder, content_type = _exposition.choose_encoder(accept)
    return encoder(registry), content_type


def forget_dead_workers(directory: str) -> None:
    """Remove the live-gauge files of worker processes that no longer exist (a crashed worker's in-flight
    count must not stay in the sum); their counters stay, as counters should."""
    from prometheus_client import multiprocess

    seen: set[int] = set()
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        # gauge_livesum_12345.db and friends
        if not name.startswith("gauge_live") or not name.endswith(".db"):
            continue
        try:
            pid = int(name[:-3].rsplit("_", 1)[1])
        except (ValueError, IndexError):
            continue
        if pid in seen:
            continue
        seen.add(pid)
        if not _alive(pid):
            multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def serve_http(port: int, host: str, path: str = "/metrics") -> None:
    """Serve `render` at `path` on a port of its own, from a daemon thread (`metrics.port`)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != path:
                self.send_error(404)
                return
            # Another thread: the buffers are the event loop's, flushed by it once a second.
            body, content_type = render(self.headers.get("Accept", ""), flush=False)
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes are not worth a log line each

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="manifold-metrics", daemon=True).start()
