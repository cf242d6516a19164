"""Reading the usage ledger: spend and tokens grouped by key, team, user, model, deployment or day over a time
range. One query for `GET /admin/usage` and `manifold usage`.

The range is `[start, end)`, each unix seconds or an ISO 8601 date or date-time (a date is its midnight UTC; a
date-time without an offset is UTC); either may be left out (no bound). Money is integer micro-dollars:
`cost_micros` sums the requests whose cost is known (None when none of the group's is) and
`requests_without_cost` counts the others.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from manifold.errors import InvalidRequestError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["GROUPS", "UsageQuery", "parse_query", "parse_time", "usage_groups", "usage_page"]

DAY_MS: Final = 86_400_000
# group_by → the ledger column it groups on (`day`: computed from created_at)
GROUPS: Final = {
    "key": "key_id",
    "team": "team_id",
    "user": "user_id",
    "model": "model",
    "deployment": "deployment",
    "day": None,
}
TOKENS: Final = ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens")


class UsageQuery:
    __slots__ = ("end", "group_by", "start")

    def __init__(self, group_by: str = "key", start: int | None = None, end: int | None = None) -> None:
        self.group_by = group_by
        self.start = start  # unix seconds, inclusive
        self.end = end  # unix seconds, exclusive


def parse_time(value: str, param: str) -> int:
    """Unix seconds from `value`: an integer (unix seconds) or an ISO 8601 date or date-time."""
    text = value.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            moment = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
        else:
            moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=dt.UTC)
    except ValueError:
        raise InvalidRequestError(
            f"Invalid '{param}': {value!r} is neither unix seconds nor an ISO 8601 date (2026-12-01) or date-time.",
            param=param,
            code="invalid_value",
        ) from None
    return int(moment.timestamp())


def parse_query(params: Mapping[str, str]) -> UsageQuery:
    """`group_by`, `start`, `end` as given (query string or command line); errors name the parameter."""
    unknown = sorted(set(params) - {"group_by", "start", "end"})
    if unknown:
        raise InvalidRequestError(f"Unknown parameter: '{unknown[0]}'.", param=unknown[0], code="unknown_parameter")
    group_by = params.get("group_by", "key")
    if group_by not in GROUPS:
        raise InvalidRequestError(
            f"Invalid 'group_by': {group_by!r}. Expected one of: {', '.join(GROUPS)}.",
            param="group_by",
            code="invalid_value",
        )
    start = parse_time(params["start"], "start") if "start" in params else None
    end = parse_time(params["end"], "end") if "end" in params else None
    if start is not None and end is not None and end < start:
        raise InvalidRequestError("'end' is before 'start'.", param="end", code="invalid_value")
    return UsageQuery(group_by, start, end)


def _day(days_since_epoch: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=days_since_epoch)).isoformat()


def _int(value: Any) -> int | None:
    return None if value is None else int(value)  # PostgreSQL's SUM of bigint is numeric (a Decimal)


async def usage_groups(engine: AsyncEngine, query: UsageQuery) -> list[dict[str, Any]]:
    """The groups of the ledger rows in the range, ordered by group (None first)."""
    from sqlalchemy import func, select

    from manifold.storage.tables import usage

    c = usage.c
    column = GROUPS[query.group_by]
    group = (c.created_at // DAY_MS) if column is None else c[column]
    selected = [
        group.label("grp"),
        func.count().label("requests"),
        *(func.sum(c[name]).label(name) for name in TOKENS),
        func.sum(c.cost_micros).label("cost_micros"),
        func.count(c.cost_micros).label("with_cost"),
    ]
    if query.group_by == "key":
        selected.append(func.max(c.key_alias).label("key_alias"))
    stmt = select(*selected).group_by(group)
    if query.start is not None:
        stmt = stmt.where(c.created_at >= query.start * 1000)
    if query.end is not None:
        stmt = stmt.where(c.created_at < query.end * 1000)
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).mappings().all()
    out: list[dict[str, Any]] = []
    for row in rows:
        value = row["grp"]
        if column is None and value is not None:
            value = _day(int(value))
        item: dict[str, Any] = {"object": "usage.group", "group": value}
        if query.group_by == "key":
            item["key_alias"] = row["key_alias"]
        requests = int(row["requests"])
        item["requests"] = requests
        for name in TOKENS:
            item[name] = _int(row[name]) or 0
        with_cost = int(row["with_cost"])
        item["cost_micros"] = _int(row["cost_micros"]) if with_cost else None
        item["requests_without_cost"] = requests - with_cost
        out.append(item)
    out.sort(key=lambda item: (item["group"] is not None, str(item["group"] or "")))
    return out


async def usage_page(engine: AsyncEngine, query: UsageQuery) -> dict[str, Any]:
    """The `/admin/usage` answer: an OpenAI-style list of the groups."""
    data = await usage_groups(engine, query)
    return {
        "object": "list",
        "group_by": query.group_by,
        "start": query.start,
        "end": query.end,
        "data": data,
        "has_more": False,
    }
