"""Virtual keys and teams, the pure parts: secrets and their hashes, the admin API's request bodies, rows to
principals and to API objects (docs/access.md).

A secret is `sk-mf-` + 32 random bytes (URL-safe base64). Only its SHA-256 is stored: a secret has 256 bits of
entropy, so a fast hash is as safe as a slow one and costs a microsecond per uncached lookup. Money crosses the
API in dollars and is stored as integer micro-dollars (a decimal conversion, never a float product).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Final, TypeVar

import msgspec

from manifold import _json
from manifold.access.principal import BudgetDuration, Limits, ModelLimits, Principal, both
from manifold.errors import InvalidRequestError

__all__ = [
    "PREFIX",
    "KeyCreate",
    "KeyUpdate",
    "RotateBody",
    "TeamCreate",
    "TeamUpdate",
    "display_of",
    "hash_secret",
    "key_object",
    "new_id",
    "new_secret",
    "parse_body",
    "principal_of",
    "row_values",
    "team_object",
]

S = TypeVar("S", bound=msgspec.Struct)
PREFIX: Final = "sk-mf-"
MICROS: Final = 1_000_000
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def new_id(kind: str) -> str:
    return f"{kind}_{secrets.token_hex(12)}"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def display_of(secret: str) -> str:
    """What may be shown of a key: its prefix and last 4 characters; nothing of a short (not random) one."""
    if len(secret) < 20:
        return "***"
    head = PREFIX if secret.startswith(PREFIX) else ""
    return f"{head}...{secret[-4:]}"


class ModelLimitsBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    rpm: NonNegativeInt | None = None
    tpm: NonNegativeInt | None = None
    max_parallel_requests: NonNegativeInt | None = None


class _Common(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    models: list[Name] | msgspec.UnsetType | None = msgspec.UNSET
    rpm: NonNegativeInt | msgspec.UnsetType | None = msgspec.UNSET
    tpm: NonNegativeInt | msgspec.UnsetType | None = msgspec.UNSET
    max_parallel_requests: NonNegativeInt | msgspec.UnsetType | None = msgspec.UNSET
    model_limits: dict[str, ModelLimitsBody] | msgspec.UnsetType | None = msgspec.UNSET
    max_budget: Annotated[float, msgspec.Meta(ge=0)] | msgspec.UnsetType | None = msgspec.UNSET
    budget_duration: BudgetDuration | msgspec.UnsetType | None = msgspec.UNSET
    metadata: dict[str, Any] | msgspec.UnsetType | None = msgspec.UNSET
    blocked: bool | msgspec.UnsetType = msgspec.UNSET
    alias: Name | msgspec.UnsetType | None = msgspec.UNSET
    mcp_servers: list[Name] | msgspec.UnsetType | None = msgspec.UNSET


class TeamCreate(_Common):
    pass


class TeamUpdate(TeamCreate):
    pass


class KeyCreate(_Common):
    user: Name | msgspec.UnsetType | None = msgspec.UNSET
    team_id: Name | msgspec.UnsetType | None = msgspec.UNSET
    expires_at: NonNegativeInt | msgspec.UnsetType | None = msgspec.UNSET  # unix seconds
    admin: bool | msgspec.UnsetType = msgspec.UNSET


class KeyUpdate(KeyCreate):
    pass


class RotateBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    grace_s: Annotated[float, msgspec.Meta(ge=0)] | None = None  # default: auth.rotation_grace_s


def parse_body(body: bytes, kind: type[S]) -> S:
    """The request body as `kind`; a 400 naming the field otherwise."""
    try:
        return msgspec.json.decode(body or b"{}", type=kind)
    except msgspec.ValidationError as exc:
        text = str(exc)
        param = None
        if "at `$." in text:
            param = text.rsplit("at `$.", 1)[1].rstrip("`").split("[", 1)[0].split(".", 1)[0]
        elif "unknown field `" in text:
            param = text.split("unknown field `", 1)[1].split("`", 1)[0]
        raise InvalidRequestError(f"Invalid request body: {text}", param=param, code="invalid_value") from None
    except msgspec.DecodeError:
        raise InvalidRequestError("The request body is not valid JSON.", code="invalid_json") from None


def _micros(dollars: float) -> int:
    try:
        return int((Decimal(str(dollars)) * MICROS).to_integral_value())
    except InvalidOperation:
        raise InvalidRequestError("Invalid 'max_budget'.", param="max_budget", code="invalid_value") from None


def row_values(body: msgspec.Struct) -> dict[str, Any]:
    """The columns a create/update body sets (only the fields it names)."""
    out: dict[str, Any] = {}
    for field in body.__struct_fields__:
        value = getattr(body, field)
        if value is msgspec.UNSET:
            continue
        if field in ("models", "mcp_servers"):
            out[f"{field}_json"] = None if value is None else _json.encode(list(value)).decode()
        elif field == "model_limits":
            out["model_limits_json"] = None if value is None else msgspec.json.encode(value).decode()
        elif field == "metadata":
            out["metadata_json"] = _json.encode(value or {}).decode()
        elif field == "max_budget":
            out["max_budget_micros"] = None if value is None else _micros(value)
        elif field in ("blocked", "admin"):
            out[field] = int(bool(value))
        elif field == "user":
            out["user_id"] = value
        else:
            out[field] = value
    if "budget_duration" in out:
        out["budget_reset_at"] = next_reset(out["budget_duration"], int(time.time()))
    return out


def next_reset(duration: str | None, now: int) -> int | None:
    """When a budget of `duration` that starts now resets next (unix seconds, UTC calendar boundaries)."""
    if duration is None:
        return None
    import datetime as dt

    today = dt.datetime.fromtimestamp(now, dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if duration == "daily":
        nxt = today + dt.timedelta(days=1)
    elif duration == "weekly":
        nxt = today + dt.timedelta(days=7 - today.weekday())
    else:
        nxt = (today.replace(day=1) + dt.timedelta(days=32)).replace(day=1)
    return int(nxt.timestamp())


def _models(row: Mapping[str, Any], column: str = "models_json") -> tuple[str, ...] | None:
    raw = row.get(column)
    return None if raw is None else tuple(_json.decode(raw))


def _model_limits(row: Mapping[str, Any]) -> dict[str, Any]:
    raw = row.get("model_limits_json")
    return {} if raw is None else dict(_json.decode(raw))


def limits_of(row: Mapping[str, Any]) -> Limits:
    return Limits(
        rpm=row["rpm"],
        tpm=row["tpm"],
        max_parallel_requests=row["max_parallel_requests"],
        max_budget_micros=row["max_budget_micros"],
        budget_duration=row["budget_duration"],
        model_limits={
            group: ModelLimits(v.get("rpm"), v.get("tpm"), v.get("max_parallel_requests"))
            for group, v in _model_limits(row).items()
        },
    )


def principal_of(key: Mapping[str, Any], team: Mapping[str, Any] | None) -> Principal:
    return Principal(
        key_id=key["id"],
        key_alias=key["alias"],
        user=key["user_id"],
        team_id=key["team_id"],
        team_alias=team["alias"] if team is not None else None,
        admin=bool(key["admin"]),
        models=_models(key),
        team_models=_models(team) if team is not None else None,
        key_limits=limits_of(key),
        team_limits=limits_of(team) if team is not None else None,
        created_at=int(key["created_at"]),
        mcp_servers=both(_models(key, "mcp_servers_json"), None if team is None else _models(team, "mcp_servers_json")),
    )


def _common(row: Mapping[str, Any]) -> dict[str, Any]:
    budget = row["max_budget_micros"]
    return {
        "alias": row["alias"],
        "models": None if row["models_json"] is None else _json.decode(row["models_json"]),
        "rpm": row["rpm"],
        "tpm": row["tpm"],
        "max_parallel_requests": row["max_parallel_requests"],
        "model_limits": _model_limits(row),
        "max_budget": None if budget is None else float(Decimal(budget) / MICROS),
        "budget_duration": row["budget_duration"],
        "budget_reset_at": row["budget_reset_at"],
        "mcp_servers": None if row.get("mcp_servers_json") is None else _json.decode(row["mcp_servers_json"]),
        "metadata": _json.decode(row["metadata_json"]),
        "blocked": bool(row["blocked"]),
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


def key_object(row: Mapping[str, Any], secret: str | None = None) -> dict[str, Any]:
    """A key as the admin API shows it; `secret` only in the answer that created (or rotated) it."""
    obj: dict[str, Any] = {
        "object": "key",
        "id": row["id"],
        "display": row["display"],
        "user": row["user_id"],
        "team_id": row["team_id"],
        "admin": bool(row["admin"]),
        "expires_at": row["expires_at"],
        "previous_expires_at": row["previous_expires_at"],
        **_common(row),
    }
    if secret is not None:
        obj["key"] = secret
    return obj


def team_object(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"object": "team", "id": row["id"], **_common(row)}


def new_row(kind: str, values: Mapping[str, Any], now: int) -> dict[str, Any]:
    """A full row for a new key or team: every column the body did not set at its default."""
    row: dict[str, Any] = {
        "id": new_id(kind),
        "alias": None,
        "models_json": None,
        "rpm": None,
        "tpm": None,
        "max_parallel_requests": None,
        "model_limits_json": None,
        "mcp_servers_json": None,
        "max_budget_micros": None,
        "budget_duration": None,
        "budget_reset_at": None,
        "metadata_json": "{}",
        "blocked": 0,
        "created_at": now,
        "updated_at": now,
    }
    if kind == "key":
        row.update(user_id=None, team_id=None, admin=0, expires_at=None, previous_hash=None, previous_expires_at=None)
    row.update(values)
    return row
