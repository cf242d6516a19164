"""access/resp.py, the pipelined Redis connection, against scripted servers on 127.0.0.1: replies matched to
their commands in order, error replies, and the per-connection timer that bounds every wait (a server that stops
answering fails the waiters with TimeoutError; the next command connects again)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from manifold.access.resp import RespConnection, RespError


class Scripted:
    """A server that answers each command (one per line of RESP array) with `answer(n)`, or not at all while
    `silent` is set; counts connections."""

    def __init__(self, answer: Callable[[int], bytes]) -> None:
        self.answer = answer
        self.silent = False
        self.connections = 0
        self.commands = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while line := await reader.readline():
                if not line.startswith(b"*"):
                    continue
                for _ in range(int(line[1:])):
                    size = int((await reader.readline())[1:])
                    await reader.readexactly(size + 2)
                self.commands += 1
                if not self.silent:
                    writer.write(self.answer(self.commands))
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def aclose(self) -> None:
        assert self.server is not None
        self.server.close()


@pytest.fixture
async def server() -> AsyncIterator[Scripted]:
    s = Scripted(lambda n: b"-ERR number %d\r\n" % n if n % 5 == 0 else b":%d\r\n" % n)
    yield s
    await s.aclose()


async def test_pipelined_replies_reach_their_callers(server: Scripted) -> None:
    conn = RespConnection(f"redis://127.0.0.1:{await server.start()}/0", timeout_s=5)
    try:
        results = await asyncio.gather(*(conn.call("INCR", f"k{i}") for i in range(9)), return_exceptions=True)
        assert results[:4] == [1, 2, 3, 4] and results[5:] == [6, 7, 8, 9]
        assert isinstance(results[4], RespError) and str(results[4]) == "ERR number 5"
        assert server.connections == 1
    finally:
        await conn.aclose()


async def test_a_server_that_stops_answering_times_out_every_waiter(server: Scripted) -> None:
    conn = RespConnection(f"redis://127.0.0.1:{await server.start()}/0", timeout_s=0.3)
    try:
        assert await conn.call("PING") == 1
        server.silent = True
        async with asyncio.timeout(5):  # bounded by the connection's own timer, well within this
            results = await asyncio.gather(conn.call("GET", "a"), conn.call("GET", "b"), return_exceptions=True)
        assert [type(r) for r in results] == [TimeoutError, TimeoutError]
        server.silent = False
        assert await conn.call("PING") == 4  # a new connection (the late replies of the old one are not read)
        assert server.connections == 2
    finally:
        await conn.aclose()


async def test_a_late_reply_within_the_timeout_is_not_cut(server: Scripted) -> None:
    port = await server.start()
    conn = RespConnection(f"redis://127.0.0.1:{port}/0", timeout_s=1.0)
    try:
        assert await conn.call("PING") == 1
        # Commands sent one after another, each answered: the timer re-arms for the oldest waiter each time.
        for expected in range(2, 8):
            if expected == 5:
                with pytest.raises(RespError):
                    await conn.call("PING")
                continue
            await asyncio.sleep(0.3)
            assert await conn.call("PING") == expected
        assert server.connections == 1
    finally:
        await conn.aclose()
