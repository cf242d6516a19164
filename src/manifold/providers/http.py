"""Upstream HTTP shared by the HTTP backends: one pooled aiohttp session per deployment, timeouts, and the
mapping of every transport failure and upstream error status to Manifold's errors.

- upstream 4xx        → the same status, the upstream's message in OpenAI's envelope (429 keeps Retry-After);
- upstream 5xx        → 502 (the upstream's status and message kept in the text);
- refused / reset / cut → 502;
- any timeout         → 504.
Messages name the deployment by its public and upstream model, never its URL or key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import msgspec

from manifold import _json
from manifold.api.sse import SSEDecoder, SSEEvent
from manifold.config import Deployment
from manifold.errors import BadGatewayError, GatewayTimeoutError, ManifoldError, UpstreamError

_PASSED_HEADERS = ("retry-after", "retry-after-ms")
_DEFAULT_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}
_TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)


class UpstreamSession:
    """A keep-alive connection pool to one upstream, with the deployment's timeouts."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        t = deployment.timeouts
        # sock_read bounds every silent gap: the wait for headers and, in a stream, between two reads.
        self.timeout = aiohttp.ClientTimeout(total=t.total, sock_connect=t.connect, sock_read=t.first_byte)
        self._session: aiohttp.ClientSession | None = None

    @property
    def label(self) -> str:
        d = self.deployment
        return f"'{d.model_name}' (upstream model '{d.upstream_model}')"

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.deployment.max_connections,
            ttl_dns_cache=300,
            keepalive_timeout=75,
            enable_cleanup_closed=True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self.timeout, auto_decompress=True, skip_auto_headers=("User-Agent",)
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("UpstreamSession.start() was not awaited")
        return self._session

    async def request(
        self, method: str, url: str, *, data: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> aiohttp.ClientResponse:
        """Send and wait for the response headers; a non-2xx status is raised as a Manifold error."""
        try:
            resp = await self.session.request(method, url, data=data, headers=headers)
        except _TRANSPORT_ERRORS as exc:
            raise self.translate(exc) from None
        if resp.status >= 400:
            try:
                body = await resp.read()
            except (aiohttp.ClientError, TimeoutError):
                body = b""
            finally:
                resp.release()
            raise error_from_upstream(resp.status, body, resp.headers, self.label)
        return resp

    async def read_json(self, resp: aiohttp.ClientResponse) -> Any:
        try:
            body = await resp.read()
        except _TRANSPORT_ERRORS as exc:
            raise self.translate(exc) from None
        finally:
            resp.release()
        try:
            return _json.decode(body)
        except msgspec.DecodeError:
            raise BadGatewayError(f"The upstream for {self.label} returned malformed JSON.") from None

    async def iter_sse(self, resp: aiohttp.ClientResponse) -> AsyncIterator[SSEEvent]:
        """Events of an SSE body; the connection is closed (not reused) if the consumer stops early."""
        decoder = SSEDecoder()
        finished = False
        try:
            async for chunk in resp.content.iter_any():
                for event in decoder.feed(chunk):
                    yield event
            decoder.flush()
            finished = True
        except _TRANSPORT_ERRORS as exc:
            raise self.translate(exc, mid_stream=True) from None
        finally:
            if finished:
                resp.release()
            else:
                resp.close()

    def translate(self, exc: BaseException, mid_stream: bool = False) -> BaseException:
        if isinstance(exc, TimeoutError):  # aiohttp's ServerTimeoutError is a TimeoutError too
            what = "stopped sending" if mid_stream else "did not answer in time"
            return GatewayTimeoutError(f"The upstream for {self.label} {what}.")
        if isinstance(exc, aiohttp.ClientConnectorError):
            return BadGatewayError(f"Could not connect to the upstream for {self.label}.", code="upstream_unreachable")
        if isinstance(exc, aiohttp.ClientError | OSError):
            what = "cut the stream" if mid_stream else "closed the connection"
            return BadGatewayError(f"The upstream for {self.label} {what} ({type(exc).__name__}).")
        return exc


def error_from_upstream(status: int, body: bytes, headers: Mapping[str, str], label: str) -> ManifoldError:
    message, etype, param, code = _parse_error_body(body)
    if status >= 500:
        text = f"The upstream for {label} failed with status {status}"
        return BadGatewayError(text + (f": {message}" if message else "."), code="upstream_error")
    passed = {k: headers[k] for k in _PASSED_HEADERS if k in headers}
    return UpstreamError(
        status,
        message or f"The upstream for {label} answered with status {status}.",
        type=etype or _DEFAULT_TYPES.get(status, "invalid_request_error"),
        param=param,
        code=code,
        headers=passed,
    )


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
