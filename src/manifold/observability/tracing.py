"""OpenTelemetry traces: a server span per request, a GenAI client span per upstream attempt, W3C `traceparent`
in and out (docs/observability.md).

The OpenTelemetry SDK and its OTLP exporters are the `[otel]` extra, imported only when tracing is on. It is
configured the standard way, by the `OTEL_*` environment variables: `OTEL_EXPORTER_OTLP_ENDPOINT` /
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, the default, or `grpc`),
`OTEL_TRACES_SAMPLER`, `OTEL_SERVICE_NAME`, …

Layout::

    POST /v1/chat/completions        (server span; parent: the client's traceparent)
    └── chat gpt-4o                  (client span per attempt: gen_ai.*, manifold.deployment, manifold.retry)
        → upstream request carries traceparent = this span
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any, Final

from manifold import _json
from manifold.observability.record import RequestRecord
from manifold.observability.redaction import Redactor, add_secrets

__all__ = ["PROPAGATE", "StreamCapture", "Tracing", "inject", "requested_by_env", "setup"]

log = logging.getLogger("manifold.tracing")

# Read by the upstream HTTP client on every request: one module attribute test while tracing is off.
PROPAGATE = False
_TRACING: Tracing | None = None
_SERVICE: Final = "manifold"


def requested_by_env(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the `OTEL_*` variables ask for traces (an OTLP endpoint, or an explicit traces exporter)."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(exporter or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


class Tracing:
    """The tracer and the helpers the server and the router call; made by `setup`."""

    def __init__(self, capture_content: bool, provider: Any = None, redact: Redactor | None = None) -> None:
        from opentelemetry import context, propagate, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self._trace = trace
        self._context = context
        self._propagate = propagate
        self._kind_server = SpanKind.SERVER
        self._kind_client = SpanKind.CLIENT
        self._status_error = Status(StatusCode.ERROR)
        self.capture_content = capture_content
        self.redact = redact if redact is not None else Redactor()
        self.provider = provider if provider is not None else _sdk_provider()
        self.tracer = self.provider.get_tracer("manifold")

    # -- server spans ----------------------------------------------------------------------------------------

    def start_server_span(self, rec: RequestRecord, scope: Mapping[str, Any]) -> None:
        carrier: dict[str, str] = {}
        for name, value in scope["headers"]:
            if name == b"traceparent" or name == b"tracestate":
                carrier[name.decode()] = value.decode("latin-1")
        parent = self._propagate.extract(carrier) if carrier else None
        span = self.tracer.start_span(
            rec.method,  # renamed `METHOD /route` at the end, once the route is known
            context=parent,
            kind=self._kind_server,
            attributes={"http.request.method": rec.method, "url.path": scope["path"]},
        )
        rec.span = span
        rec.trace_id = format(span.get_span_context().trace_id, "032x")
        rec.span_token = self._context.attach(self._trace.set_span_in_context(span))

    def end_server_span(self, rec: RequestRecord) -> None:
        span: Any = rec.span
        route = rec.route
        if route is not None:
            span.update_name(f"{rec.method} {route}")
            span.set_attribute("http.route", route)
        span.set_attribute("http.response.status_code", rec.status)
        if rec.request_id is not None:
            span.set_attribute("manifold.request_id", rec.request_id)
        if rec.model is not None:
            span.set_attribute("gen_ai.request.model", rec.model)
        if rec.status >= 500:
            span.set_status(self._status_error)
            span.set_attribute("error.type", rec.error_type or str(rec.status))
        token: Any = rec.span_token
        if token is not None:
            rec.span_token = None
            self._context.detach(token)
        span.end()

    # -- client spans (one per upstream attempt) -----------------------------------------------------------

    def start_attempt(
        self, operation: str, request_model: str, provider: str, deployment: str, retry: int, body: Any = None
    ) -> Any:
        span = self.tracer.start_span(
            f"{operation} {request_model}",
            kind=self._kind_client,
            attributes={
                "gen_ai.operation.name": operation,
                "gen_ai.provider.name": provider,
                "gen_ai.request.model": request_model,
                "manifold.deployment": deployment,
                "manifold.retry": retry,
            },
        )
        if self.capture_content and isinstance(body, dict):
            content = body.get("messages", body.get("prompt", body.get("input")))
            if content is not None:
                span.set_attribute("gen_ai.input.messages", self._content(content))
        token = self._context.attach(self._trace.set_span_in_context(span))
        return span, token

    def _content(self, value: Any) -> str:
        try:
            text = _json.encode(value).decode()
        except (TypeError, ValueError):
            text = repr(value)
        return self.redact(text)

    def detach(self, token: Any) -> None:
        self._context.detach(token)

    def end_attempt(
        self, span: Any, usage: object, error_type: str | None, response_model: str | None, result: Any = None
    ) -> None:
        if self.capture_content and isinstance(result, dict) and "choices" in result:
            span.set_attribute("gen_ai.output.messages", self._content(result["choices"]))
        if response_model:
            span.set_attribute("gen_ai.response.model", response_model)
        if isinstance(usage, dict):
            given = usage.get("prompt_tokens", usage.get("input_tokens"))
            made = usage.get("completion_tokens", usage.get("output_tokens"))
            if isinstance(given, int):
                span.set_attribute("gen_ai.usage.input_tokens", given)
            if isinstance(made, int):
                span.set_attribute("gen_ai.usage.output_tokens", made)
        if error_type is not None:
            span.set_status(self._status_error)
            span.set_attribute("error.type", error_type)
        span.end()

    def capture_stream(self, span: Any) -> StreamCapture | None:
        """A collector of a streamed answer's content for `end_attempt`, when content is captured."""
        return StreamCapture() if self.capture_content and span is not None else None

    def inject(self, headers: Mapping[str, str]) -> Mapping[str, str]:
        carrier = dict(headers)
        self._propagate.inject(carrier)
        return carrier

    def shutdown(self) -> None:
        self.provider.shutdown()


class StreamCapture:
    """A streamed answer's content, put back together from its chunks (only while content capture is on): the
    choices as a non-streamed answer has them, so that a streamed attempt's `gen_ai.output.messages` reads as a
    non-streamed one's. Chat chunks (`delta`: content, refusal, tool calls) and legacy completion chunks (`text`)."""

    __slots__ = ("_choices",)

    def __init__(self) -> None:
        self._choices: dict[int, dict[str, Any]] = {}

    def add(self, chunk: Any) -> None:
        choices = chunk.get("choices") if isinstance(chunk, dict) else None
        if not isinstance(choices, list):
            return
        for part in choices:
            if not isinstance(part, dict):
                continue
            index = part.get("index", 0)
            choice = self._choices.get(index)
            if choice is None:
                choice = self._choices[index] = {"index": index}
            reason = part.get("finish_reason")
            if reason is not None:
                choice["finish_reason"] = reason
            text = part.get("text")
            if isinstance(text, str):
                choice["text"] = choice.get("text", "") + text
            delta = part.get("delta")
            if isinstance(delta, dict):
                self._add_delta(choice.setdefault("message", {}), delta)

    @staticmethod
    def _add_delta(message: dict[str, Any], delta: dict[str, Any]) -> None:
        for name, value in delta.items():
            if name == "tool_calls" and isinstance(value, list):
                calls: list[dict[str, Any]] = message.setdefault("tool_calls", [])
                for piece in value:
                    if not isinstance(piece, dict):
                        continue
                    at = piece.get("index", len(calls))
                    while len(calls) <= at:
                        calls.append({"function": {"name": "", "arguments": ""}})
                    call = calls[at]
                    for key in ("id", "type"):
                        if piece.get(key) is not None:
                            call[key] = piece[key]
                    function = piece.get("function")
                    if isinstance(function, dict):
                        for key in ("name", "arguments"):
                            if isinstance(function.get(key), str):
                                call["function"][key] += function[key]
            elif isinstance(value, str) and name != "role":
                message[name] = message.get(name, "") + value
            elif value is not None:
                message[name] = value

    def result(self) -> dict[str, Any]:
        """The answer as `end_attempt` reads it: `{"choices": [...]}`."""
        return {"choices": [self._choices[i] for i in sorted(self._choices)]}


def _sdk_provider() -> Any:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", _SERVICE)})
    provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER
    provider.add_span_processor(BatchSpanProcessor(_exporter()))
    return provider


def _exporter() -> Any:
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
    ).strip()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


class TracingUnavailable(Exception):
    """Tracing was asked for but the `[otel]` extra is not installed."""


def setup(enabled: bool | None, capture_content: bool, secrets: Iterable[str] = ()) -> Tracing | None:
    """The process's tracing, or None when it is off. `enabled` None: on when the `OTEL_*` variables ask."""
    global PROPAGATE, _TRACING
    if enabled is None:
        enabled = requested_by_env()
    if not enabled:
        return None
    if _TRACING is None:
        try:
            _TRACING = Tracing(capture_content, redact=add_secrets(secrets))
        except ImportError as exc:
            raise TracingUnavailable(
                f"tracing is on but OpenTelemetry is not installed ({exc.name}): pip install 'manifold[otel]'"
            ) from None
    PROPAGATE = True
    return _TRACING


def inject(headers: Mapping[str, str] | None) -> Mapping[str, str]:
    """`headers` plus `traceparent` of the active span (the upstream HTTP client calls this when PROPAGATE)."""
    tracing = _TRACING
    if tracing is None:
        return headers or {}
    return tracing.inject(headers or {})
