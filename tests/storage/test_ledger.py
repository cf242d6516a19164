"""The usage ledger against real databases (SQLite, PostgreSQL): rows written in multi-row batches through the
store's writer, the grouped report exact (tokens, known and unknown cost, time ranges), and the bounded buffer
while the database cannot be reached."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from manifold.access.ledger import COLUMNS, Ledger
from manifold.access.usage_report import UsageQuery, parse_query, usage_groups
from manifold.config import LedgerSettings, StorageSettings
from manifold.errors import InvalidRequestError
from manifold.observability.record import RequestRecord, usage_details
from manifold.storage import Store, tables
from tests.databases import BACKENDS, storage_settings
from tests.e2e.conftest import free_port

DAY = 86_400
T0 = 1_764_633_600  # 2025-12-02T00:00:00Z


@pytest.fixture(params=BACKENDS)
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StorageSettings]:
    with storage_settings(request.param, tmp_path / "data") as storage:
        yield StorageSettings(**storage)


@pytest.fixture
async def store(settings: StorageSettings) -> AsyncIterator[Store]:
    s = Store(settings)
    await s.open()
    yield s
    await s.aclose()


def record(
    n: int,
    *,
    key: str | None,
    team: str | None,
    model: str,
    at: int,
    cost_micros: int | None = None,
    cost: float | None = None,
    stream: bool = False,
) -> RequestRecord:
    rec = RequestRecord("POST", "127.0.0.1")
    rec.request_id = f"req-{n}"
    rec.wall_start = at + 0.25
    rec.end = rec.start + 0.0123
    rec.route = "/v1/chat/completions"
    rec.status = 200
    rec.model_label = model
    rec.deployment = f"{model}-dep"
    rec.attempts = 1
    rec.stream = stream
    rec.ttft = 0.004 if stream else None
    rec.key_id, rec.key_alias, rec.team_id, rec.user = key, None if key is None else f"alias-{key}", team, "ana"
    rec.input_tokens, rec.output_tokens = 10 + n, 5
    rec.cached_tokens, rec.reasoning_tokens = (2, 1) if n % 2 else (None, None)
    rec.cost_micros, rec.cost = cost_micros, cost
    return rec


def groups(items: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    return {item["group"]: item for item in items}


async def test_rows_and_groups_exact(store: Store) -> None:
    ledger = Ledger(store, LedgerSettings(enabled=True, flush_interval_s=0.05, max_batch=3))
    ledger.start()
    recs = [
        record(0, key="k1", team="t1", model="gpt", at=T0, cost_micros=1_500),
        record(1, key="k1", team="t1", model="gpt", at=T0 + 60, cost_micros=2_500, stream=True),
        record(2, key="k2", team="t1", model="gpt", at=T0 + DAY, cost=0.000123),  # float cost → 123 µ$
        record(3, key="k2", team=None, model="claude", at=T0 + DAY, cost_micros=None),  # unknown
        record(4, key=None, team=None, model="claude", at=T0 + 2 * DAY, cost_micros=None),
        record(5, key=None, team=None, model="gpt", at=T0 + 2 * DAY, cost_micros=0),  # free (local model)
        record(6, key="k1", team="t1", model="claude", at=T0 + 2 * DAY + 5, cost_micros=7),
    ]
    health = RequestRecord("GET", None)
    health.route = "/admin/usage"  # admin and unmatched requests have no row
    for rec in [*recs, health, RequestRecord("GET", None)]:
        ledger.record(rec)
    await ledger.aclose()
    assert (ledger.written, ledger.dropped, ledger.pending) == (7, 0, 0)

    async with store.engine.connect() as conn:
        rows = (await conn.execute(select(tables.usage).order_by(tables.usage.c.seq))).mappings().all()
    assert [r["request_id"] for r in rows] == [f"req-{n}" for n in range(7)]
    first = dict(rows[1])
    first.pop("seq")
    assert first == {
        "request_id": "req-1",
        "created_at": (T0 + 60) * 1000 + 250,
        "key_id": "k1",
        "key_alias": "alias-k1",
        "team_id": "t1",
        "user_id": "ana",
        "model": "gpt",
        "deployment": "gpt-dep",
        "endpoint": "/v1/chat/completions",
        "status": 200,
        "stream": True,
        "input_tokens": 11,
        "cached_input_tokens": 2,
        "output_tokens": 5,
        "reasoning_tokens": 1,
        "cost_micros": 2_500,
        "latency_ms": 12,
        "ttft_ms": 4,
        "attempts": 1,
    }

    engine = store.engine
    by_key = groups(await usage_groups(engine, UsageQuery("key")))
    assert set(by_key) == {None, "k1", "k2"}
    assert by_key["k1"] == {
        "object": "usage.group",
        "group": "k1",
        "key_alias": "alias-k1",
        "requests": 3,
        "input_tokens": 10 + 11 + 16,
        "cached_input_tokens": 2,
        "output_tokens": 15,
        "reasoning_tokens": 1,
        "cost_micros": 1_500 + 2_500 + 7,
        "requests_without_cost": 0,
    }
    assert (by_key["k2"]["cost_micros"], by_key["k2"]["requests_without_cost"]) == (123, 1)
    assert (by_key[None]["cost_micros"], by_key[None]["requests_without_cost"]) == (0, 1)

    by_team = groups(await usage_groups(engine, UsageQuery("team")))
    assert {k: (v["requests"], v["cost_micros"]) for k, v in by_team.items()} == {
        None: (3, 0),
        "t1": (4, 1_500 + 2_500 + 123 + 7),
    }
    by_model = groups(await usage_groups(engine, UsageQuery("model")))
    assert {k: (v["requests"], v["cost_micros"], v["requests_without_cost"]) for k, v in by_model.items()} == {
        "claude": (3, 7, 2),
        "gpt": (4, 1_500 + 2_500 + 123 + 0, 0),
    }
    by_deployment = groups(await usage_groups(engine, UsageQuery("deployment")))
    assert {k: v["requests"] for k, v in by_deployment.items()} == {"claude-dep": 3, "gpt-dep": 4}
    by_user = groups(await usage_groups(engine, UsageQuery("user")))
    assert {k: v["requests"] for k, v in by_user.items()} == {"ana": 7}

    by_day = await usage_groups(engine, UsageQuery("day"))
    assert [(d["group"], d["requests"], d["cost_micros"]) for d in by_day] == [
        ("2025-12-02", 2, 4_000),
        ("2025-12-03", 2, 123),
        ("2025-12-04", 3, 7),
    ]
    # [start, end): the second day only, by date and by unix seconds
    for params in ({"start": "2025-12-03", "end": "2025-12-04"}, {"start": str(T0 + DAY), "end": str(T0 + 2 * DAY)}):
        only = await usage_groups(engine, parse_query({"group_by": "day", **params}))
        assert [(d["group"], d["requests"]) for d in only] == [("2025-12-03", 2)]
    # a range with no rows: no groups; a group whose costs are all unknown: cost None
    assert await usage_groups(engine, parse_query({"start": "2030-01-01T00:00:00Z"})) == []
    unknown = await usage_groups(engine, parse_query({"group_by": "model", "start": "2025-12-03", "end": "2025-12-04"}))
    assert {d["group"]: d["cost_micros"] for d in unknown} == {"gpt": 123, "claude": None}


async def _ledger_with_rows(store: Store, max_batch: int, rows: int) -> tuple[Ledger, Any, int]:
    """A ledger (flushed by size or by hand: its interval is 30 s) holding `rows` rows, the store's writer, and
    its count of writes so far."""
    ledger = Ledger(store, LedgerSettings(enabled=True, flush_interval_s=30, max_batch=max_batch))
    writes = await store.writes()
    before = writes.writes
    for n in range(rows):
        ledger.record(record(n, key="k", team=None, model="m", at=T0))
    return ledger, writes, before


async def test_multi_row_batches(store: Store) -> None:
    """A flush writes at most `max_batch` rows per statement, each statement one write of the group commit."""
    ledger, writes, before = await _ledger_with_rows(store, max_batch=4, rows=10)
    ledger.start()
    await ledger.aclose()
    assert ledger.written == 10
    assert writes.writes - before == 3  # 4 + 4 + 2 rows


async def test_rows_that_arrive_during_a_flush_wait_for_the_next(store: Store) -> None:
    """A flush writes the rows buffered when it began; those recorded while it waits on the database wait for
    the next flush (before: it drained the buffer until empty, so a busy server wrote a stream of small batches,
    one per write's duration, ~20 rows each, instead of one batch per `flush_interval_s`). Closing writes them."""
    ledger, writes, before = await _ledger_with_rows(store, max_batch=100, rows=10)
    flushing = asyncio.create_task(ledger.flush())
    await asyncio.sleep(0)  # the flush has taken its ten rows and waits on the writer
    for n in range(10, 15):
        ledger.record(record(n, key="k", team=None, model="m", at=T0))
    assert await flushing
    assert (ledger.written, ledger.pending, writes.writes - before) == (10, 5, 1)
    ledger.start()
    await ledger.aclose()
    assert (ledger.written, ledger.pending, ledger.dropped, writes.writes - before) == (15, 0, 0, 2)


async def test_a_flush_woken_by_size_writes_whole_batches(store: Store) -> None:
    """`max_batch` rows waiting wake the writer before the interval; it then writes whole batches only (the
    few rows past the last one wait for the next flush), so a busy server's batches are full ones."""
    ledger, writes, before = await _ledger_with_rows(store, max_batch=4, rows=10)
    ledger.start()
    for _ in range(200):
        await asyncio.sleep(0.01)
        if ledger.written == 8:
            break
    await asyncio.sleep(0.05)  # nothing more comes before the interval
    assert (ledger.written, ledger.pending, writes.writes - before) == (8, 2, 2)
    await ledger.aclose()
    assert (ledger.written, ledger.pending, writes.writes - before) == (10, 0, 3)
    ledger.record(record(11, key="k", team=None, model="m", at=T0))  # closed: counted as dropped
    assert (ledger.pending, ledger.dropped) == (0, 1)


async def test_rows_the_database_refuses_never_stop_the_ledger(store: Store) -> None:
    """A hostile upstream's token count beyond 64 bits, a NUL in a model name: the batch is written with those
    values made storable (nulled, removed); the rows around it are written as they were."""
    ledger = Ledger(store, LedgerSettings(enabled=True, flush_interval_s=30, max_batch=3))
    huge = record(1, key="k", team=None, model="m", at=T0)
    huge.input_tokens = 10**30
    nul = record(2, key="k", team=None, model="bad\x00name", at=T0)
    for rec in (
        record(0, key="k", team=None, model="m", at=T0),
        huge,
        nul,
        record(3, key="k", team=None, model="m", at=T0),
    ):
        ledger.record(rec)
    assert await ledger.flush()
    assert (ledger.written, ledger.dropped, ledger.pending) == (4, 0, 0)
    async with store.engine.connect() as conn:
        rows = (await conn.execute(select(tables.usage).order_by(tables.usage.c.seq))).mappings().all()
    assert [(r["request_id"], r["input_tokens"], r["model"]) for r in rows] == [
        ("req-0", 10, "m"),
        ("req-1", None, "m"),
        ("req-2", 12, "badname"),
        ("req-3", 13, "m"),
    ]
    await ledger.aclose()


async def test_buffer_bounded_while_database_unreachable() -> None:
    """Nothing listens on the database's port: rows are kept up to the bound, the rest dropped and counted; at
    shutdown the kept ones are counted as dropped too."""
    settings = StorageSettings(url=f"postgresql://postgres@127.0.0.1:{free_port()}/none", retry_interval_s=60)
    store = Store(settings)
    store.start()
    ledger = Ledger(store, LedgerSettings(enabled=True, flush_interval_s=0.02, max_buffered_rows=5))
    ledger.start()
    for n in range(8):
        ledger.record(record(n, key="k", team=None, model="m", at=T0))
    assert (ledger.pending, ledger.dropped) == (5, 3)
    for _ in range(500):  # it keeps trying
        if ledger.failed_flushes >= 2:
            break
        await asyncio.sleep(0.02)
    assert ledger.failed_flushes >= 2
    assert (ledger.pending, ledger.written) == (5, 0)
    await ledger.aclose(wait_s=0.2)
    assert (ledger.pending, ledger.dropped, ledger.written) == (0, 8, 0)
    await store.aclose()


def test_query_parameters_refused_by_name() -> None:
    for params, param in (
        ({"group_by": "color"}, "group_by"),
        ({"start": "yesterday"}, "start"),
        ({"end": "2025-13-01"}, "end"),
        ({"start": "2025-12-02", "end": "2025-12-01"}, "end"),
        ({"limit": "3"}, "limit"),
    ):
        with pytest.raises(InvalidRequestError) as caught:
            parse_query(params)
        assert caught.value.param == param
        assert caught.value.status == 400
    assert parse_query({"start": "2025-12-02T01:00:00", "end": "2025-12-02T02:00:00+01:00"}).start == T0 + 3600
    assert parse_query({"end": "2025-12-02T02:00:00+01:00"}).end == T0 + 3600


def test_insert_names_every_column() -> None:
    assert [c.name for c in tables.usage.columns if c.name != "seq"] == list(COLUMNS)


def test_usage_details_spellings() -> None:
    chat = {"prompt_tokens_details": {"cached_tokens": 4}, "completion_tokens_details": {"reasoning_tokens": 9}}
    responses = {"input_tokens_details": {"cached_tokens": 1}, "output_tokens_details": {"reasoning_tokens": 0}}
    assert usage_details(chat) == (4, 9)
    assert usage_details(responses) == (1, 0)
    assert usage_details({"prompt_tokens_details": None}) == (None, None)
    assert usage_details({"prompt_tokens_details": {"cached_tokens": True}}) == (None, None)
    assert usage_details({"prompt_tokens_details": {}, "completion_tokens_details": {"reasoning_tokens": 2.0}}) == (
        None,
        None,
    )
    assert usage_details(None) == (None, None)
