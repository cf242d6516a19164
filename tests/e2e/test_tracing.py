"""OpenTelemetry end to end: `manifold serve` exports over OTLP/HTTP to a receiver in this test (decoded with
opentelemetry-proto); the client's `traceparent` is the parent of the server span, each upstream attempt is a
GenAI client span under it, and the fake upstream received the attempt's `traceparent`."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.e2e.conftest import UPSTREAM_KEY, ManifoldProcess
from tests.e2e.test_frontend import ENV as HANDLER_ENV
from tests.e2e.test_observability import MESSAGES, access_line, deployment
from tests.fakes.openai_upstream import FakeUpstream

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


class OtlpReceiver:
    """An OTLP/HTTP traces endpoint (`POST /v1/traces`, protobuf) that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.paths: list[str] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.paths.append(self.path)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                for resource_spans in request.resource_spans:
                    for scope_spans in resource_spans.scope_spans:
                        receiver.spans.extend(scope_spans.spans)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, trace_id: str, count: int, timeout: float = 15.0) -> list[Span]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [s for s in self.spans if s.trace_id.hex() == trace_id]
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{count} span(s) of trace {trace_id} not received; got {self.spans}")

    def close(self) -> None:
        self.server.shutdown()


class GrpcOtlpReceiver(OtlpReceiver):
    """An OTLP/gRPC collector (opentelemetry-proto's TraceService on grpcio) that keeps every span it is sent."""

    def __init__(self) -> None:
        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

        self.spans = []
        self.paths = []
        receiver = self

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: ExportTraceServiceRequest, context: Any) -> Any:
                receiver.paths.append("grpc:Export")
                for resource_spans in request.resource_spans:
                    for scope_spans in resource_spans.scope_spans:
                        receiver.spans.extend(scope_spans.spans)
                return trace_service_pb2.ExportTraceServiceResponse()

        self.grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self.grpc_server)
        port = self.grpc_server.add_insecure_port("127.0.0.1:0")
        self.grpc_server.start()
        self.url = f"http://127.0.0.1:{port}"

    def close(self) -> None:
        self.grpc_server.stop(grace=None)


def attributes(span: Span) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        value = kv.value
        out[kv.key] = getattr(value, value.WhichOneof("value"))
    return out


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def traced(
    fake: FakeUpstream, receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ManifoldProcess]:
    config = {
        "model_list": [
            deployment(fake, "tr-echo", "echo@trace", api_key=UPSTREAM_KEY),
            deployment(fake, "tr-retry", "flaky:1@trace"),
        ],
        "router": {"num_retries": 1, "retry_backoff": 0.01, "cooldown_time": 0},
        "server": {"log_format": "json"},
        "tracing": {"capture_content": True},
    }
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_SERVICE_NAME": "gw"}
    proc = ManifoldProcess(config, tmp_path_factory.mktemp("traced"), env=env)
    yield proc
    proc.stop()


def traceparent(trace_id: str) -> dict[str, str]:
    return {"traceparent": f"00-{trace_id}-{CLIENT_SPAN}-01"}


def test_server_and_client_spans_with_parent_links(
    traced: ManifoldProcess, receiver: OtlpReceiver, fake: FakeUpstream
) -> None:
    body = {"model": "tr-echo", "messages": [*MESSAGES, {"role": "user", "content": f"key {UPSTREAM_KEY}"}]}
    resp = httpx.post(traced.url + "/v1/chat/completions", json=body, headers=traceparent(TRACE_ID))
    assert resp.status_code == 200
    spans = receiver.wait_for(TRACE_ID, 2)
    assert receiver.paths[0] == "/v1/traces"
    server = next(s for s in spans if s.kind == Span.SPAN_KIND_SERVER)
    client = next(s for s in spans if s.kind == Span.SPAN_KIND_CLIENT)
    assert server.parent_span_id.hex() == CLIENT_SPAN
    assert server.name == "POST /v1/chat/completions"
    assert attributes(server)["http.route"] == "/v1/chat/completions"
    assert attributes(server)["http.response.status_code"] == 200
    assert attributes(server)["manifold.request_id"] == resp.headers["x-request-id"]
    assert client.parent_span_id == server.span_id
    assert client.name == "chat tr-echo"
    attrs = attributes(client)
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.request.model"] == "tr-echo" and attrs["gen_ai.response.model"] == "upstream-model"
    assert attrs["manifold.deployment"] == "tr-echo#0" and attrs["manifold.retry"] == 0
    assert attrs["gen_ai.usage.input_tokens"] == 5 and attrs["gen_ai.usage.output_tokens"] == 3
    # Content captured (switched on), without the secret.
    assert "one two three" in attrs["gen_ai.input.messages"]
    assert UPSTREAM_KEY not in attrs["gen_ai.input.messages"] and "[REDACTED]" in attrs["gen_ai.input.messages"]
    # The upstream got the client span as its parent.
    sent = next(r for r in reversed(fake.requests) if r.behavior == "echo@trace")
    assert sent.headers["traceparent"] == f"00-{TRACE_ID}-{client.span_id.hex()}-01"
    # The access line has the request id and the trace id together.
    assert access_line(traced, resp.headers["x-request-id"])["trace_id"] == TRACE_ID


def test_a_retry_is_a_second_client_span(traced: ManifoldProcess, receiver: OtlpReceiver) -> None:
    trace_id = "5bf92f3577b34da6a3ce929d0e0e4737"
    resp = httpx.post(
        traced.url + "/v1/chat/completions",
        json={"model": "tr-retry", "messages": MESSAGES},
        headers=traceparent(trace_id),
    )
    assert resp.status_code == 200 and resp.headers["x-manifold-attempts"] == "2"
    spans = receiver.wait_for(trace_id, 3)
    server = next(s for s in spans if s.kind == Span.SPAN_KIND_SERVER)
    clients = sorted(
        (s for s in spans if s.kind == Span.SPAN_KIND_CLIENT), key=lambda s: attributes(s)["manifold.retry"]
    )
    assert [attributes(s)["manifold.retry"] for s in clients] == [0, 1]
    assert all(s.parent_span_id == server.span_id for s in clients)
    assert clients[0].status.code == clients[0].status.STATUS_CODE_ERROR
    assert attributes(clients[0])["error.type"] == "503"
    assert clients[1].status.code != clients[1].status.STATUS_CODE_ERROR


def test_a_stream_span_ends_with_the_stream(traced: ManifoldProcess, receiver: OtlpReceiver) -> None:
    """The streamed answer's content is captured too (put back together from its chunks), the secrets that it
    and the prompt carry redacted."""
    trace_id = "6bf92f3577b34da6a3ce929d0e0e4738"
    messages = [{"role": "user", "content": f"one {UPSTREAM_KEY} three"}]
    body = {"model": "tr-echo", "messages": messages, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", traced.url + "/v1/chat/completions", json=body, headers=traceparent(trace_id)) as r:
        assert r.status_code == 200
        r.read()
    spans = receiver.wait_for(trace_id, 2)
    client = next(s for s in spans if s.kind == Span.SPAN_KIND_CLIENT)
    attrs = attributes(client)
    assert attrs["gen_ai.usage.output_tokens"] == 4
    assert UPSTREAM_KEY not in attrs["gen_ai.input.messages"] and "[REDACTED]" in attrs["gen_ai.input.messages"]
    output = json.loads(attrs["gen_ai.output.messages"])
    assert output == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "echo: one [REDACTED] three"},
            "finish_reason": "stop",
        }
    ]
    assert UPSTREAM_KEY not in attrs["gen_ai.output.messages"]


def test_a_non_streamed_answer_is_captured(traced: ManifoldProcess, receiver: OtlpReceiver) -> None:
    trace_id = "7bf92f3577b34da6a3ce929d0e0e4739"
    resp = httpx.post(
        traced.url + "/v1/chat/completions",
        json={"model": "tr-echo", "messages": MESSAGES},
        headers=traceparent(trace_id),
    )
    assert resp.status_code == 200
    client = next(s for s in receiver.wait_for(trace_id, 2) if s.kind == Span.SPAN_KIND_CLIENT)
    output = json.loads(attributes(client)["gen_ai.output.messages"])
    assert output[0]["message"]["content"] == "echo: one two three" and output[0]["finish_reason"] == "stop"


def test_without_traceparent_a_new_trace(traced: ManifoldProcess, receiver: OtlpReceiver) -> None:
    resp = httpx.post(traced.url + "/v1/chat/completions", json={"model": "tr-echo", "messages": MESSAGES})
    assert resp.status_code == 200
    line = access_line(traced, resp.headers["x-request-id"])
    spans = receiver.wait_for(line["trace_id"], 2)
    server = next(s for s in spans if s.kind == Span.SPAN_KIND_SERVER)
    assert server.parent_span_id == b""


def test_tracing_off_sends_no_traceparent(fake: FakeUpstream, tmp_path: Path) -> None:
    proc = ManifoldProcess({"model_list": [deployment(fake, "tr-off", "echo@trace-off")]}, tmp_path)
    try:
        resp = httpx.post(
            proc.url + "/v1/chat/completions",
            json={"model": "tr-off", "messages": MESSAGES},
            headers=traceparent(TRACE_ID),
        )
        assert resp.status_code == 200
        sent = next(r for r in reversed(fake.requests) if r.behavior == "echo@trace-off")
        assert "traceparent" not in sent.headers
    finally:
        proc.stop()


def test_serve_handler_is_traced(receiver: OtlpReceiver, tmp_path: Path) -> None:
    """`manifold serve --handler`: the same server span, and a client span for the call of the handler."""
    env = {**HANDLER_ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "50"}
    proc = ManifoldProcess(
        {"server": {"log_format": "json"}}, tmp_path, env=env, extra_args=("--handler", "examples.echo_handler:answer")
    )
    try:
        trace_id = "8bf92f3577b34da6a3ce929d0e0e4740"
        body = {"model": "echo-1", "messages": MESSAGES, "stream": True}
        with httpx.stream("POST", proc.url + "/v1/chat/completions", json=body, headers=traceparent(trace_id)) as r:
            assert r.status_code == 200
            r.read()
            request_id = r.headers["x-request-id"]
        spans = receiver.wait_for(trace_id, 2)
        server = next(s for s in spans if s.kind == Span.SPAN_KIND_SERVER)
        client = next(s for s in spans if s.kind == Span.SPAN_KIND_CLIENT)
        assert server.parent_span_id.hex() == CLIENT_SPAN and server.name == "POST /v1/chat/completions"
        assert client.parent_span_id == server.span_id and client.name == "chat echo-1"
        assert attributes(client)["gen_ai.provider.name"] == "python"
        assert "gen_ai.output.messages" not in attributes(client)  # content capture is off
        assert access_line(proc, request_id)["trace_id"] == trace_id
    finally:
        proc.stop()


def test_otlp_over_grpc(fake: FakeUpstream, tmp_path: Path) -> None:
    """`OTEL_EXPORTER_OTLP_PROTOCOL=grpc`: the same spans, with their parent links, reach a gRPC collector."""
    receiver = GrpcOtlpReceiver()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    proc = ManifoldProcess({"model_list": [deployment(fake, "tr-grpc", "echo@grpc")]}, tmp_path, env=env)
    try:
        trace_id = "9bf92f3577b34da6a3ce929d0e0e4741"
        body = {"model": "tr-grpc", "messages": MESSAGES}
        resp = httpx.post(proc.url + "/v1/chat/completions", json=body, headers=traceparent(trace_id))
        assert resp.status_code == 200
        spans = receiver.wait_for(trace_id, 2)
        assert receiver.paths[0] == "grpc:Export"
        server = next(s for s in spans if s.kind == Span.SPAN_KIND_SERVER)
        client = next(s for s in spans if s.kind == Span.SPAN_KIND_CLIENT)
        assert server.parent_span_id.hex() == CLIENT_SPAN and server.name == "POST /v1/chat/completions"
        assert client.parent_span_id == server.span_id and client.name == "chat tr-grpc"
        assert attributes(client)["manifold.deployment"] == "tr-grpc#0"
        sent = next(r for r in reversed(fake.requests) if r.behavior == "echo@grpc")
        assert sent.headers["traceparent"] == f"00-{trace_id}-{client.span_id.hex()}-01"
    finally:
        proc.stop()
        receiver.close()
