"""On PostgreSQL a batch of plain inserts is one statement in autocommit (storage/unnest_insert.py): one round
trip, counted on the wire by a proxy between the server and PostgreSQL. Every column type of every table goes
through it and reads back equal; a batch with other statements keeps the transaction; a write whose data the
database refuses (a duplicate id, a child without its parent, a value too long) fails alone."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from sqlalchemy import BigInteger, Table, select
from sqlalchemy.engine import make_url

from manifold.config import StorageSettings
from manifold.errors import ServiceUnavailableError
from manifold.storage import Store, tables, writer
from manifold.storage.writer import Write
from tests.databases import fresh_postgres_database


class WireCount:
    """A TCP proxy in front of PostgreSQL that reads what clients send: each `Sync` (extended protocol) or
    `Query` (simple protocol) message ends a request the client then waits for, so their count is the number of
    round trips; `Parse` messages count statements prepared."""

    def __init__(self, host: str, port: int) -> None:
        self._upstream = (host, port)
        self.round_trips = 0
        self.prepared = 0
        self.connected = 0  # client connections open now
        self.most_connected = 0
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        self.connected += 1
        self.most_connected = max(self.most_connected, self.connected)
        for pump in (self._forward(reader, up_writer, counted=True), self._forward(up_reader, writer, counted=False)):
            task = asyncio.ensure_future(pump)
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, counted: bool) -> None:
        buffer = b""
        started = False  # the startup message has no type byte; every later one has
        try:
            while data := await reader.read(65536):
                writer.write(data)
                if not counted:
                    continue
                buffer += data
                while True:
                    head = 4 if not started else 5
                    if len(buffer) < head:
                        break
                    size = struct.unpack("!I", buffer[head - 4 : head])[0] + head - 4
                    if len(buffer) < size:
                        break
                    kind, buffer = (buffer[:1] if started else b""), buffer[size:]
                    started = True
                    self.round_trips += kind in (b"S", b"Q")
                    self.prepared += kind == b"P"
        except ConnectionError:
            pass
        finally:
            writer.close()
            self.connected -= counted

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pumps):
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)


@pytest.fixture
def database_url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture
async def wire(database_url: str) -> AsyncIterator[tuple[WireCount, str]]:
    url = make_url(database_url)
    proxy = WireCount(url.host or "127.0.0.1", url.port or 5432)
    port = await proxy.start()
    # No TLS: the proxy reads the protocol in the clear.
    yield proxy, url.set(port=port, host="127.0.0.1").update_query_dict({"ssl": "disable"}).render_as_string(False)
    await proxy.aclose()


@pytest.fixture
async def store(wire: tuple[WireCount, str], monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Store]:
    # The writer checks its connection after an idle second; this test counts the batches' own round trips.
    monkeypatch.setattr(writer, "PING_AFTER_IDLE_S", 3600.0)
    s = Store(StorageSettings(url=wire[1]))
    await s.open()
    yield s
    await s.aclose()


def response(n: int) -> dict[str, Any]:
    return {"id": f"resp_{n}", "object": "response", "created_at": 1, "model": "m", "status": "completed"}


def items(n: int) -> list[dict[str, Any]]:
    return [{"type": "message", "id": f"msg_{n}_{i}", "role": "user", "content": []} for i in range(3)]


def completion(n: int) -> dict[str, Any]:
    return {"id": f"chatcmpl-{n}", "object": "chat.completion", "created": 1, "model": "m", "choices": []}


async def counted(proxy: WireCount, *calls: Any) -> tuple[int, list[Any]]:
    before = proxy.round_trips
    results = await asyncio.gather(*calls, return_exceptions=True)
    return proxy.round_trips - before, results


async def test_a_batch_of_inserts_is_one_round_trip(store: Store, wire: tuple[WireCount, str]) -> None:
    proxy, _ = wire
    writes = await store.writes()
    responses = await store.responses()
    chats = await store.chat_completions()

    # The first batch of each set of tables connects and prepares its statement; the text does not depend on
    # the number of rows, so later batches of any size reuse it.
    await responses.save(response(0), items(0))
    await chats.save(completion(0), [{"role": "user", "content": "hi"}], {"k": "v"})
    prepared = proxy.prepared

    batches = writes.batches
    trips, results = await counted(proxy, *(responses.save(response(n), items(n)) for n in range(1, 21)))
    assert results == [None] * 20 and writes.batches == batches + 1
    assert trips == 1  # not BEGIN, one executemany per table, COMMIT
    trips, results = await counted(proxy, responses.save(response(21), items(21)))
    assert results == [None] and trips == 1
    meta = {"team": "a", "n": "1"}
    trips, results = await counted(proxy, *(chats.save(completion(n), [{"role": "user"}], meta) for n in range(1, 9)))
    assert results == [None] * 8 and trips == 1  # three tables, still one statement
    assert proxy.prepared == prepared

    stored = await responses.get("resp_7")
    assert stored is not None and stored.response["id"] == "resp_7"
    assert [i["id"] for i in await responses.input_items("resp_7") or []] == ["msg_7_0", "msg_7_1", "msg_7_2"]
    assert [c["id"] for c in (await chats.list(metadata={"team": "a"}, order="asc", limit=20)).items] == [
        f"chatcmpl-{n}" for n in range(1, 9)
    ]

    # A batch with statements of its own (an update) keeps the transaction, with the inserts merged in it.
    trips, results = await counted(
        proxy, responses.save(response(30), items(30)), responses.update({**response(0), "status": "failed"})
    )
    assert results == [None, True] and trips >= 3  # BEGIN … COMMIT
    stored = await responses.get("resp_0")
    assert stored is not None and stored.response["status"] == "failed"
    assert await responses.get("resp_30") is not None


def every_column(table: Table, n: int) -> dict[str, Any]:
    """A row naming every column the writer inserts: text (JSON among it), big integers past 32 bits, booleans,
    and NULL in every other nullable column."""
    row: dict[str, Any] = {}
    for i, column in enumerate(c for c in table.columns if c is not table.autoincrement_column):
        python = column.type.python_type
        if column.foreign_keys:
            row[column.name] = f"parent-{n}"
        elif column.nullable and i % 2:
            row[column.name] = None
        elif python is bool:
            row[column.name] = bool(n % 2)
        elif python is int:
            row[column.name] = 2**40 + n if isinstance(column.type, BigInteger) else n
        elif "json" in column.name:
            row[column.name] = f'{{"n": {n}, "text": "é ✓ \\u0000"}}'
        else:
            row[column.name] = f"v{i}-{n}"
    if "id" in row:
        row["id"] = f"parent-{n}"
    return row


async def test_every_column_of_every_table_reads_back(store: Store, wire: tuple[WireCount, str]) -> None:
    proxy, _ = wire
    writes = await store.writes()
    inserted = [t for t in tables.metadata.sorted_tables if t is not tables.schema_migrations]
    # Every `id` is parent-N, and the child rows refer to parent-N: parent and child in one statement.
    rows = {table: [every_column(table, n) for n in range(2)] for table in inserted}
    for table in (tables.chat_completion_messages, tables.response_input_items):
        for row in rows[table]:
            row["position"] = 0
    await writes.submit(Write([(t, rows[t][:1]) for t in inserted]))  # prepares the statement
    trips, results = await counted(proxy, writes.submit(Write([(t, rows[t][1:]) for t in inserted])))
    assert results == [None] and trips == 1

    async with store.engine.connect() as conn:
        for table in inserted:
            columns = [c for c in table.columns if c is not table.autoincrement_column]
            order = table.autoincrement_column if table.autoincrement_column is not None else columns[0]
            got = [dict(r) for r in (await conn.execute(select(*columns).order_by(order))).mappings()]
            assert got == rows[table], table.name
    assert any(isinstance(v, bool) for v in rows[tables.usage][0].values())
    assert any(v is not None and v > 2**32 for v in rows[tables.usage][0].values() if isinstance(v, int))


def cc_row(name: str, **extra: Any) -> dict[str, Any]:
    row = {"id": name, "model": "m", "created": 1, "metadata_json": "{}", "completion": "{}", "stored_at": 1}
    return {**row, **extra}


def cc_insert(name: str, **extra: Any) -> Write[None]:
    return Write([(tables.chat_completions, [cc_row(name, **extra)])])


async def stored_ids(store: Store) -> list[str]:
    cc = tables.chat_completions
    async with store.engine.connect() as conn:
        return list((await conn.scalars(select(cc.c.id).order_by(cc.c.seq))).all())


async def test_a_write_whose_data_is_refused_fails_alone(store: Store, wire: tuple[WireCount, str]) -> None:
    """The one statement fails as a whole; the batch runs again write by write (savepoints), so only the faulty
    writes fail: a duplicate of a stored id, a duplicate within the batch, a child whose parent does not exist,
    a value too long for its column (rejected, not truncated)."""
    writes = await store.writes()
    await writes.submit(cc_insert("taken"))
    orphan = Write([(tables.chat_completion_messages, [{"completion_id": "nobody", "position": 0, "message": "{}"}])])
    batches = writes.batches
    results = await asyncio.gather(
        writes.submit(cc_insert("a")),
        writes.submit(cc_insert("taken")),
        writes.submit(cc_insert("b")),
        writes.submit(cc_insert("b")),
        writes.submit(orphan),
        writes.submit(cc_insert("x" * 129)),
        writes.submit(cc_insert("c", request_id=None)),
        return_exceptions=True,
    )
    assert writes.batches == batches + 2  # the statement, then the write-by-write transaction
    assert [r is None for r in results] == [True, False, True, False, False, False, True], results
    assert all(isinstance(r, ServiceUnavailableError) for r in results if r is not None)
    assert await stored_ids(store) == ["taken", "a", "b", "c"]
    async with store.engine.connect() as conn:
        assert await conn.scalar(select(tables.chat_completion_messages.c.completion_id)) is None


async def test_parent_and_child_in_one_statement(store: Store, wire: tuple[WireCount, str]) -> None:
    """Foreign keys are checked when the statement ends: children inserted in the same statement as their
    parent (whichever write brought the parent) are accepted, in one round trip."""
    proxy, _ = wire
    writes = await store.writes()
    await writes.submit(cc_insert("warm"))
    message = {"position": 0, "message": "{}"}
    await writes.submit(
        Write(
            [
                (tables.chat_completions, [cc_row("warm2")]),
                (tables.chat_completion_messages, [{"completion_id": "warm2", **message}]),
            ]
        )
    )
    trips, results = await counted(
        proxy,
        writes.submit(Write([(tables.chat_completion_messages, [{"completion_id": "p1", **message}])])),
        writes.submit(cc_insert("p1")),  # the parent comes in a later write of the same batch
        writes.submit(
            Write(
                [
                    (tables.chat_completions, [cc_row("p2")]),
                    (tables.chat_completion_messages, [{"completion_id": "p2", **message}]),
                ]
            )
        ),
    )
    assert results == [None, None, None] and trips == 1
    cm = tables.chat_completion_messages
    async with store.engine.connect() as conn:
        children = (await conn.scalars(select(cm.c.completion_id).order_by(cm.c.completion_id))).all()
    assert list(children) == ["p1", "p2", "warm2"]


async def test_a_row_naming_another_column_keeps_the_transaction(store: Store) -> None:
    """A row the statement does not carry (here one naming the generated `seq`) goes through `executemany`."""
    writes = await store.writes()
    batches = writes.batches
    assert await writes.submit(cc_insert("seq", seq=1000)) is None
    assert writes.batches == batches + 1
    cc = tables.chat_completions
    async with store.engine.connect() as conn:
        assert await conn.scalar(select(cc.c.seq).where(cc.c.id == "seq")) == 1000


async def test_a_worker_holds_pool_size_plus_one_connections(
    wire: tuple[WireCount, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads share `pool_size` connections (a burst waits for one, it does not open more) and the writer has
    exactly one: what a worker holds is bounded, whatever the load."""
    proxy, url = wire
    store = Store(StorageSettings(url=url, pool_size=2))
    await store.open()
    try:
        responses = await store.responses()
        await asyncio.gather(*(responses.save(response(n), items(n)) for n in range(10)))
        for k in range(3):
            found = await asyncio.gather(
                *(responses.get(f"resp_{n}") for n in range(10)),
                *(responses.input_items(f"resp_{n}") for n in range(10)),
                *(responses.save(response(n), items(n)) for n in range(100 + 10 * k, 110 + 10 * k)),
                responses.update({**response(0), "status": "failed"}),
            )
            assert all(f is not None for f in found[:20])
        assert proxy.most_connected == 3
    finally:
        await store.aclose()


async def test_a_ledger_batch_is_one_round_trip(store: Store, wire: tuple[WireCount, str]) -> None:
    """The usage ledger's rows go through the writer as plain inserts: a flush of 50 rows is one statement."""
    from manifold.access.ledger import Ledger
    from manifold.config import LedgerSettings
    from tests.storage.test_ledger import T0, record

    proxy, _ = wire
    ledger = Ledger(store, LedgerSettings(enabled=True, flush_interval_s=3600, max_batch=500))
    ledger.record(record(0, key="k", team="t", model="m", at=T0, cost_micros=1))
    assert await ledger.flush()  # the first batch prepares the statement
    for n in range(1, 51):
        ledger.record(record(n, key="k", team=None, model="m", at=T0 + n, cost_micros=None, stream=n % 2 == 0))
    trips, (flushed,) = await counted(proxy, ledger.flush())
    assert flushed is True and trips == 1 and ledger.written == 51
    async with store.engine.connect() as conn:
        ids = (await conn.scalars(select(tables.usage.c.request_id).order_by(tables.usage.c.seq))).all()
    assert ids == [f"req-{n}" for n in range(51)]
