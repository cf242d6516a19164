"""GET /health (the process is alive) and GET /health/ready (every deployment's upstream is reachable and the
store is open)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from manifold import _json

if TYPE_CHECKING:
    from manifold.server.app import ManifoldApp
    from manifold.server.http import Request

_ALIVE = _json.encode({"status": "ok"})


async def alive(app: ManifoldApp, request: Request) -> None:
    await request.send_json(200, _ALIVE)


async def ready(app: ManifoldApp, request: Request) -> None:
    results, storage_state = await asyncio.gather(app.router.readiness(), app.store.ready())
    deployments = [
        {"model": p.deployment.model_name, "provider": p.deployment.provider, "ready": ok} for p, ok in results
    ]
    # A store that is still opening, cannot be opened (retried in the background) or stopped answering is not
    # ready: a load balancer should not send stored requests here only to get 503.
    storage_ready = storage_state == "open"
    all_ready = storage_ready and all(ok for _, ok in results)
    body = {
        "status": "ready" if all_ready else "unavailable",
        "deployments": deployments,
        "storage": {"ready": storage_ready, "state": storage_state},
    }
    await request.send_json(200 if all_ready else 503, _json.encode(body))
