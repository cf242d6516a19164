"""Upstream HTTP shared by the HTTP backends: one keep-alive pool per deployment, timeouts, and the
mapping of every transport failure and upstream error status to Manifold's errors.

- upstream 4xx        → the same status, the upstream's message in OpenAI's envelope (429 keeps Retry-After);
- upstream 5xx        → 502 (the upstream's status and message kept in the text);
- refused / reset / cut → 502;
- any timeout         → 504.
Messages name the deployment by its public and upstream model, never its URL or key.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import msgspec

from manifold import _json
from manifold.api.sse import SSEDecoder, SSEEvent
from manifold.config import Deployment
from manifold.errors import BadGatewayError, GatewayTimeoutError, ManifoldError, UpstreamError
from manifold.observability import tracing
from manifold.providers.transport import ConnectError, ConnectionPool, HTTPResponse, TransportError

_PASSED_HEADERS = ("retry-after", "retry-after-ms")
_DEFAULT_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}


class UpstreamSession:
    """A keep-alive connection pool to one upstream (the origin of `api_base`), with the deployment's timeouts."""

    def __init__(self, deployment: Deployment, base_url: str | None = None) -> None:
        self.deployment = deployment
        t = deployment.timeouts
        base = base_url if base_url is not None else (deployment.api_base or "")
        parts = urlsplit(base)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.total_timeout = t.total
        self.stream_idle = t.stream_idle if t.stream_idle != t.first_byte else None
        # The read timeout bounds every silent gap: the wait for headers and, in a stream, between two reads.
        self._pool = ConnectionPool(
            base,
            limit=deployment.max_connections,
            connect_timeout=t.connect,
            read_timeout=t.first_byte,
        )

    @property
    def label(self) -> str:
        d = self.deployment
        return f"'{d.model_name}' (upstream model '{d.upstream_model}')"

    async def start(self) -> None:
        """Nothing to open ahead of time: connections are made on first use and kept alive."""

    async def aclose(self) -> None:
        await self._pool.aclose()

    def _target(self, url: str) -> str:
        if not url.startswith(self.origin):
            raise ValueError(f"{url!r} is not on this upstream's origin")
        return url[len(self.origin) :] or "/"

    async def send(
        self, method: str, url: str, *, data: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> HTTPResponse:
        """Send and wait for the response headers, whatever the status (transport failures are raised)."""
        if tracing.PROPAGATE:  # W3C traceparent of the attempt's span (docs/observability.md)
            headers = tracing.inject(headers)
        try:
            return await self._pool.request(method, self._target(url), headers or {}, data)
        except TransportError as exc:
            raise self.translate(exc) from None

    async def request(
        self, method: str, url: str, *, data: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> HTTPResponse:
        """Send and wait for the response headers; a non-2xx status is raised as a Manifold error."""
        resp = await self.send(method, url, data=data, headers=headers)
        if resp.status >= 400:
            raise self.error_for_status(resp.status, await self.read_error_body(resp), resp.headers)
        return resp

    def error_for_status(self, status: int, body: bytes, headers: Mapping[str, str]) -> ManifoldError:
        """The error for an upstream's non-2xx reply; backends whose errors have another shape override it."""
        return error_from_upstream(status, body, headers, self.label)

    async def read_error_body(self, resp: HTTPResponse) -> bytes:
        """The body of an error reply, or b"" when it cannot be read."""
        try:
            return await resp.read()
        except TransportError:
            return b""

    async def probe(self, url: str, headers: Mapping[str, str] | None = None, limit_s: float = 5.0) -> int | None:
        """The status of a GET, or None if the upstream does not answer HTTP at all."""
        try:
            async with asyncio.timeout(limit_s):
                resp = await self._pool.request("GET", self._target(url), headers or {})
                await resp.read()
        except (TransportError, TimeoutError):
            return None
        return resp.status

    async def read_json(self, resp: HTTPResponse) -> Any:
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

    def sse(self, resp: HTTPResponse) -> SSEStream:
        """The events of an SSE response, parsed as its bytes arrive."""
        return SSEStream(self, resp)

    async def iter_sse(self, resp: HTTPResponse) -> AsyncIterator[SSEEvent]:
        """Events of an SSE body; the connection is closed (not reused) if the consumer stops early."""
        events = SSEStream(self, resp)
        try:
            async for event in events:
                yield event
        finally:
            events.close()

    def translate(self, exc: BaseException, mid_stream: bool = False) -> BaseException:
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

    __slots__ = ("_deadline", "_decoder", "_events", "_finished", "_idle", "_resp", "_session")

    def __init__(self, session: UpstreamSession, resp: HTTPResponse) -> None:
        self._session = session
        self._resp = resp
        self._decoder = SSEDecoder()
        self._events: collections.deque[SSEEvent] = collections.deque()
        self._finished = False
        self._idle = session.stream_idle
        total = session.total_timeout
        self._deadline = None if total is None else asyncio.get_running_loop().time() + total

    def __aiter__(self) -> SSEStream:
        return self

    async def __anext__(self) -> SSEEvent:
        events = self._events
        while not events:
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
            events.extend(self._decoder.feed(chunk))
            if self._deadline is not None and asyncio.get_running_loop().time() > self._deadline:
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
