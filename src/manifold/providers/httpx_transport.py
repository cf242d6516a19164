"""The httpx transport (`transport: httpx` on a deployment): HTTP/2 and whatever else the built-in HTTP/1.1
client does not do, at a higher CPU cost per request (bench/README.md). It needs the extra `manifold[httpx]`.

It keeps the built-in client's contract: the same `TransportError`s, the same limits (head size and count,
decoded body size), no redirects followed, a response not read to its end closes its stream. httpx re-sends
nothing once a request was written, so `resends` stays 0.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from manifold.providers.transport import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_HEADERS,
    ConnectError,
    ConnectTimeout,
    Disconnected,
    InvalidHeader,
    PoolTimeout,
    ProtocolError,
    ReadTimeout,
    ResponseTooLarge,
    TransportError,
    header_problem,
)


def _translate(exc: httpx.HTTPError) -> TransportError:
    if isinstance(exc, httpx.PoolTimeout):
        return PoolTimeout("no connection of the pool freed up in time")
    if isinstance(exc, httpx.ConnectTimeout):
        return ConnectTimeout("connecting took too long")
    if isinstance(exc, httpx.TimeoutException):
        return ReadTimeout("the upstream stopped sending")
    if isinstance(exc, httpx.ConnectError):
        return ConnectError(str(exc) or type(exc).__name__)
    if isinstance(exc, httpx.RemoteProtocolError):
        return Disconnected(str(exc) or "the upstream broke the protocol or the connection")
    if isinstance(exc, httpx.ReadError | httpx.WriteError | httpx.CloseError):
        return Disconnected(str(exc) or "the connection broke")
    return ProtocolError(str(exc) or type(exc).__name__)


class HttpxResponse:
    """An httpx streamed response behind the `Response` interface."""

    __slots__ = ("_body", "_done", "_limit", "_received", "_resp", "headers", "read_timeout", "resends", "status")

    def __init__(self, resp: httpx.Response, max_body_bytes: int) -> None:
        self._resp = resp
        self.status = resp.status_code
        self.headers: dict[str, str] = {}
        for name, value in resp.headers.multi_items():
            previous = self.headers.get(name)
            self.headers[name] = value if previous is None else f"{previous}, {value}"
        self.read_timeout: float | None = None
        self.resends = 0
        self._body: AsyncIterator[bytes] = resp.aiter_bytes()
        self._done = False
        self._received = 0
        self._limit = max_body_bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()

    @property
    def has_buffered(self) -> bool:
        return False  # httpx does not say; the server then writes event by event

    @property
    def complete(self) -> bool:
        return self._done

    async def next_chunk(self) -> bytes | None:
        while True:
            try:
                if self.read_timeout is None:
                    chunk = await anext(self._body)
                else:
                    async with asyncio.timeout(self.read_timeout):
                        chunk = await anext(self._body)
            except StopAsyncIteration:
                self._done = True
                await self._resp.aclose()
                return None
            except TimeoutError:
                self.close()
                raise ReadTimeout("the upstream stopped sending") from None
            except httpx.HTTPError as exc:
                self.close()
                raise _translate(exc) from None
            except BaseException:
                self.close()
                raise
            if not chunk:
                continue
            self._received += len(chunk)
            if self._received > self._limit:
                self.close()
                raise ResponseTooLarge(f"a response body larger than {self._limit} bytes (limits.max_body_bytes)")
            return chunk

    async def read(self) -> bytes:
        parts = []
        while (chunk := await self.next_chunk()) is not None:
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        self.close()

    def close(self) -> None:
        if not self._resp.is_closed:
            # Closing the stream (not reading it to its end) resets an HTTP/2 stream or drops an HTTP/1.1
            # connection: that is what cancels the upstream's work.
            asyncio.get_running_loop().create_task(self._resp.aclose())


class HttpxTransport:
    def __init__(
        self,
        base_url: str,
        *,
        limit: int = 256,
        connect_timeout: float = 10.0,
        read_timeout: float = 600.0,
        pool_timeout: float | None = None,
        ssl_context: ssl.SSLContext | None = None,
        proxy: str | None = None,
        http2: bool = True,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_headers: int = DEFAULT_MAX_HEADERS,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        parts = httpx.URL(base_url)
        self.origin = f"{parts.scheme}://{parts.netloc.decode('ascii')}"
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.max_body_bytes = max_body_bytes
        verify: Any = ssl_context if ssl_context is not None else True
        self._client = httpx.AsyncClient(
            http2=http2,
            verify=verify,
            proxy=proxy,
            trust_env=False,  # the proxy was already chosen from the deployment and the environment
            follow_redirects=False,
            timeout=httpx.Timeout(connect=connect_timeout, read=read_timeout, write=read_timeout, pool=pool_timeout),
            limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
        )

    async def request(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes | None = None
    ) -> HttpxResponse:
        for name, value in headers.items():
            why = header_problem(name, value)
            if why is not None:
                raise InvalidHeader(name, why)
        request = self._client.build_request(method, self.origin + target, headers=headers, content=body)
        try:
            resp = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise _translate(exc) from None
        response = HttpxResponse(resp, self.max_body_bytes)
        size = sum(len(k) + len(v) + 4 for k, v in resp.headers.raw)
        problem = None
        if len(resp.headers.raw) > self.max_headers:
            problem = f"more than {self.max_headers} response headers (limits.max_headers)"
        elif size > self.max_header_bytes:
            problem = f"response headers larger than {self.max_header_bytes} bytes (limits.max_header_bytes)"
        if problem is not None:
            await resp.aclose()
            raise ResponseTooLarge(problem)
        return response

    async def aclose(self) -> None:
        await self._client.aclose()
