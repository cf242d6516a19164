"""GET /health (the process is alive) and GET /health/ready: 503 while some model has no deployment that can
serve (its upstream unreachable, or its circuit breaker open) or the store is not open. `?detail=1` adds each
deployment's state."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from manifold import _json

if TYPE_CHECKING:
    from manifold.server.asgi import Request
    from manifold.server.services import Services

_ALIVE = _json.encode({"status": "ok"})


async def alive(services: Services, request: Request) -> None:
    await request.send_json(200, _ALIVE)


async def ready(services: Services, request: Request) -> None:
    detail = b"detail=1" in request.query_string or b"detail=true" in request.query_string
    results, storage_state = await asyncio.gather(services.router.readiness(), services.store.ready())
    reachable = {id(p): ok for p, ok in results}
    deployments: list[dict[str, Any]] = []
    unservable: list[str] = []
    now = time.monotonic()
    for name, group in services.router.groups.items():
        can_serve = False
        for member in group.members:
            breaker = member.breaker
            ok = reachable.get(id(member.provider), False)
            can_serve = can_serve or (ok and breaker.available(now))
            entry: dict[str, Any] = {"model": name, "provider": member.provider.deployment.provider, "ready": ok}
            if detail:
                limit = member.limit
                entry["deployment"] = member.label
                entry["breaker"] = ("half_open" if breaker.probing else "open") if breaker.open_until else "closed"
                entry["in_flight"] = limit.in_flight
                entry["queued"] = len(limit.waiters)
                entry["max_concurrency"] = limit.limit
                entry["latency_ms"] = None if member.latency is None else round(member.latency * 1000, 3)
                entry["ttft_ms"] = None if member.ttft is None else round(member.ttft * 1000, 3)
            deployments.append(entry)
        if not can_serve:
            unservable.append(name)
    # A store that is still opening, cannot be opened (retried in the background) or stopped answering is not
    # ready: a load balancer should not send stored requests here only to get 503.
    storage_ready = storage_state == "open"
    all_ready = storage_ready and not unservable
    body: dict[str, Any] = {
        "status": "ready" if all_ready else "unavailable",
        "deployments": deployments,
        "storage": {"ready": storage_ready, "state": storage_state},
    }
    if unservable:
        body["unavailable_models"] = unservable
    if detail and services.mcp is not None and services.mcp.servers:
        body["mcp_servers"] = services.mcp.readiness()  # informative: the gateway serves without them
    await request.send_json(200 if all_ready else 503, _json.encode(body))
