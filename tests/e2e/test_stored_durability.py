"""What a stored completion or response survives: SIGKILL of the server in the middle of a burst of concurrent
writes (group commit: each acknowledged write is in a committed batch), restarts, several workers migrating at
once, and a database that is not there (readiness, retries, a missing driver). On SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from manifold.config import StorageSettings
from manifold.storage.engine import create_engine
from manifold.storage.migrations import MIGRATIONS, applied_versions
from tests.conformance.schema import assert_valid
from tests.databases import BACKENDS, _admin, fresh_postgres_database, storage_settings
from tests.e2e.conftest import ManifoldProcess, free_port
from tests.fakes.openai_upstream import FakeUpstream

WORKERS = 4
ACKNOWLEDGED_BEFORE_KILL = 40
CHAIN_BEFORE_KILL = 3


def config(fake: FakeUpstream, storage: dict[str, Any], tag: str = "", **server: Any) -> dict[str, Any]:
    return {
        "model_list": [
            {"model_name": "fake-echo", "provider": "openai", "api_base": fake.base("echo")},
            # Requests of this model can be told apart in the fake's log (the tag is ignored when answering).
            {"model_name": "fake-tagged", "provider": "openai", "api_base": fake.base(f"echo@{tag or 'none'}")},
        ],
        "storage": storage,
        "server": server,
    }


Ack = tuple[str, str, str]  # (kind: "chat" or "response", id, the user text)


class Writer(threading.Thread):
    """Creates stored chat completions and responses in a loop (each streamed and not, in turn) and records those
    acknowledged: a JSON body read in full, a chat stream read up to `data: [DONE]`, a Responses stream read up
    to `response.completed`. Stops at the first transport failure."""

    def __init__(self, base_url: str, number: int, acked: list[Ack], cond: threading.Condition) -> None:
        super().__init__(daemon=True)
        self.base_url, self.number, self.acked, self.cond = base_url, number, acked, cond

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=30) as http:
            for i in range(10_000):
                text = f"writer {self.number} request {i}"
                kind = "chat" if i % 4 < 2 else "response"
                try:
                    if kind == "chat":
                        created = self._chat(http, text, stream=i % 2 == 1)
                    else:
                        created = self._response(http, text, stream=i % 2 == 1)
                except httpx.HTTPError:
                    return  # the server is gone
                if created is None:
                    return
                with self.cond:
                    self.acked.append((kind, created, text))
                    self.cond.notify_all()

    def _chat(self, http: httpx.Client, text: str, stream: bool) -> str | None:
        body = {"model": "fake-echo", "messages": [{"role": "user", "content": text}], "store": True}
        if not stream:
            resp = http.post("/chat/completions", json=body)
            return str(resp.json()["id"]) if resp.status_code == 200 else None
        with http.stream("POST", "/chat/completions", json={**body, "stream": True}) as resp:
            data = "".join(resp.iter_text())
        if resp.status_code != 200 or not data.endswith("data: [DONE]\n\n"):
            return None
        first = next(line for line in data.split("\n") if line.startswith("data: {"))
        return str(json.loads(first[6:])["id"])

    def _response(self, http: httpx.Client, text: str, stream: bool) -> str | None:
        return create_response(http, {"model": "fake-echo", "input": text}, stream)


def create_response(http: httpx.Client, body: dict[str, Any], stream: bool) -> str | None:
    """The id of a stored response, once acknowledged (None if it was not)."""
    if not stream:
        resp = http.post("/responses", json=body)
        ok = resp.status_code == 200 and resp.json()["status"] == "completed"
        return str(resp.json()["id"]) if ok else None
    with http.stream("POST", "/responses", json={**body, "stream": True}) as resp:
        data = "".join(resp.iter_text())
    events = [json.loads(line[6:]) for line in data.split("\n") if line.startswith("data: {")]
    if resp.status_code != 200 or not events or events[-1]["type"] != "response.completed":
        return None
    return str(events[-1]["response"]["id"])


class Chain(threading.Thread):
    """One conversation, turn after turn, each `previous_response_id` the last acknowledged response."""

    def __init__(self, base_url: str, acked: list[Ack], cond: threading.Condition) -> None:
        super().__init__(daemon=True)
        self.base_url, self.acked, self.cond = base_url, acked, cond

    def run(self) -> None:
        previous: str | None = None
        with httpx.Client(base_url=self.base_url, timeout=30) as http:
            for turn in range(10_000):
                text = f"chain turn {turn}"
                body: dict[str, Any] = {"model": "fake-echo", "input": text}
                if previous is not None:
                    body["previous_response_id"] = previous
                try:
                    created = create_response(http, body, stream=turn % 2 == 1)
                except httpx.HTTPError:
                    return
                if created is None:
                    return
                with self.cond:
                    self.acked.append(("response", created, text))
                    self.cond.notify_all()
                previous = created


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.mark.parametrize(("backend", "workers"), [*((b, 1) for b in BACKENDS), ("sqlite", 2)])
def test_acknowledged_writes_survive_sigkill_in_a_burst(
    backend: str, workers: int, fake: FakeUpstream, tmp_path: Path
) -> None:
    """Concurrent writers (stored chat completions and responses, streamed and not) and one Responses chain;
    `kill -9` while they write (with two workers on one SQLite file: both of them). After a restart every
    acknowledged write is there, and the chain reads back in the order it was written (the model gets every
    turn, oldest first)."""
    tag = uuid.uuid4().hex[:12]
    with storage_settings(backend, tmp_path / "data") as storage:
        cfg = config(fake, storage, tag, workers=workers)
        server = ManifoldProcess(cfg, tmp_path)
        acked: list[Ack] = []
        chain: list[Ack] = []
        cond = threading.Condition()
        writers: list[threading.Thread] = [Writer(server.base_url, n, acked, cond) for n in range(WORKERS)]
        writers.append(Chain(server.base_url, chain, cond))
        try:
            for w in writers:
                w.start()
            # The kill comes once the writers and the chain are all under way (the chain's first turn can be slow:
            # a worker opens its store in the background after it starts answering).
            with cond:
                reached = cond.wait_for(
                    lambda: len(acked) >= ACKNOWLEDGED_BEFORE_KILL and len(chain) >= CHAIN_BEFORE_KILL, timeout=300
                )
            assert reached, f"only {len(acked)} acknowledged, {len(chain)} chain turns:\n{server.log()}"
            # SIGKILL: no shutdown, no flush, requests in flight cut off (the workers first: they would outlive
            # their parent)
            for pid in _descendants(server.proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            server.proc.kill()
            server.proc.wait()
        finally:
            server.stop()
            for w in writers:
                w.join(60)
        assert not any(w.is_alive() for w in writers)
        assert len(acked) >= ACKNOWLEDGED_BEFORE_KILL
        assert {kind for kind, _, _ in acked} == {"chat", "response"}
        assert len(chain) >= CHAIN_BEFORE_KILL

        restarted = ManifoldProcess(cfg, tmp_path)
        try:
            with openai.OpenAI(base_url=restarted.base_url, api_key="sk", max_retries=0) as client:
                stored = {c.id: c for c in client.chat.completions.list(limit=100)}
                for kind, created, text in [*acked, *chain]:
                    if kind == "chat":
                        assert created in stored, f"acknowledged {created} lost after SIGKILL"
                        assert stored[created].choices[0].message.content == f"echo: {text}"
                        messages = list(client.chat.completions.messages.list(created))
                        assert [(m.role, m.content) for m in messages] == [("user", text)]
                    else:
                        response = client.responses.retrieve(created)  # 404 if it was lost
                        assert response.status == "completed" and response.output_text == f"echo: {text}"
                        items = list(client.responses.input_items.list(created))
                        assert [i.content[0].text for i in items] == [text]  # type: ignore[union-attr]
                # The chain as the model sees it on the next turn: every acknowledged turn, in order.
                client.responses.create(model="fake-tagged", input="next", previous_response_id=chain[-1][1])
            sent = [r for r in fake.requests if r.behavior == f"echo@{tag}"][-1].body["messages"]
            expected: list[tuple[str, str]] = []
            for _, _, text in chain:
                expected += [("user", text), ("assistant", f"echo: {text}")]
            assert [(m["role"], _text(m["content"])) for m in sent] == [*expected, ("user", "next")]
        finally:
            restarted.stop()


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content)


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


def test_a_database_down_at_start_up_is_not_ready_and_retried(fake: FakeUpstream, tmp_path: Path) -> None:
    """PostgreSQL answers but the database is not there yet: `/health/ready` says the store is unavailable,
    stored requests get 503 without each trying (and logging) again; the store is retried every
    `retry_interval_s` and the server becomes ready once the database exists."""
    with fresh_postgres_database() as url:
        missing = f"{url}_later"
        name = missing.rsplit("/", 1)[1]
        server = ManifoldProcess(config(fake, {"url": missing, "retry_interval_s": 1.0}), tmp_path)
        try:
            with httpx.Client(base_url=server.url, timeout=20) as http:
                started = time.monotonic()
                ready = http.get("/health/ready")
                while ready.json()["storage"]["state"] == "opening" and time.monotonic() - started < 30:
                    time.sleep(0.05)
                    ready = http.get("/health/ready")
                assert ready.status_code == 503
                assert ready.json()["status"] == "unavailable"
                assert ready.json()["storage"] == {"ready": False, "state": "unavailable"}
                message = [{"role": "user", "content": "hi"}]
                for _ in range(30):
                    resp = http.post(
                        "/v1/chat/completions", json={"model": "fake-echo", "messages": message, "store": True}
                    )
                    assert resp.status_code == 503 and resp.json()["error"]["code"] == "storage_unavailable"
                failed_attempts = server.log().count("storage: cannot open")
                elapsed = time.monotonic() - started
                assert 1 <= failed_attempts <= elapsed / 1.0 + 2, server.log()  # per retry, not per request
                asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
                try:
                    deadline = time.monotonic() + 30
                    while http.get("/health/ready").status_code != 200 and time.monotonic() < deadline:
                        time.sleep(0.1)
                    ready = http.get("/health/ready")
                    assert ready.status_code == 200, ready.text
                    assert ready.json()["storage"] == {"ready": True, "state": "open"}
                    resp = http.post(
                        "/v1/chat/completions", json={"model": "fake-echo", "messages": message, "store": True}
                    )
                    assert resp.status_code == 200
                    assert http.get(f"/v1/chat/completions/{resp.json()['id']}").status_code == 200
                finally:
                    server.stop()
                    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            server.stop()
        assert "Traceback" not in server.log()


# Runs the CLI as `python -m manifold` would, with `import asyncpg` failing as it does where the driver is not
# installed (a None entry in sys.modules makes the import raise ImportError).
_WITHOUT_ASYNCPG = (
    "import sys; sys.modules['asyncpg'] = None; from manifold.cli import main; sys.exit(main(sys.argv[1:]))"
)


@pytest.mark.parametrize("command", ["check", "serve"])
def test_a_postgres_url_without_the_driver_is_refused_at_start_up(command: str, tmp_path: Path) -> None:
    path = tmp_path / "manifold.yaml"
    path.write_text(json.dumps({"model_list": [], "storage": {"url": "postgresql+asyncpg://u@127.0.0.1/db"}}))
    args = [command, "--config", str(path), *(["--port", str(free_port())] if command == "serve" else [])]
    refused = subprocess.run(
        [sys.executable, "-c", _WITHOUT_ASYNCPG, *args], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "storage.url: PostgreSQL needs the asyncpg driver" in refused.stderr
    assert "pip install 'manifold[postgres]'" in refused.stderr
    assert "Traceback" not in refused.stderr
    if command == "check":  # the same config passes where the driver is installed
        accepted = subprocess.run(
            [sys.executable, "-m", "manifold", *args], capture_output=True, text=True, timeout=60, cwd=tmp_path
        )
        assert accepted.returncode == 0, accepted.stderr
