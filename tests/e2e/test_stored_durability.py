"""What a stored completion survives: SIGKILL of the server, restarts, several workers migrating at once, and a
database that is not there. On SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from manifold.config import StorageSettings
from manifold.storage.engine import create_engine
from manifold.storage.migrations import MIGRATIONS, applied_versions
from tests.conformance.schema import assert_valid
from tests.databases import BACKENDS, storage_settings
from tests.e2e.conftest import ManifoldProcess, free_port
from tests.fakes.openai_upstream import FakeUpstream

WORKERS = 4
ACKNOWLEDGED_BEFORE_KILL = 40


def config(fake: FakeUpstream, storage: dict[str, str], **server: Any) -> dict[str, Any]:
    return {
        "model_list": [{"model_name": "fake-echo", "provider": "openai", "api_base": fake.base("echo")}],
        "storage": storage,
        "server": server,
    }


class Writer(threading.Thread):
    """Creates stored completions in a loop (every other one streamed) and records those acknowledged: a JSON
    body read in full, or a stream read up to `data: [DONE]`. Stops at the first transport failure."""

    def __init__(self, base_url: str, number: int, acked: list[tuple[str, str]], cond: threading.Condition) -> None:
        super().__init__(daemon=True)
        self.base_url, self.number, self.acked, self.cond = base_url, number, acked, cond

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=30) as http:
            for i in range(10_000):
                text = f"writer {self.number} request {i}"
                body = {"model": "fake-echo", "messages": [{"role": "user", "content": text}], "store": True}
                try:
                    completion_id = self._one(http, body, stream=i % 2 == 1)
                except httpx.HTTPError:
                    return  # the server is gone
                if completion_id is None:
                    return
                with self.cond:
                    self.acked.append((completion_id, text))
                    self.cond.notify_all()

    def _one(self, http: httpx.Client, body: dict[str, Any], stream: bool) -> str | None:
        if not stream:
            resp = http.post("/chat/completions", json=body)
            return str(resp.json()["id"]) if resp.status_code == 200 else None
        with http.stream("POST", "/chat/completions", json={**body, "stream": True}) as resp:
            text = "".join(resp.iter_text())
        if resp.status_code != 200 or not text.endswith("data: [DONE]\n\n"):
            return None
        first = next(line for line in text.split("\n") if line.startswith("data: {"))
        return str(json.loads(first[6:])["id"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_acknowledged_completions_survive_sigkill(backend: str, fake: FakeUpstream, tmp_path: Path) -> None:
    with storage_settings(backend, tmp_path / "data") as storage:
        cfg = config(fake, storage)
        server = ManifoldProcess(cfg, tmp_path)
        acked: list[tuple[str, str]] = []
        cond = threading.Condition()
        writers = [Writer(server.base_url, n, acked, cond) for n in range(WORKERS)]
        try:
            for w in writers:
                w.start()
            with cond:
                reached = cond.wait_for(lambda: len(acked) >= ACKNOWLEDGED_BEFORE_KILL, timeout=300)
            assert reached, f"only {len(acked)} acknowledged:\n{server.log()}"
            server.proc.kill()  # SIGKILL: no shutdown, no flush, requests in flight cut off
            server.proc.wait()
        finally:
            server.stop()
            for w in writers:
                w.join(60)
        assert not any(w.is_alive() for w in writers)
        assert len(acked) >= ACKNOWLEDGED_BEFORE_KILL

        restarted = ManifoldProcess(cfg, tmp_path)
        try:
            with openai.OpenAI(base_url=restarted.base_url, api_key="sk", max_retries=0) as client:
                stored = {c.id: c for c in client.chat.completions.list(limit=100)}
                for completion_id, text in acked:
                    assert completion_id in stored, f"acknowledged {completion_id} lost after SIGKILL"
                    assert stored[completion_id].choices[0].message.content == f"echo: {text}"
                    messages = list(client.chat.completions.messages.list(completion_id))
                    assert [(m.role, m.content) for m in messages] == [("user", text)]
        finally:
            restarted.stop()


@pytest.mark.parametrize("backend", BACKENDS)
def test_workers_starting_together_migrate_once(backend: str, fake: FakeUpstream, tmp_path: Path) -> None:
    """Three workers start on a fresh database at once: each runs the migrations; each version is applied once
    and all of them serve stored completions."""
    with storage_settings(backend, tmp_path / "data") as storage:
        server = ManifoldProcess(config(fake, storage, workers=3), tmp_path)
        try:
            with openai.OpenAI(base_url=server.base_url, api_key="sk", max_retries=0) as client:
                ids = [
                    client.chat.completions.create(
                        model="fake-echo", messages=[{"role": "user", "content": str(i)}], store=True
                    ).id
                    for i in range(12)
                ]
                assert [c.id for c in client.chat.completions.list(limit=5)] == ids
        finally:
            server.stop()
        assert "Traceback" not in server.log()
        assert asyncio.run(_versions(StorageSettings(**storage))) == [m.version for m in MIGRATIONS]


async def _versions(settings: StorageSettings) -> list[int]:
    engine = create_engine(settings)
    try:
        return await applied_versions(engine)
    finally:
        await engine.dispose()


def test_a_database_that_is_down_fails_only_what_stores(fake: FakeUpstream, tmp_path: Path) -> None:
    """The gateway starts and answers everything that stores nothing; what stores gets 503 in the envelope."""
    storage = {"url": f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nothing"}
    server = ManifoldProcess(config(fake, storage), tmp_path)
    try:
        with httpx.Client(base_url=server.base_url, timeout=20) as http:
            message = [{"role": "user", "content": "hi"}]
            assert http.post("/chat/completions", json={"model": "fake-echo", "messages": message}).status_code == 200
            for resp in (
                http.post("/chat/completions", json={"model": "fake-echo", "messages": message, "store": True}),
                http.post(
                    "/chat/completions",
                    json={"model": "fake-echo", "messages": message, "store": True, "stream": True},
                ),
                http.get("/chat/completions"),
                http.get("/chat/completions/chatcmpl-1/messages"),
            ):
                assert resp.status_code == 503, resp.text
                body = resp.json()
                assert_valid("ErrorResponse", body)
                assert body["error"]["code"] == "storage_unavailable"
    finally:
        server.stop()
    log = server.log()
    assert "storage: cannot open postgresql+asyncpg://postgres@127.0.0.1" in log
    assert "Traceback" not in log
