"""Stored responses on SQLite and PostgreSQL: save/get/update/delete, input item pages, and the background
lease (renewal by its owner, the failed mark when it runs out, never over a renewed one)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from manifold.config import StorageSettings
from manifold.errors import InvalidRequestError
from manifold.storage import Store
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


def response(n: int, status: str = "completed", **extra: Any) -> dict[str, Any]:
    return {
        "id": f"resp_{n}",
        "object": "response",
        "created_at": 1_700_000_000,
        "model": "m",
        "status": status,
        "output": [],
        **extra,
    }


def items(n: int) -> list[dict[str, Any]]:
    return [{"type": "message", "id": f"msg_{i}", "role": "user", "content": []} for i in range(n)]


async def test_save_get_update_delete(store: Store) -> None:
    responses = await store.responses()
    await responses.save(response(1, previous_response_id=None), items(3), "req_1")
    stored = await responses.get("resp_1")
    assert stored is not None and stored.response["status"] == "completed" and stored.owner is None
    assert await responses.input_items("resp_1") == items(3)
    assert not await responses.update(response(1, "failed"), only_if_unfinished=True)
    assert await responses.update(response(1, "incomplete"))
    stored = await responses.get("resp_1")
    assert stored is not None and stored.response["status"] == "incomplete"
    assert await responses.delete("resp_1")
    assert await responses.get("resp_1") is None and await responses.input_items("resp_1") is None
    assert not await responses.delete("resp_1")


async def test_input_item_pages(store: Store) -> None:
    responses = await store.responses()
    await responses.save(response(2), items(5))
    page = await responses.input_item_page("resp_2", after=None, limit=2, order="desc")
    assert page is not None and [i["id"] for i in page.items] == ["msg_4", "msg_3"] and page.has_more
    page = await responses.input_item_page("resp_2", after="msg_3", limit=2, order="desc")
    assert page is not None and [i["id"] for i in page.items] == ["msg_2", "msg_1"] and page.has_more
    page = await responses.input_item_page("resp_2", after="msg_1", limit=2, order="asc")
    assert page is not None and [i["id"] for i in page.items] == ["msg_2", "msg_3"] and page.has_more
    page = await responses.input_item_page("resp_2", after="msg_3", limit=5, order="asc")
    assert page is not None and [i["id"] for i in page.items] == ["msg_4"] and not page.has_more
    with pytest.raises(InvalidRequestError) as err:
        await responses.input_item_page("resp_2", after="msg_9", limit=2, order="asc")
    assert err.value.param == "after"
    assert await responses.input_item_page("resp_none", after=None, limit=2, order="asc") is None


async def test_leases(store: Store) -> None:
    responses = await store.responses()
    now = int(time.time() * 1000)
    await responses.save(response(3, "in_progress"), [], owner="a", lease_until=now + 60_000)
    await responses.save(response(4, "queued"), [], owner="a", lease_until=now - 1)
    await responses.save(response(5, "in_progress"), [], owner="b", lease_until=now - 1)
    assert {r["id"] for r in await responses.expired()} == {"resp_4", "resp_5"}
    # The owner renews its own; another's claim is not its to renew.
    assert await responses.renew_leases("a", ["resp_3", "resp_4", "resp_5"], now + 60_000) == {"resp_3", "resp_4"}
    assert {r["id"] for r in await responses.expired()} == {"resp_5"}
    # A renewed lease is never failed; an expired one is, once.
    assert not await responses.fail_if_expired(response(4, "failed"))
    assert await responses.fail_if_expired(response(5, "failed"))
    assert not await responses.fail_if_expired(response(5, "failed"))
    stored = await responses.get("resp_5")
    assert stored is not None and stored.response["status"] == "failed" and stored.lease_until is None
    # Cancelled elsewhere: the owner's renewal no longer returns it.
    assert await responses.update(response(3, "cancelled"), only_if_unfinished=True)
    assert await responses.renew_leases("a", ["resp_3"], now + 60_000) == set()


async def test_a_queued_response_with_a_live_lease_reads_as_in_progress(store: Store) -> None:
    """The process running a background response does not write `in_progress` (one write fewer per response):
    its live lease says it runs. Once the lease ran out, it reads as stored (and is failed as lost)."""
    responses = await store.responses()
    now = int(time.time() * 1000)
    await responses.save(response(6, "queued", background=True), [], owner="a", lease_until=now + 60_000)
    await responses.save(response(7, "queued", background=True), [], owner="a", lease_until=now - 1)
    running = await responses.get("resp_6")
    assert running is not None and running.response["status"] == "in_progress"
    lost = await responses.get("resp_7")
    assert lost is not None and lost.response["status"] == "queued"
    assert [r["id"] for r in await responses.expired()] == ["resp_7"]
    # A cancel from another process still wins over the running one's final write.
    assert await responses.update(response(6, "cancelled", background=True), only_if_unfinished=True)
    assert not await responses.update(response(6, "completed", background=True), only_if_unfinished=True)
    stored = await responses.get("resp_6")
    assert stored is not None and stored.response["status"] == "cancelled"


async def test_a_chain_reads_back_in_two_statements(store: Store) -> None:
    """`chain` walks `previous_response_id` in the database: newest first, each link with its input items, in
    two statements whatever the length; the walk ends at a deleted link and at the limit."""
    responses = await store.responses()
    previous = None
    for n in range(1, 9):
        own = [{"type": "message", "id": f"msg_{n}_{i}", "role": "user", "content": []} for i in range(n % 3)]
        await responses.save(response(n, previous_response_id=previous), own, f"req_{n}")
        previous = f"resp_{n}"
    statements: list[str] = []
    event.listen(store.engine.sync_engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    links = await responses.chain("resp_8", 100)
    assert len([s for s in statements if s != "BEGIN"]) == 2  # SQLite: SQLAlchemy's own BEGIN besides
    assert [link.stored.response["id"] for link in links] == [f"resp_{n}" for n in range(8, 0, -1)]
    assert [[i["id"] for i in link.input_items] for link in links] == [
        [f"msg_{n}_{i}" for i in range(n % 3)] for n in range(8, 0, -1)
    ]
    assert [link.stored.response["id"] for link in await responses.chain("resp_8", 3)] == ["resp_8", "resp_7", "resp_6"]
    assert await responses.delete("resp_5")
    assert [link.stored.response["id"] for link in await responses.chain("resp_8", 100)] == [
        "resp_8",
        "resp_7",
        "resp_6",
    ]
    assert [link.stored.response["id"] for link in await responses.chain("resp_3", 100)] == [
        "resp_3",
        "resp_2",
        "resp_1",
    ]
    assert await responses.chain("resp_5", 100) == []
