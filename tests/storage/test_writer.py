"""The durable-write queue (group commit) against real databases: concurrent writes share transactions, a
failing batch fails only its own writes, a caller that leaves does not cancel its write, and writes keep the
order they were made in."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, func, select
from sqlalchemy.exc import OperationalError

from manifold.config import StorageSettings
from manifold.errors import ServiceUnavailableError
from manifold.storage import Store, tables
from manifold.storage.writer import DurableWrites, Write
from tests.databases import BACKENDS, storage_settings


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


def completion(name: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{name}",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": name}}],
    }


def row(name: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{name}",
        "model": "m",
        "created": 1,
        "metadata_json": "{}",
        "request_id": None,
        "completion": "{}",
        "stored_at": 1,
    }


def insert(name: str) -> Write[None]:
    return Write([(tables.chat_completions, [row(name)])])


async def stored_ids(store: Store) -> list[str]:
    async with store.engine.connect() as conn:
        cc = tables.chat_completions
        return list((await conn.scalars(select(cc.c.id).order_by(cc.c.seq))).all())


def _gone(conn: Connection) -> None:
    raise OperationalError("COMMIT", {}, ConnectionResetError("server closed the connection"))


def _bug(conn: Connection) -> None:
    raise RuntimeError("a write whose own code is wrong")


async def test_concurrent_writes_share_transactions(store: Store) -> None:
    writes = await store.writes()
    cc = await store.chat_completions()
    await asyncio.gather(
        *(cc.save(completion(str(n)), [{"role": "user", "content": "hi"}], {"n": str(n)}) for n in range(40))
    )
    assert await cc.count() == 40
    assert writes.writes == 40
    assert writes.batches < 40  # group commit: the 40 writes did not take 40 transactions
    assert (await cc.list(metadata={"n": "7"})).items[0]["id"] == "chatcmpl-7"
    assert [m for _, m in (await cc.messages("chatcmpl-39") or ([], False))[0]] == [{"role": "user", "content": "hi"}]


async def test_a_batch_that_fails_fails_only_its_own_writes(store: Store) -> None:
    """Three batches (writes made in one tick form one batch): the middle one loses its connection; its writes
    fail with the documented 503 and none of them is stored; the batches before and after are."""
    writes = await store.writes()
    await asyncio.gather(*(writes.submit(insert(f"a{n}")) for n in range(3)))
    before = writes.batches
    middle = await asyncio.gather(
        writes.submit(insert("b0")),
        writes.submit(Write(apply=_gone)),
        writes.submit(insert("b2")),
        return_exceptions=True,
    )
    assert writes.batches == before + 1  # one transaction, not retried write by write: the database was "gone"
    assert all(isinstance(r, ServiceUnavailableError) and r.code == "storage_unavailable" for r in middle), middle
    await asyncio.gather(*(writes.submit(insert(f"c{n}")) for n in range(3)))
    assert await stored_ids(store) == [f"chatcmpl-{x}" for x in ("a0", "a1", "a2", "c0", "c1", "c2")]


async def test_a_write_with_bad_data_fails_alone(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    """A duplicate id or a write's own error breaks its batch; the batch runs again write by write, so only the
    faulty writes fail and the others of the batch are stored. What clients sent stays out of the log."""
    writes = await store.writes()
    await writes.submit(insert("taken"))
    duplicate = Write([(tables.chat_completions, [{**row("taken"), "completion": '"sk-live-secret-in-a-message"'}])])
    results = await asyncio.gather(
        writes.submit(insert("x0")),
        writes.submit(duplicate),  # duplicate id: IntegrityError
        writes.submit(insert("x1")),
        writes.submit(Write(apply=_bug)),
        writes.submit(insert("x2")),
        return_exceptions=True,
    )
    assert results[0] is None and results[2] is None and results[4] is None, results
    assert isinstance(results[1], ServiceUnavailableError)
    assert isinstance(results[3], RuntimeError) and "own code" in str(results[3])
    assert await stored_ids(store) == [f"chatcmpl-{x}" for x in ("taken", "x0", "x1", "x2")]
    assert "retrying each on its own" in caplog.text
    assert "sk-live-secret" not in caplog.text


async def test_a_caller_that_leaves_does_not_cancel_its_write(store: Store) -> None:
    cc = await store.chat_completions()
    task = asyncio.ensure_future(cc.save(completion("left"), [], None))
    await asyncio.sleep(0)  # the write is queued
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await store.aclose()  # lets pending writes finish before the engine closes
    await store.open()
    assert await (await store.chat_completions()).get("chatcmpl-left") is not None


async def test_writes_keep_their_order_and_results(store: Store) -> None:
    """Within a batch, writes run in the order they were made and each gets its own result: a response saved
    and then updated in the same batch ends up updated; its chain reads back in order."""
    responses = await store.responses()
    base = {"object": "response", "created_at": 1, "model": "m", "output": []}
    first = {**base, "id": "resp_1", "status": "completed"}
    second = {**base, "id": "resp_2", "status": "in_progress", "previous_response_id": "resp_1"}
    done = {**second, "status": "completed"}
    items = [{"type": "message", "id": f"msg_{i}", "role": "user", "content": []} for i in range(5)]
    results = await asyncio.gather(
        responses.save(first, items[:2]),
        responses.save(second, items[2:]),
        responses.update(done),
        responses.update({**base, "id": "resp_nope", "status": "completed"}),
    )
    assert results == [None, None, True, False]
    stored = await responses.get("resp_2")
    assert stored is not None and stored.response["status"] == "completed"
    assert [i["id"] for i in await responses.input_items("resp_1") or []] == ["msg_0", "msg_1"]
    assert [i["id"] for i in await responses.input_items("resp_2") or []] == ["msg_2", "msg_3", "msg_4"]


async def test_writes_after_close_are_refused(store: Store) -> None:
    writes = await store.writes()
    await store.aclose()
    with pytest.raises(ServiceUnavailableError):
        await writes.submit(insert("late"))


async def test_batches_are_bounded(settings: StorageSettings) -> None:
    store = Store(settings)
    await store.open()
    try:
        writes = DurableWrites(store.engine, max_batch=4)
        await asyncio.gather(*(writes.submit(insert(str(n))) for n in range(10)))
        assert writes.batches == 3  # 4 + 4 + 2
        async with store.engine.connect() as conn:
            assert await conn.scalar(select(func.count()).select_from(tables.chat_completions)) == 10
        await writes.aclose()
    finally:
        await store.aclose()


def test_the_sqlite_write_lock_is_shared_between_processes_and_bounded(tmp_path: Path) -> None:
    """Another process holding the lock makes this one wait, not fail at once; past the bound, it fails (the
    batch then gets 503), and it gets the lock as soon as the other process lets go."""
    import subprocess
    import sys

    from manifold.storage.engine import WriteLock

    path = str(tmp_path / "manifold.db-writer.lock")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.readline()",
            path,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    lock = WriteLock(path)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(TimeoutError):
            lock.acquire(timeout_s=0.2)
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(10)
        lock.acquire(timeout_s=10)
        lock.release()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        lock.close()
