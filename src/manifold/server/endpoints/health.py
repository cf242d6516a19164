"""GET /health (the process is alive) and GET /health/ready (every deployment's upstream is reachable)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from manifold import _json

if TYPE_CHECKING:
    from manifold.server.app import ManifoldApp
    from manifold.server.http import Request

_ALIVE = _json.encode({"status": "ok"})


async def alive(app: ManifoldApp, request: Request) -> None:
    await request.send_json(200, _ALIVE)


async def ready(app: ManifoldApp, request: Request) -> None:
    results = await app.router.readiness()
    deployments = [
        {"model": p.deployment.model_name, "provider": p.deployment.provider, "ready": ok} for p, ok in results
    ]
    all_ready = all(ok for _, ok in results)
    body = {"status": "ready" if all_ready else "unavailable", "deployments": deployments}
    await request.send_json(200 if all_ready else 503, _json.encode(body))
