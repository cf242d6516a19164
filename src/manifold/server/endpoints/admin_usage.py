"""`GET /admin/usage`: the usage ledger's spend and tokens, grouped (access/usage_report.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from manifold import _json
from manifold.access.admin_gate import require_admin
from manifold.access.usage_report import parse_query, usage_page
from manifold.errors import InvalidRequestError

if TYPE_CHECKING:
    from manifold.server.asgi import Request
    from manifold.server.services import Services


async def usage(services: Services, request: Request) -> None:
    require_admin(request, services.config.auth)
    try:
        pairs = parse_qsl(request.query_string.decode("latin-1"), keep_blank_values=True, strict_parsing=False)
    except ValueError:
        raise InvalidRequestError("Invalid query string.") from None
    params = dict(pairs)
    if len(params) != len(pairs):
        repeated = next(name for name, _ in pairs if sum(1 for n, _ in pairs if n == name) > 1)
        raise InvalidRequestError(f"'{repeated}' is given more than once.", param=repeated)
    query = parse_query(params)
    await services.store.open()
    await request.send_json(200, _json.encode(await usage_page(services.store.engine, query)))
