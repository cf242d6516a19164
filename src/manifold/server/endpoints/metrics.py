"""GET /metrics (`metrics.path`): Prometheus text, or OpenMetrics when the scraper asks for it."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from manifold.observability.metrics import render, serve_http

if TYPE_CHECKING:
    from manifold.server.asgi import Request
    from manifold.server.services import Services

log = logging.getLogger("manifold.metrics")
_served_ports: set[int] = set()
_lock = threading.Lock()


async def scrape(services: Services, request: Request) -> None:
    accept = request.header(b"accept")
    body, content_type = render(accept.decode("latin-1") if accept else "")
    headers = [
        (b"content-type", content_type.encode("latin-1")),
        (b"content-length", str(len(body)).encode()),
    ]
    await request.send({"type": "http.response.start", "status": 200, "headers": headers})
    await request.send({"type": "http.response.body", "body": body})


def serve_on_port(port: int, host: str, path: str) -> None:
    """`metrics.port`: the scrape endpoint on a port of its own, in a thread (once per process)."""
    with _lock:
        if port in _served_ports:
            return
        _served_ports.add(port)
    serve_http(port, host, path)
    log.info("metrics on http://%s:%d%s", host, port, path)
