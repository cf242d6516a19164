"""Upstream HTTP shared by the HTTP backends: one keep-alive pool per deployment, timeouts, and the
mapping of every transport failure and upstream error status to Manifold's errors.

- upstream 4xx        → the same status, the upstream's message in OpenAI's envelope (429 keeps Retry-After);
- upstream 5xx        → 502 (the upstream's status and message kept in the text);
- any other status but 200 (a redirect, 201, 204, …) → 502 naming it: nothing follows redirects;
- refused / reset / cut, a response past a size limit → 502 naming the cause;
- any timeout         → 504;
- no pooled connection free in time → 429 with Retry-After, like a deployment at its concurrency limit;
- a request header that cannot be sent (CR/LF, not latin-1) → 400 naming the header.
Messages name the deployment by its public and upstream model, never its URL or key.

The session talks to a `Transport` (providers/transport.py): the built-in HTTP/1.1 client by default, httpx
with `transport: httpx` (HTTP/2), or whatever a test hands in.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import email.utils
import math
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec

from manifold import _json
from manifold.api.sse_decoder import SSEDecoder, SSEEvent, SSELineTooLong
from manifold.config import UpstreamDeployment
from manifold.errors import (
    BadGatewayError,
    GatewayTimeoutError,
    InvalidRequestError,
    ManifoldError,
    RateLimitError,
    UpstreamError,
)
from manifold.observability import tracing
from manifold.providers import proxy as proxies
from manifold.providers.transport import (
    ConnectError,
    ConnectionPool,
    InvalidHeader,
    PoolTimeout,
    Response,
    ResponseTooLarge,
    Transport,
    TransportError,
    tls_context,
)

if TYPE_CHECKING:
    from manifold.providers.httpx_transport import HttpxTransport

_PASSED_HEADERS = ("retry-after", "retry-after-ms")
# Every OpenAI operation answers 200; another 2xx (201, 202, 204, 206…) is not the answer the client asked for.
_ANSWER_STATUSES = frozenset({200})
# Requests sent again by a transport (a reused connection that provably did not deliver them), counted for the
# request running in this context: the router adds them to `x-manifold-attempts`.
_resends: contextvars.ContextVar[int] = contextvars.ContextVar("manifold_upstream_resends", default=0)


def take_resends() -> int:
    """How many requests of the current request's context went out again since the last call (then 0)."""
    n = _resends.get()
    if n:
        _resends.set(0)
    return n


def open_transport(deployment: UpstreamDeployment, base_url: str) -> Transport:
    """The transport a deployment asks for, with its timeouts, limits, proxy and TLS options."""
    t = deployment.timeouts
    limits = deployment.limits
    tls = deployment.tls
    context = None
    if base_url.startswith("https:") and (tls.ca_file or tls.cert_file or not tls.verify):
        context = tls_context(ca_file=tls.ca_file, cert_file=tls.cert_file, key_file=tls.key_file, verify=tls.verify)
    transport_class: type[ConnectionPool] | type[HttpxTransport] = ConnectionPool
    if deployment.transport == "httpx":
        from manifold.providers.httpx_transport import HttpxTransport

        transport_class = HttpxTransport
    # The read timeout bounds every silent gap: the wait for headers and, in a stream, between two reads.
    return transport_class(
        base_url,
        limit=deployment.max_connections,
        connect_timeout=t.connect,
        read_timeout=t.first_byte,
        pool_timeout=t.pool,
        ssl_context=context,
        proxy=proxies.choose(deployment.proxy, base_url),
        max_header_bytes=limits.max_header_bytes,
        max_headers=limits.max_headers,
        max_body_bytes=limits.max_body_bytes,
    )


_DEFAULT_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}


class UpstreamSession:
    """A keep-alive connection pool to one upstream (the origin of `api_base`), with the deployment's timeouts."""

    def __init__(
        self, deployment: UpstreamDeployment, base_url: str | None = None, transport: Transport | None = None
    ) -> None:
        self.deployment = deployment
        t = deployment.timeouts
        base = base_url if base_url is not None else (deployment.api_base or "")
        parts = urlsplit(base)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.total_timeout = t.total
        self.stream_idle = t.stream_idle if t.stream_idle != t.first_byte else None
        self.max_sse_line_bytes = deployment.limits.max_sse_line_bytes
        self.transport = transport if transport is not None else open_transport(deployment, base)

    @property
    def label(self) -> str:
        d = self.deployment
        return f"'{d.model_name}' (upstream model '{d.upstream_model}')"

    async def start(self) -> None:
        """Nothing to open ahead of time: connections are made on first use and kept alive."""

    async def aclose(self) -> None:
        await self.transport.aclose()

    def _target(self, url: str) -> str:
        if not url.startswith(self.origin):
            raise ValueError(f"{url!r} is not on this upstream's origin")
        return url[len(self.origin) :] or "/"

    async def send(
        self, method: str, url: str, *, data: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> Response:
        """Send and wait for the response headers: an answer (200) or an error status (>= 400) is
        returned; anything else (a redirect, 204, …) and transport failures are raised."""
        if tracing.PROPAGATE:  # W3C traceparent of the attempt's span (docs/observability.md)
            headers = tracing.inject(headers)
        try:
            resp = await self.transport.request(method, self._target(url), headers or {}, data)
        except TransportError as exc:
            raise self.translate(exc) from None
        except InvalidHeader as exc:
            raise InvalidRequestError(
                f"The header {exc.name!r} cannot be sent upstream: {str(exc).split(': ', 1)[-1]}.",
                param=exc.name,
                code="invalid_header",
            ) from None
        if resp.resends:
            _resends.set(_resends.get() + resp.resends)
        status = resp.status
        if status not in _ANSWER_STATUSES and status < 400:
            resp.close()
            raise self.unexpected_status(status)
        return resp

    def unexpected_status(self, status: int) -> BadGatewayError:
        if 300 <= status < 400:
            text = (
                f"The upstream for {self.label} answered with a redirect (status {status}); Manifold does not "
                "follow redirects: point the deployment's api_base at the final URL."
            )
        else:
            text = f"The upstream for {self.label} answered with status {status}, which carries no answer."
        error = BadGatewayError(text, code="upstream_unexpected_status")
        error.upstream_status = status
        return error

    async def request(
        self, method: str, url: str, *, data: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> Response:
        """Send and wait for the response headers; a status that is not an answer is raised as a Manifold error."""
        resp = await self.send(method, url, data=data, headers=headers)
        if resp.status >= 400:
            raise self.error_for_status(resp.status, await self.read_error_body(resp), resp.headers)
        return resp

    def error_for_status(self, status: int, body: bytes, headers: Mapping[str, str]) -> ManifoldError:
        """The error for an upstream's non-2xx reply; backends whose errors have another shape override it."""
        return error_from_upstream(status, body, headers, self.label)

    async def read_error_body(self, resp: Response) -> bytes:
        """The body of an error reply, or b"" when it cannot be read."""
        try:
            return await resp.read()
        except TransportError:
            return b""

    async def probe(self, url: str, headers: Mapping[str, str] | None = None, limit_s: float = 5.0) -> int | None:
        """The status of a GET, or None if the upstream does not answer HTTP at all."""
        try:
            async with asyncio.timeout(limit_s):
                resp = await self.transport.request("GET", self._target(url), headers or {})
                await resp.read()
        except (TransportError, TimeoutError, InvalidHeader):
            return None
        return resp.status

    async def read_json(self, resp: Response) -> Any:
        try:
            body = await resp.read()
        except TransportError as exc:
            raise self.translate(exc) from None
        try:
            return _json.decode(body)
        except msgspec.DecodeError:
            raise BadGatewayError(f"The upstream for {self.label} returned malformed JSON.") from None

    async def post_json(self, url: str, body: bytes, headers: Mapping[str, str]) -> Any:
        """POST and decode the JSON answer, within the deployment's total timeout."""
        if self.total_timeout is None:
            return await self.read_json(await self.request("POST", url, data=body, headers=headers))
        try:
            async with asyncio.timeout(self.total_timeout):
                return await self.read_json(await self.request("POST", url, data=body, headers=headers))
        except TimeoutError:
            raise GatewayTimeoutError(f"The upstream for {self.label} did not finish in time.") from None

    def sse(self, resp: Response) -> SSEStream:
        """The events of an SSE response, parsed as its bytes arrive."""
        return SSEStream(self, resp)

    async def iter_sse(self, resp: Response) -> AsyncIterator[SSEEvent]:
        """Events of an SSE body; the connection is closed (not reused) if the consumer stops early."""
        events = SSEStream(self, resp)
        try:
            async for event in events:
                yield event
        finally:
            events.close()

    def translate(self, exc: BaseException, mid_stream: bool = False) -> BaseException:
        if isinstance(exc, PoolTimeout):
            wait = max(1, math.ceil(min(self.deployment.timeouts.pool, 60.0)))
            return RateLimitError(
                f"The deployment {self.label} has all its {self.deployment.max_connections} upstream connections "
                f"busy and none freed up within {self.deployment.timeouts.pool:g} s; please retry shortly.",
                code="concurrency_limit_exceeded",
                headers={"retry-after": str(wait)},
            )
        if isinstance(exc, ResponseTooLarge):
            return BadGatewayError(f"The upstream for {self.label} sent {exc}.", code="upstream_response_too_large")
        if isinstance(exc, TimeoutError):  # ConnectTimeout and ReadTimeout are TimeoutErrors too
            what = "stopped sending" if mid_stream else "did not answer in time"
            return GatewayTimeoutError(f"The upstream for {self.label} {what}.")
        if isinstance(exc, ConnectError):
            return BadGatewayError(f"Could not connect to the upstream for {self.label}.", code="upstream_unreachable")
        if isinstance(exc, TransportError):
            what = "cut the stream" if mid_stream else "closed the connection"
            return BadGatewayError(f"The upstream for {self.label} {what} ({type(exc).__name__}).")
        return exc


class SSEStream:
    """An async iterator of the SSE events of one upstream response.

    `buffered()` says whether the next event has already arrived, so the server can send everything that came
    in one read as one write instead of one write per event.
    """

    __slots__ = ("_deadline", "_decoder", "_error", "_events", "_finished", "_idle", "_resp", "_session")

    def __init__(self, session: UpstreamSession, resp: Response) -> None:
        self._session = session
        self._resp = resp
        self._decoder = SSEDecoder(session.max_sse_line_bytes)
        self._events: collections.deque[SSEEvent] = collections.deque()
        self._finished = False
        self._error: BadGatewayError | None = None
        self._idle = session.stream_idle
        total = session.total_timeout
        # time.monotonic, not the loop's clock: `asyncio.get_running_loop()` is a getpid system call on
        # CPython 3.11, and this is checked after every chunk.
        self._deadline = None if total is None else time.monotonic() + total

    def __aiter__(self) -> SSEStream:
        return self

    async def __anext__(self) -> SSEEvent:
        events = self._events
        while not events:
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            if self._finished:
                raise StopAsyncIteration
            try:
                chunk = await self._resp.next_chunk()
            except TransportError as exc:
                raise self._session.translate(exc, mid_stream=True) from None
            if chunk is None:
                self._finished = True
                self._decoder.flush()
                continue
            if self._idle is not None:
                # The body has begun: from now on `stream_idle`, not `first_byte`, bounds each silence.
                self._resp.read_timeout = self._idle
                self._idle = None
            try:
                events.extend(self._decoder.feed(chunk))
            except SSELineTooLong as exc:
                self.close()
                error = BadGatewayError(
                    f"The upstream for {self._session.label} sent {exc} (limits.max_sse_line_bytes).",
                    code="upstream_response_too_large",
                )
                if not exc.events:
                    raise error from None
                # The events before the overlong line were whole: they go out first, the error after them.
                events.extend(exc.events)
                self._error = error
                self._finished = True
            if self._deadline is not None and time.monotonic() > self._deadline:
                self.close()
                raise GatewayTimeoutError(f"The upstream for {self._session.label} did not finish in time.")
        return events.popleft()

    def buffered(self) -> bool:
        return bool(self._events) or self._resp.has_buffered

    @property
    def complete(self) -> bool:
        """The whole HTTP body was received (the connection can be reused)."""
        return self._resp.complete and not self._resp.has_buffered

    def close(self) -> None:
        """Stop reading: a fully received response returns its connection to the pool, any other is closed."""
        if self._resp.complete and not self._resp.has_buffered:
            self._resp.release()
        else:
            self._resp.close()


def error_from_upstream(status: int, body: bytes, headers: Mapping[str, str], label: str) -> ManifoldError:
    message, etype, param, code = _parse_error_body(body)
    error: ManifoldError
    if status >= 500:
        text = f"The upstream for {label} failed with status {status}"
        error = BadGatewayError(text + (f": {message}" if message else "."), code="upstream_error")
    else:
        passed = {k: headers[k] for k in _PASSED_HEADERS if k in headers}
        error = UpstreamError(
            status,
            message or f"The upstream for {label} answered with status {status}.",
            type=etype or _DEFAULT_TYPES.get(status, "invalid_request_error"),
            param=param,
            code=code,
            headers=passed,
        )
    error.upstream_status = status
    error.retry_after = retry_after_seconds(headers)
    return error


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The wait an upstream asked for: `retry-after-ms` (OpenAI, Azure), else `Retry-After` in seconds or as an
    HTTP date. None when absent or unreadable. Header names are lower-case (the transport's)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            value = float(ms) / 1000.0
        except ValueError:
            value = -1.0
        if 0 <= value < float("inf"):
            return value
    text = headers.get("retry-after")
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        return max(0.0, when.timestamp() - time.time())
    return seconds if 0 <= seconds < float("inf") else None


def _parse_error_body(body: bytes) -> tuple[str | None, str | None, str | None, str | None]:
    try:
        data = _json.decode(body) if body else None
    except msgspec.DecodeError:
        text = body.decode("utf-8", "replace").strip()
        return (text[:1000] or None), None, None, None
    err: Any = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(err, str):
        return err, None, None, None
    if isinstance(err, dict):
        message = err.get("message") or err.get("detail") or err.get("msg")
        if not isinstance(message, str):
            message = _json.dumps_text(message) if message is not None else None
        code = err.get("code")
        return (
            message,
            err.get("type") if isinstance(err.get("type"), str) else None,
            err.get("param") if isinstance(err.get("param"), str) else None,
            str(code) if code is not None else None,
        )
    return None, None, None, None
