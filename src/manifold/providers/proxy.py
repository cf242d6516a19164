"""HTTP proxies for upstream calls: which proxy a deployment uses, and CONNECT tunnels through it.

A deployment's `proxy:` is a URL (`http://user:pass@proxy.corp:3128`), `false` (never a proxy, whatever the
environment says), or absent: then `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY` (or their lower-case forms) decide,
as curl and the official SDKs read them. Plain `http` upstreams are reached by sending the whole URL to the
proxy; `https` upstreams through a CONNECT tunnel, inside which TLS runs end to end to the upstream.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import socket
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit


class TunnelRefused(Exception):
    """The proxy did not open a CONNECT tunnel (its status is in the message; never its credentials)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Proxy:
    host: str
    port: int
    authorization: str | None  # the `Proxy-Authorization` value (Basic), from the URL's user info

    @classmethod
    def parse(cls, url: str) -> Proxy:
        """An `http://[user:pass@]host[:port]` proxy URL; ValueError for anything else."""
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("a proxy must be an http:// URL (http://host:port)")
        try:
            port = parts.port or 80
        except ValueError:
            raise ValueError("the proxy URL has an invalid port") from None
        auth = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            auth = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        return cls(parts.hostname, port, auth)


def choose(setting: str | bool | None, url: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The proxy URL for requests to `url`: the deployment's own, none, or the environment's."""
    if setting is False:
        return None
    if isinstance(setting, str):
        return setting
    env = os.environ if environ is None else environ
    parts = urlsplit(url)
    scheme = parts.scheme
    found = env.get(f"{scheme}_proxy") or env.get(f"{scheme.upper()}_PROXY")
    if not found:
        return None
    no_proxy = env.get("no_proxy") or env.get("NO_PROXY") or ""
    host = parts.hostname or ""
    # The standard library's own NO_PROXY matching (suffixes, `*`, host:port), as `requests` uses it; imported
    # only here: urllib.request pulls in much of the standard library.
    from urllib import request as urllib_request

    bypass: Any = getattr(urllib_request, "proxy_bypass_environment")  # noqa: B009 (not in the stubs)
    if no_proxy and bypass(host, {"no": no_proxy}):
        return None
    return found


async def open_tunnel(
    loop: asyncio.AbstractEventLoop, proxy: Proxy, host: str, port: int, max_head_bytes: int
) -> socket.socket:
    """A connected socket through which `host:port` is reached (CONNECT); TLS is the caller's next step."""
    infos = await loop.getaddrinfo(proxy.host, proxy.port, type=socket.SOCK_STREAM)
    error: OSError | None = None
    sock: socket.socket | None = None
    for family, type_, proto, _, address in infos:
        candidate = socket.socket(family, type_, proto)
        candidate.setblocking(False)
        try:
            await loop.sock_connect(candidate, address)
        except OSError as exc:
            candidate.close()
            error = exc
            continue
        sock = candidate
        break
    if sock is None:
        raise error or OSError(f"cannot resolve the proxy {proxy.host!r}")
    try:
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        head = f"CONNECT {authority} HTTP/1.1\r\nhost: {authority}\r\n"
        if proxy.authorization:
            head += f"proxy-authorization: {proxy.authorization}\r\n"
        await loop.sock_sendall(sock, (head + "\r\n").encode("latin-1"))
        received = b""
        while b"\r\n\r\n" not in received:
            # The proxy says nothing after its answer until we speak, so reading past the head cannot happen
            # with a proxy that follows the protocol; one that does is refused below.
            data = await loop.sock_recv(sock, 4096)
            if not data:
                raise TunnelRefused("the proxy closed the connection instead of opening a tunnel")
            received += data
            if len(received) > max_head_bytes:
                raise TunnelRefused("the proxy's answer to CONNECT is too large")
        status_line, _, _ = received.partition(b"\r\n")
        fields = status_line.split(b" ", 2)
        status = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0
        if not 200 <= status < 300:
            raise TunnelRefused(f"the proxy refused the tunnel with status {status or 'unknown'}")
        if not received.endswith(b"\r\n\r\n"):
            raise TunnelRefused("the proxy sent bytes after its answer to CONNECT")
    except BaseException:
        sock.close()
        raise
    return sock
