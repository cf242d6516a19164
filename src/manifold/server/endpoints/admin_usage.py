"""`GET /admin/usage`: the usage ledger's spend and tokens, grouped (access/usage_report.py). Only the master key
or an admin key reaches it (the authentication layer, access/auth.py, guards every admin path)."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from manifold import _json
from manifold.access.usage_report import parse_query, usage_page
from manifold.errors import InvalidRequestError

if TYPE_CHECKING:
    from manifold.server.asgi import Request
    from manifold.server.services import Services


async def usage(services: Services, request: Request) -> None:
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
