"""`manifold usage`: the usage ledger's groups (access/usage_report.py), read from the database the config's
`storage:` section names, as a table or as `/admin/usage`'s JSON."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from manifold import _json
from manifold.access.usage_report import TOKENS, parse_query, usage_page
from manifold.config import Config
from manifold.errors import ManifoldError

__all__ = ["usage_command"]

COLUMNS = ("requests", *TOKENS, "cost_micros", "requests_without_cost")


async def _page(config: Config, params: dict[str, str]) -> dict[str, Any]:
    from manifold.storage.engine import create_engine
    from manifold.storage.errors import storage_errors
    from manifold.storage.migrations import migrate

    query = parse_query(params)
    engine = create_engine(config.storage)
    try:
        async with storage_errors():
            await migrate(engine)  # a database the server never opened has no ledger yet: an empty answer
            return await usage_page(engine, query)
    finally:
        await engine.dispose()


def _table(page: dict[str, Any]) -> str:
    header = [page["group_by"], *COLUMNS]
    if page["group_by"] == "key":
        header.insert(1, "key_alias")
    rows = [header]
    for item in page["data"]:
        row = [item["group"]] + ([item["key_alias"]] if page["group_by"] == "key" else [])
        row += [item[name] for name in COLUMNS]
        rows.append(["-" if v is None else str(v) for v in row])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths, strict=True)))
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


def usage_command(args: argparse.Namespace, config: Config) -> int:
    params = {"group_by": args.group_by}
    if args.start is not None:
        params["start"] = args.start
    if args.end is not None:
        params["end"] = args.end
    try:
        page = asyncio.run(_page(config, params))
    except ManifoldError as exc:
        flag = f"--{exc.param.replace('_', '-')}: " if exc.param else ""
        print(f"manifold usage: {flag}{exc.message}", file=sys.stderr)
        return 2 if exc.status == 400 else 1
    if args.json:
        print(_json.encode(page).decode())
    else:
        print(_table(page))
    return 0
