"""Observability parts without a server: the redactor, prometheus-client's multiprocess files of dead workers,
the access-line formats."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from manifold.observability import metrics, redaction
from manifold.observability.logging import ACCESS_LOGGER, AccessLog, JsonFormatter, TextFormatter, _AccessRecord
from manifold.observability.metrics import render
from manifold.observability.record import RequestRecord
from manifold.observability.redaction import REDACTED, Redactor
from manifold.observability.tracing import StreamCapture

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.mark.parametrize(
    ("line", "hidden"),
    [
        ("headers={'Authorization': 'Bearer sk-abc123456789'}", "sk-abc123456789"),
        ('{"authorization": "Bearer abcdefghijkl"}', "abcdefghijkl"),
        ("api-key: 0123456789abcdef", "0123456789abcdef"),
        ("X-API-KEY=zzzzzzzzzzzz", "zzzzzzzzzzzz"),
        ("x-goog-api-key: AIzaSyA-123456", "AIzaSyA-123456"),
        ("sent Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig upstream", "eyJhbGciOiJIUzI1NiJ9.payload.sig"),
        ("Proxy-Authorization: Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
        ("the configured key my-upstream-key-123 leaked", "my-upstream-key-123"),
    ],
)
def test_redactor_hides_credentials(line: str, hidden: str) -> None:
    out = Redactor(["my-upstream-key-123"])(line)
    assert hidden not in out and REDACTED in out


def test_redactor_leaves_ordinary_text_and_short_secrets() -> None:
    redact = Redactor(["x", "abc"])  # too short to be told from words: not secrets
    text = "the max token count is 512 for model abc-x"
    assert redact(text) == text


def test_longest_secret_first() -> None:
    assert Redactor(["secret-1", "secret-123"])("key secret-123") == f"key {REDACTED}"


def access_record(**fields: object) -> logging.LogRecord:
    return _AccessRecord({"time": None, "request_id": "req_1", "route": "/v1/chat/completions", **fields})


def test_json_access_line() -> None:
    out = json.loads(JsonFormatter(Redactor()).format(access_record(model="m", status=200, cost=None)))
    assert out["request_id"] == "req_1" and out["status"] == 200 and out["cost"] is None
    assert out["time"].endswith("Z") and "T" in out["time"]


def test_text_access_line_quotes_odd_values() -> None:
    out = TextFormatter(Redactor()).format(access_record(model='a "b" c', status=200, cost=None))
    assert 'model="a \\"b\\" c"' in out and "status=200" in out and "cost=" not in out


def test_a_model_name_holding_a_key_is_redacted_in_the_access_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redaction, "_process", Redactor(["sk-configured-key"]))
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(Redactor()))
    logger = logging.getLogger(ACCESS_LOGGER)
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        rec = RequestRecord("POST", "127.0.0.1")
        rec.model = "sk-configured-key"
        AccessLog().write(rec)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    line = json.loads(stream.getvalue().splitlines()[-1])
    assert line["model"] == REDACTED


def test_dead_workers_live_gauges_are_forgotten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two 'workers' in multiprocess mode: one ran and died with 3 requests in flight, one is alive with 2.
    A scrape sums the live ones' gauges and everyone's counters."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": SRC}
    work = (
        "from manifold.observability import metrics as m\n"
        "m.IN_FLIGHT.labels('dep', 'model').inc({n})\n"
        "m.REQUESTS.labels('/v1/chat/completions', '200', 'model').inc()\n"
    )
    subprocess.run([sys.executable, "-c", work.format(n=3)], env=env, check=True, timeout=60)
    alive = subprocess.Popen(
        [sys.executable, "-c", work.format(n=2) + "print('ready', flush=True)\nimport sys; sys.stdin.read()\n"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert alive.stdout is not None and alive.stdout.readline().strip() == "ready"
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
        body, content_type = render("")
        assert content_type.startswith("text/plain")
        samples = {
            (s.name, s.labels.get("deployment", "")): s.value
            for f in text_string_to_metric_families(body.decode())
            for s in f.samples
        }
        assert samples[("manifold_deployment_in_flight", "dep")] == 2
        assert samples[("manifold_requests_total", "")] == 2
        assert len(list(tmp_path.glob("gauge_livesum_*.db"))) == 1  # the dead worker's file is gone
    finally:
        assert alive.stdin is not None
        alive.stdin.close()
        alive.wait(10)


ROOT = Path(__file__).resolve().parents[2]


def exported_names() -> set[str]:
    """Every metric family metrics.py defines, as a scrape names its samples."""
    from prometheus_client import Counter, Gauge, Histogram

    from manifold.observability import metrics

    names: set[str] = set()
    for value in vars(metrics).values():
        if isinstance(value, Counter):
            names.add(value._name + "_total")
        elif isinstance(value, Histogram):
            names |= {value._name + suffix for suffix in ("_bucket", "_sum", "_count")}
        elif isinstance(value, Gauge):
            names.add(value._name)
    return names


def test_the_dashboard_uses_only_exported_metrics() -> None:
    import re

    dashboard = json.loads((ROOT / "deploy" / "grafana" / "manifold-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    labels = {"gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "gen_ai_response_model"}
    labels.add("gen_ai_token_type")
    used = {m for e in exprs for m in re.findall(r"\b(?:manifold|gen_ai)_[a-z_]+", e)} - labels
    assert used and used <= exported_names(), used - exported_names()


def test_the_docs_list_every_metric() -> None:
    doc = (ROOT / "docs" / "observability.md").read_text()
    for name in exported_names():
        base = name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
        assert f"`{base}`" in doc, base


class StreamingBackend:
    """A backend whose stream yields two chunks, then fails when `fail` is set."""

    def __init__(self, fail: bool) -> None:
        self.fail = fail

    def provider(self, deployment: Any) -> Any:
        from manifold.errors import BadGatewayError
        from manifold.providers.base import Provider

        fail = self.fail

        class Backend(Provider):
            async def open_chat_stream(self, call: Any) -> Any:
                async def chunks() -> Any:
                    yield {"choices": [{"index": 0, "delta": {"content": "a"}}]}
                    yield {"choices": [{"index": 0, "delta": {"content": "b"}}]}
                    if fail:
                        raise BadGatewayError("cut")

                return chunks()

        return Backend(deployment)


def stream_outcome(model: str, outcome: str) -> float:
    from prometheus_client import REGISTRY

    from manifold.observability.metrics import flush_all

    flush_all()
    value = REGISTRY.get_sample_value("manifold_stream_outcomes_total", {"model": model, "outcome": outcome})
    return value or 0.0


@pytest.mark.parametrize("how", ["completed", "upstream_cut", "client_left", "closed_unread"])
async def test_stream_outcomes(how: str) -> None:
    from manifold.config import OpenAIDeployment
    from manifold.errors import BadGatewayError
    from manifold.providers.base import Call
    from manifold.routing.router import Router

    model = f"stream-outcome-{how}"
    backend = StreamingBackend(fail=how == "upstream_cut")
    router = Router([OpenAIDeployment(model_name=model, api_base="http://127.0.0.1:9/v1")], backend.provider)
    router.observe(True)
    stream: Any = await router.open_chat_stream(Call({}, model, "req_1", True))
    if how == "closed_unread":
        await stream.aclose()
    elif how == "client_left":
        await anext(aiter(stream))
        await stream.aclose()
    else:
        with contextlib.suppress(BadGatewayError):
            async for _ in stream:
                pass
    expected = "client_left" if how == "closed_unread" else how
    assert stream_outcome(model, expected) == 1
    assert sum(stream_outcome(model, o) for o in ("completed", "upstream_cut", "client_left")) == 1


# -- the access-control metrics (fed by access control: count_refusal, add_spend) -----------------------------


def scraped(name: str, **labels: str) -> float:
    text = render("", flush=True)[0].decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_refusals_by_limit_and_scope() -> None:
    before = scraped("manifold_rate_limit_refusals_total", limit="rpm", scope="key")
    other = scraped("manifold_rate_limit_refusals_total", limit="other", scope="team")
    metrics.count_refusal("rpm", "key")
    metrics.count_refusal("rpm", "key")
    metrics.count_refusal("tpm", "key_model")
    metrics.count_refusal("a client's string", "team")  # not a known limit: bounded as `other`
    assert scraped("manifold_rate_limit_refusals_total", limit="rpm", scope="key") == before + 2
    assert scraped("manifold_rate_limit_refusals_total", limit="tpm", scope="key_model") >= 1
    assert scraped("manifold_rate_limit_refusals_total", limit="other", scope="team") == other + 1
    limits = {
        s.labels["limit"]
        for family in text_string_to_metric_families(render("")[0].decode())
        for s in family.samples
        if s.name == "manifold_rate_limit_refusals_total"
    }
    assert limits <= {*metrics.LIMITS, metrics.OTHER}


def test_spend_in_dollars_by_alias_team_and_model() -> None:
    access = metrics.AccessMetrics()
    access.add_spend("ci-bot", "platform", "gpt-x", 1_500_000)
    access.add_spend("ci-bot", "platform", "gpt-x", 250_000)
    access.add_spend(None, None, None, 1_000_000)  # no alias, no team, no model group
    access.add_spend("ci-bot", "platform", "gpt-x", 0)  # nothing spent: nothing counted
    assert scraped("manifold_spend_usd_total", key_alias="ci-bot", team="platform", model="gpt-x") == 1.75
    assert scraped("manifold_spend_usd_total", key_alias="", team="", model="unknown") >= 1.0


def test_spend_aliases_are_capped() -> None:
    access = metrics.AccessMetrics(max_aliases=2)
    for alias in ("cap-a", "cap-b", "cap-c", "cap-d"):
        access.add_spend(alias, "cap-team", "cap-model", 1_000_000)
    assert scraped("manifold_spend_usd_total", key_alias="cap-a", model="cap-model") == 1.0
    assert scraped("manifold_spend_usd_total", key_alias="cap-b", model="cap-model") == 1.0
    assert scraped("manifold_spend_usd_total", key_alias="cap-c", model="cap-model") == 0.0
    assert scraped("manifold_spend_usd_total", key_alias="other", team="cap-team", model="cap-model") == 2.0


def test_stream_capture_puts_the_choices_back_together() -> None:
    """What a streamed answer's client span gets as `gen_ai.output.messages` (tracing.capture_content)."""
    capture = StreamCapture()
    chunks: list[Any] = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"index": 0, "delta": {"content": "Hel"}}, {"index": 1, "text": "leg"}]},
        {"choices": [{"index": 0, "delta": {"content": "lo"}}, {"index": 1, "text": "acy", "finish_reason": "length"}]},
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}
                        ]
                    },
                }
            ]
        },
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}},
        "not a chunk",
    ]
    for chunk in chunks:
        capture.add(chunk)
    assert capture.result() == {
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hello",
                    "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
                    ],
                },
                "finish_reason": "tool_calls",
            },
            {"index": 1, "text": "legacy", "finish_reason": "length"},
        ]
    }


@pytest.fixture
def server_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """`configure` as `manifold serve` runs it (stderr a file, not a terminal: the block-buffered JSON handler),
    undone afterwards."""
    from manifold.observability import logging as manifold_logging

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    monkeypatch.setattr(manifold_logging, "_direct", None)
    path = tmp_path / "stderr"
    with path.open("w") as err:
        monkeypatch.setattr(sys, "stderr", err)
        manifold_logging.configure("info", "json", [])
        handler = root.handlers[-1]
        assert isinstance(handler, manifold_logging.BlockBufferedHandler)

        class Log:
            @staticmethod
            def alone() -> None:
                """Only the server's handler on the root logger (pytest adds its own for each test's call)."""
                root.handlers = [handler]
                assert manifold_logging._direct_handler(logging.getLogger(ACCESS_LOGGER)) is handler

            @staticmethod
            def lines() -> list[str]:
                handler.flush()
                return path.read_text().splitlines()

        try:
            yield Log
        finally:
            root.removeHandler(handler)
            handler.close()


def finished_record() -> RequestRecord:
    rec = RequestRecord("POST", "127.0.0.1")
    rec.request_id, rec.route, rec.status, rec.stream, rec.attempts = "req_1", "/v1/chat/completions", 200, True, 1
    rec.model = rec.model_label = rec.deployment = "m"
    rec.input_tokens, rec.output_tokens, rec.ttft, rec.start, rec.end = 9, 12, 0.0004, 10.0, 10.5
    return rec


@contextlib.contextmanager
def _listening() -> Iterator[io.StringIO]:
    """A JSON handler of the test's own on `manifold.access` while the block runs: what it got."""
    listener = io.StringIO()
    extra = logging.StreamHandler(listener)
    extra.setFormatter(JsonFormatter(Redactor()))
    logger = logging.getLogger(ACCESS_LOGGER)
    logger.addHandler(extra)
    try:
        yield listener
    finally:
        logger.removeHandler(extra)


def test_the_access_line_written_directly_is_the_one_logging_writes(server_log: Any) -> None:
    """With only the server's handler listening the line skips `Logger.handle`; with another handler on
    `manifold.access` it goes through logging (that handler gets it too): the same line both ways, but the
    time."""
    server_log.alone()
    AccessLog().write(finished_record())
    with _listening() as listener:
        AccessLog().write(finished_record())
    direct, through_logging = server_log.lines()
    assert json.loads(listener.getvalue()) == json.loads(through_logging)

    def without_time(line: str) -> str:
        head, rest = line.split('"time":"', 1)
        return head + rest.split('"', 1)[1]

    assert without_time(direct) == without_time(through_logging)
    fields = json.loads(direct)
    assert list(fields) == [
        "time", "request_id", "trace_id", "method", "route", "model", "deployment", "status", "stream",
        "attempts", "input_tokens", "output_tokens", "cost", "latency_ms", "ttft_ms", "key_alias", "client",
    ]  # fmt: skip
    assert fields["latency_ms"] == 500.0 and fields["ttft_ms"] == 0.4 and fields["time"].endswith("Z")


def test_the_access_logs_route_is_worked_out_once_a_second(server_log: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """One `AccessLog` decides whether its lines may skip logging once per whole second (with the second's
    text): a handler added on `manifold.access` gets the lines from the next second on, and a level that
    silences the logger silences it from then on too."""
    from manifold.observability import logging as manifold_logging

    clock = [1_800_000_000.25]
    monkeypatch.setattr(manifold_logging, "_now", lambda: clock[0])
    server_log.alone()
    access = AccessLog()
    access.write(finished_record())
    with _listening() as listener:
        clock[0] += 0.5  # the same second: still written directly
        access.write(finished_record())
        assert listener.getvalue() == ""
        clock[0] += 0.5  # the next second: through logging, so the added handler sees it
        access.write(finished_record())
        assert json.loads(listener.getvalue())["request_id"] == "req_1"
    logger = logging.getLogger(ACCESS_LOGGER)
    logger.setLevel(logging.WARNING)  # clears logging's cache of levels, as a user's call would
    try:
        clock[0] += 1
        access.write(finished_record())
    finally:
        logger.setLevel(logging.NOTSET)
    times = [json.loads(line)["time"] for line in server_log.lines()]
    assert times[:2] == ["2027-01-15T08:00:00.250Z", "2027-01-15T08:00:00.750Z"]
    assert len(times) == 3  # the third went through logging (to the server's handler too); the fourth nowhere


def test_an_ordinary_line_keeps_its_place_among_access_lines(server_log: Any) -> None:
    server_log.alone()
    AccessLog().write(finished_record())
    logging.getLogger("manifold.test").warning("between")
    AccessLog().write(finished_record())
    lines = server_log.lines()
    assert [json.loads(line).get("message") for line in lines] == [None, "between", None]


async def test_stream_bodies_skip_the_observing_wrapper_unless_a_layer_inside_wraps_send() -> None:
    """The observing layer notes the status from `http.response.start`; a stream's body messages go straight to
    the server's `send` (asgi.body_send), unless a layer inside the observing one wrapped `send`: that layer
    sees every message."""
    from manifold.observability.observer import Observer
    from manifold.server.asgi import Request
    from manifold.server.middleware.observe import ObserveRequests
    from manifold.server.sse_writer import EventStream

    records: list[RequestRecord] = []
    observer = Observer(False, False, None, [records.append])

    async def app(scope: Any, receive: Any, send: Any) -> None:
        out = EventStream(Request(scope, receive, send))
        await out.commit()
        await out.write(b"data: 1\n\n")
        await out.end(b"data: [DONE]\n\n")

    def layer(inner: Any, seen: list[str]) -> Any:
        async def wrapped(scope: Any, receive: Any, send: Any) -> None:
            async def counting(message: Any) -> None:
                seen.append(message["type"])
                await send(message)

            await inner(scope, receive, counting)

        return wrapped

    for inner_layer in (False, True):
        seen: list[str] = []
        sent: list[str] = []

        async def server_send(message: Any, sent: list[str] = sent) -> None:
            sent.append(message["type"])

        async def receive() -> Any:
            return {"type": "http.request", "body": b"", "more_body": False}

        scope = {"type": "http", "method": "GET", "path": "/s", "headers": [], "manifold.request_id": "req_1"}
        served = ObserveRequests(layer(app, seen) if inner_layer else app, observer)
        await served(scope, receive, server_send)
        assert sent == ["http.response.start", "http.response.body", "http.response.body"]
        assert seen == (sent if inner_layer else [])
        assert records[-1].status == 200


_VALUES = st.lists(
    st.one_of(
        st.floats(min_value=0.0, max_value=1e9, allow_nan=False),
        st.sampled_from([0.0, 0.01, 0.02, 1.28, 81.92, 1e9, float("inf")]),  # on the bounds themselves
    ),
    max_size=300,
)


@settings(max_examples=60, deadline=None)
@given(first=_VALUES, second=_VALUES)
def test_a_buffered_histogram_buckets_as_prometheus_client_does(first: list[float], second: list[float]) -> None:
    """`BufferedHistogram.flush` (sorted values, a bisection per bucket) ends with the same buckets and sum as
    prometheus-client's own `observe` of each value, over two flushes."""
    from prometheus_client import CollectorRegistry, Histogram

    registry = CollectorRegistry()
    buckets = (0.01, 0.02, 0.04, 1.28, 81.92)
    ours = Histogram("ours", "", ("l",), buckets=buckets, registry=registry).labels("x")
    theirs = Histogram("theirs", "", ("l",), buckets=buckets, registry=registry).labels("x")
    buffered = metrics.BufferedHistogram(ours)
    try:
        for batch in (first, second):
            for value in batch:
                buffered.observe(value)
                theirs.observe(value)
            buffered.flush()
            assert len(buffered.values) == 0
            assert [b.get() for b in ours._buckets] == [b.get() for b in theirs._buckets]
            assert ours._sum.get() == pytest.approx(theirs._sum.get(), rel=1e-9)
    finally:
        metrics._BUFFERED.remove(buffered)
