"""What the stores share: objects kept as JSON text, the unix-millisecond clock, and cursor-ordered selects."""

from __future__ import annotations

import time
from typing import Any, Literal

from sqlalchemy import ColumnElement, Select

from manifold import _json

Order = Literal["asc", "desc"]


def json_text(obj: Any) -> str:
    return _json.encode(obj).decode()


def now_ms() -> int:
    return int(time.time() * 1000)


def cursor_select(stmt: Select[Any], column: ColumnElement[Any], after: Any, order: Order, limit: int) -> Select[Any]:
    """`stmt` past the cursor `after` (a value of `column`, or None for the first page) in `order`, with one row
    more than `limit`: its presence says the page `has_more`."""
    if after is not None:
        stmt = stmt.where(column > after if order == "asc" else column < after)
    return stmt.order_by(column.asc() if order == "asc" else column.desc()).limit(limit + 1)
