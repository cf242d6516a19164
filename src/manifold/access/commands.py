"""`manifold keys create|list|update|rotate|revoke`: the admin operations on the command line, against the
database of the config (the same one the server uses). Each prints JSON; create and rotate print the secret,
the only time it is shown. A change is announced to running servers through Redis when `redis.url` is set (at
once); otherwise they see it within `auth.key_cache_ttl_s`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import msgspec

from manifold.access import keys
from manifold.access.admin import Admin
from manifold.access.invalidation import publish_sync
from manifold.config import Config
from manifold.errors import ManifoldError

__all__ = ["add_parser", "run"]


def _limit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--alias")
    p.add_argument("--user")
    p.add_argument("--team", dest="team_id", help="the team's id")
    p.add_argument("--models", help="comma-separated names, wildcards (openai/*) or aliases; default: every model")
    p.add_argument(
        "--mcp-servers",
        help="comma-separated MCP servers it may use: labels, or label__tool for one tool ('' for none); default: all",
    )
    p.add_argument("--rpm", type=int, help="requests per minute")
    p.add_argument("--tpm", type=int, help="tokens per minute")
    p.add_argument("--max-parallel-requests", type=int)
    p.add_argument("--max-budget", type=float, help="US dollars")
    p.add_argument("--budget-duration", choices=["daily", "weekly", "monthly"])
    p.add_argument("--expires-at", type=int, help="unix seconds")
    p.add_argument("--metadata", help="a JSON object")
    p.add_argument("--admin", action="store_true", default=None, help="may use the admin API")


def add_parser(sub: Any) -> None:
    keys_parser = sub.add_parser("keys", help="create, list, update, rotate and revoke virtual keys")
    keys_parser.add_argument("--config")
    actions = keys_parser.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="a new key (its secret is printed once)")
    _limit_options(create)
    listing = actions.add_parser("list", help="keys, oldest first")
    listing.add_argument("--team", dest="team_id")
    listing.add_argument("--user")
    listing.add_argument("--alias")
    listing.add_argument("--blocked", choices=["true", "false"])
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--after", help="a key id: the keys after it")
    update = actions.add_parser("update", help="change a key's settings (only those given)")
    update.add_argument("key_id")
    _limit_options(update)
    blocking = update.add_mutually_exclusive_group()
    blocking.add_argument("--block", dest="blocked", action="store_true", default=None)
    blocking.add_argument("--unblock", dest="blocked", action="store_false")
    rotate = actions.add_parser("rotate", help="a new secret (printed once); the old one works for a grace period")
    rotate.add_argument("key_id")
    rotate.add_argument("--grace-s", type=float, help="default: auth.rotation_grace_s")
    revoke = actions.add_parser("revoke", help="delete a key: it stops working at once")
    revoke.add_argument("key_id")


_FIELDS = (
    "alias",
    "user",
    "team_id",
    "rpm",
    "tpm",
    "max_parallel_requests",
    "max_budget",
    "budget_duration",
    "expires_at",
    "admin",
    "blocked",
)


def _body(args: argparse.Namespace, kind: type[keys.KeyCreate]) -> keys.KeyCreate:
    fields: dict[str, Any] = {}
    for name in _FIELDS:
        value = getattr(args, name, None)
        if value is not None:
            fields[name] = value
    if args.models is not None:
        fields["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.mcp_servers is not None:
        fields["mcp_servers"] = [m.strip() for m in args.mcp_servers.split(",") if m.strip()]
    if args.metadata is not None:
        try:
            fields["metadata"] = json.loads(args.metadata)
        except ValueError as exc:
            raise SystemExit(f"--metadata: not JSON ({exc})") from None
    return keys.parse_body(msgspec.json.encode(fields), kind)


def _announce(config: Config) -> None:
    if publish_sync(config.redis, "changed"):
        return
    print(
        f"note: running servers see this within auth.key_cache_ttl_s ({config.auth.key_cache_ttl_s:g} s)"
        + (" (Redis could not be reached)" if config.redis.url else ""),
        file=sys.stderr,
    )


async def _run(args: argparse.Namespace, config: Config) -> Any:
    from manifold.storage.store import Store

    store = Store(config.storage)
    try:
        access = await store.access()
        changed = False

        async def notify(_reason: str) -> None:
            nonlocal changed
            changed = True

        admin = Admin(access, notify, config.auth.rotation_grace_s)
        action = args.action
        if action == "create":
            result = await admin.create_key(_body(args, keys.KeyCreate))
        elif action == "list":
            query = {
                name: str(value)
                for name, value in (
                    ("team_id", args.team_id),
                    ("user", args.user),
                    ("alias", args.alias),
                    ("blocked", args.blocked),
                    ("limit", args.limit),
                    ("after", args.after),
                )
                if value is not None
            }
            result = await admin.list("key", query)
        elif action == "update":
            result = await admin.update("key", args.key_id, _body(args, keys.KeyUpdate))
        elif action == "rotate":
            result = await admin.rotate(args.key_id, args.grace_s)
        else:
            result = await admin.delete("key", args.key_id)
    finally:
        await store.aclose()
    if changed:
        _announce(config)
    return result


def run(args: argparse.Namespace, config: Config) -> int:
    try:
        result = asyncio.run(_run(args, config))
    except ManifoldError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0
