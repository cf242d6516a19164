"""The usage ledger end to end, with real `manifold serve` processes and real databases: `/admin/usage` and
`manifold usage` exact after known traffic (streamed and not); SIGTERM under load leaves a row for every
acknowledged request; SIGKILL loses only the rows buffered since the last flush; a PostgreSQL server (one this
test runs itself) stopped and restarted under load: rows kept up to the bound and written once it is back, the
rest dropped and counted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from manifold.config import StorageSettings
from manifold.storage.engine import create_engine
from tests.databases import BACKENDS, storage_settings
from tests.e2e.conftest import ManifoldProcess, free_port
from tests.fakes.openai_upstream import FakeUpstream

MASTER = "sk-master-ledger-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {MASTER}"}
PROMPT = "count these five words"


def config(fake: FakeUpstream, storage: dict[str, Any], echo: str = "echo", **ledger: Any) -> dict[str, Any]:
    return {
        "model_list": [
            {"model_name": "fake-echo", "provider": "openai", "api_base": fake.base(echo)},
            {"model_name": "fake-details", "provider": "openai", "api_base": fake.base("details:2,3")},
        ],
        "storage": storage,
        "auth": {"master_key": MASTER},
        "ledger": {"flush_interval_s": 0.05, **ledger},
    }


@pytest.fixture(params=BACKENDS)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    with storage_settings(request.param, tmp_path / "data") as settings:
        yield settings


def serve(settings: dict[str, Any], workdir: Path) -> ManifoldProcess:
    """A server whose store is open (migrated): the test reads the usage table directly."""
    server = ManifoldProcess(settings, workdir)
    try:
        wait_until("the store is open", lambda: httpx.get(server.url + "/health/ready", timeout=10).status_code == 200)
    except BaseException:
        server.stop()
        raise
    return server


def ledger_rows(storage: dict[str, Any], cwd: Path) -> list[dict[str, Any]]:
    """The usage table as the database has it (SQLite paths are relative to the server's directory)."""

    async def read() -> list[dict[str, Any]]:
        from sqlalchemy import select

        from manifold.storage.tables import usage

        settings = dict(storage)
        if "data_dir" in settings:
            settings["data_dir"] = str(cwd / settings["data_dir"])
        engine = create_engine(StorageSettings(**settings))
        try:
            async with engine.connect() as conn:
                result = await conn.execute(select(usage).order_by(usage.c.seq))
                return [dict(r) for r in result.mappings().all()]
        finally:
            await engine.dispose()

    return asyncio.run(read())


def wait_until(what: str, check: Callable[[], bool], timeout: float = 30.0, detail: Callable[[], Any] = str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what} {detail()}")
        time.sleep(0.05)


def usage(server: ManifoldProcess, **params: str) -> dict[str, Any]:
    answer = httpx.get(server.url + "/admin/usage", params=params, headers=ADMIN, timeout=10)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def by_group(page: dict[str, Any]) -> dict[Any, dict[str, Any]]:
    return {item["group"]: item for item in page["data"]}


def test_grouped_usage_after_known_traffic(fake: FakeUpstream, storage: dict[str, Any], tmp_path: Path) -> None:
    server = serve(config(fake, storage), tmp_path)
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key=MASTER, max_retries=0)
        messages: Any = [{"role": "user", "content": PROMPT}]
        first = client.chat.completions.create(model="fake-echo", messages=messages)
        assert first.usage is not None
        p, c = first.usage.prompt_tokens, first.usage.completion_tokens
        for _ in range(3):
            client.chat.completions.create(model="fake-echo", messages=messages)
        for _ in range(2):  # streamed without include_usage: the client gets no usage, the ledger has it
            chunks = list(client.chat.completions.create(model="fake-echo", messages=messages, stream=True))
            assert all(chunk.usage is None for chunk in chunks)
        for _ in range(2):
            chunks = list(
                client.chat.completions.create(
                    model="fake-details", messages=messages, stream=True, stream_options={"include_usage": True}
                )
            )
            last = chunks[-1].usage
            assert last is not None and last.prompt_tokens_details is not None
            assert last.prompt_tokens_details.cached_tokens == 2
        client.chat.completions.create(model="fake-details", messages=messages)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="no-such-model", messages=messages)
        httpx.get(server.url + "/health", timeout=5)  # no row
        total = 10
        wait_until(f"{total} rows", lambda: sum(g["requests"] for g in usage(server)["data"]) == total)

        page = usage(server, group_by="model")
        assert (page["object"], page["group_by"], page["has_more"]) == ("list", "model", False)
        models = by_group(page)
        assert models == {
            "fake-echo": {
                "object": "usage.group",
                "group": "fake-echo",
                "requests": 6,
                "input_tokens": 6 * p,
                "cached_input_tokens": 0,
                "output_tokens": 6 * c,
                "reasoning_tokens": 0,
                "cost_micros": None,  # no price known on this branch's deployments
                "requests_without_cost": 6,
            },
            "fake-details": {
                "object": "usage.group",
                "group": "fake-details",
                "requests": 3,
                "input_tokens": 3 * p,
                "cached_input_tokens": 6,
                "output_tokens": 3 * c,
                "reasoning_tokens": 9,
                "cost_micros": None,
                "requests_without_cost": 3,
            },
            "no-such-model": {
                "object": "usage.group",
                "group": "no-such-model",
                "requests": 1,
                "input_tokens": 0,
                "cached_input_tokens": 0,
                "output_tokens": 0,
                "reasoning_tokens": 0,
                "cost_micros": None,
                "requests_without_cost": 1,
            },
        }
        deployments = by_group(usage(server, group_by="deployment"))
        assert sorted((g["requests"], g["input_tokens"]) for g in deployments.values()) == [
            (1, 0),
            (3, 3 * p),
            (6, 6 * p),
        ]
        assert deployments[None]["requests"] == 1  # the 404 reached no deployment
        keys = usage(server, group_by="key")
        assert [(g["group"], g["requests"]) for g in keys["data"]] == [(None, total)]  # the master key
        today = time.strftime("%Y-%m-%d", time.gmtime())
        days = usage(server, group_by="day", start=today)
        assert [(g["group"], g["requests"], g["output_tokens"]) for g in days["data"]] == [(today, total, 9 * c)]
        assert usage(server, group_by="day", end=today)["data"] == []
        assert usage(server, start=str(int(time.time()) + 3600))["data"] == []

        rows = ledger_rows(storage, tmp_path)
        assert len(rows) == total
        streamed = [r for r in rows if r["stream"]]
        assert len(streamed) == 4
        assert all(r["ttft_ms"] is not None and r["output_tokens"] == c for r in streamed)
        assert all(r["endpoint"] == "/v1/chat/completions" and r["request_id"] for r in rows)
        assert sorted(r["status"] for r in rows) == [200] * 9 + [404]
        assert all(r["attempts"] == 1 for r in rows if r["status"] == 200)
        assert all(r["latency_ms"] >= 0 and r["key_id"] is None for r in rows)

        # The same answer from the command line, against the same database.
        config_path = next(tmp_path.glob("config-*.yaml"))
        cli = subprocess.run(
            [sys.executable, "-m", "manifold", "usage", "--config", str(config_path), "--group-by", "model", "--json"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        assert json.loads(cli.stdout) == page
        table = subprocess.run(
            [sys.executable, "-m", "manifold", "usage", "--config", str(config_path), "--group-by", "model"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert lines[0].split() == [
            "model",
            "requests",
            "input_tokens",
            "cached_input_tokens",
            "output_tokens",
            "reasoning_tokens",
            "cost_micros",
            "requests_without_cost",
        ]
        assert lines[1].split() == ["fake-details", "3", str(3 * p), "6", str(3 * c), "9", "-", "3"]
        bad = subprocess.run(
            [sys.executable, "-m", "manifold", "usage", "--config", str(config_path), "--start", "someday"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert bad.returncode == 2
        assert bad.stderr.startswith("manifold usage: --start: Invalid 'start'")
    finally:
        server.stop()


def test_admin_usage_refusals(fake: FakeUpstream, tmp_path: Path) -> None:
    server = serve(config(fake, {"data_dir": "data"}), tmp_path)
    try:
        url = server.url + "/admin/usage"
        for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"x-api-key": MASTER[:-1]}):
            answer = httpx.get(url, headers=headers, timeout=10)
            assert answer.status_code == 401
            assert answer.json()["error"]["code"] == "invalid_api_key"
            assert MASTER not in answer.text
        for header in ("api-key", "x-api-key"):
            assert httpx.get(url, headers={header: MASTER}, timeout=10).status_code == 200
        for params, param in (({"group_by": "color"}, "group_by"), ({"start": "soon"}, "start"), ({"x": "1"}, "x")):
            answer = httpx.get(url, params=params, headers=ADMIN, timeout=10)
            assert answer.status_code == 400, answer.text
            error = answer.json()["error"]
            assert (error["type"], error["param"]) == ("invalid_request_error", param)
    finally:
        server.stop()


def test_off_by_default_without_a_master_key(fake: FakeUpstream, tmp_path: Path) -> None:
    settings = config(fake, {"data_dir": "data"})
    del settings["auth"], settings["ledger"]
    server = serve(settings, tmp_path)
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0)
        client.chat.completions.create(model="fake-echo", messages=[{"role": "user", "content": PROMPT}])
        # No master key: the admin API is closed; the ledger is off (its table exists, empty).
        assert httpx.get(server.url + "/admin/usage", headers=ADMIN, timeout=10).status_code == 401
    finally:
        server.stop()
    assert ledger_rows({"data_dir": "data"}, tmp_path) == []


class Load(threading.Thread):
    """Requests in a loop, streamed and not in turn, each with its own `x-request-id`; those acknowledged (200
    and the body read in full: a stream up to `data: [DONE]`) are recorded. Stops at the first transport error
    (the server is gone)."""

    def __init__(self, base_url: str, number: int, acked: list[str], stop: threading.Event | None = None) -> None:
        super().__init__(daemon=True)
        self.base_url, self.number, self.acked, self.stop = base_url, number, acked, stop
        self.refused = 0

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=30, headers=ADMIN) as http:
            for i in range(100_000):
                if self.stop is not None and self.stop.is_set():
                    return
                request_id = f"load-{self.number}-{i}-{uuid.uuid4().hex[:6]}"
                body = {"model": "fake-echo", "messages": [{"role": "user", "content": PROMPT}]}
                try:
                    if i % 2:
                        with http.stream(
                            "POST",
                            "/chat/completions",
                            json={**body, "stream": True},
                            headers={"x-request-id": request_id},
                        ) as answer:
                            lines = list(answer.iter_lines())
                            ok = answer.status_code == 200 and "data: [DONE]" in lines
                    else:
                        answer = http.post("/chat/completions", json=body, headers={"x-request-id": request_id})
                        ok = answer.status_code == 200 and answer.json()["object"] == "chat.completion"
                except (httpx.HTTPError, json.JSONDecodeError):
                    return
                if ok:
                    self.acked.append(request_id)
                else:
                    self.refused += 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigterm_under_load_leaves_a_row_for_every_acknowledged_request(
    fake: FakeUpstream, backend: str, tmp_path: Path
) -> None:
    with storage_settings(backend, tmp_path / "data") as storage:
        # Slow chunks keep requests in flight when the signal comes; a long flush interval keeps rows buffered,
        # so what the test sees written is the shutdown's flush.
        server = serve(config(fake, storage, echo="slow_tokens:0.01", flush_interval_s=30), tmp_path)
        acked: list[str] = []
        threads = [Load(server.base_url, n, acked) for n in range(8)]
        for t in threads:
            t.start()
        wait_until("60 acknowledged requests", lambda: len(acked) >= 60)
        server.proc.send_signal(signal.SIGTERM)
        # uvicorn raises the signal again once it shut down gracefully: -SIGTERM is a clean exit
        assert server.proc.wait(30) in (0, -signal.SIGTERM), server.log()
        assert "Application shutdown complete" in server.log()
        for t in threads:
            t.join(30)
        server.stop()
        rows = ledger_rows(storage, tmp_path)
        written = {r["request_id"] for r in rows}
        missing = [request_id for request_id in acked if request_id not in written]
        assert not missing, f"{len(missing)} of {len(acked)} acknowledged requests have no row: {missing[:5]}"
        assert len(rows) == len(written)  # one row per request
        ok = [r for r in rows if r["request_id"] in set(acked)]
        assert all(r["status"] == 200 and r["output_tokens"] is not None for r in ok)


def test_sigkill_loses_only_the_rows_since_the_last_flush(fake: FakeUpstream, tmp_path: Path) -> None:
    """`max_batch` rows trigger a flush at once; the ones after wait for the interval (60 s, longer than the
    test), so a SIGKILL then loses exactly those."""
    storage = {"data_dir": "data"}
    server = serve(config(fake, storage, flush_interval_s=60, max_batch=10), tmp_path)
    try:
        http = httpx.Client(base_url=server.base_url, headers=ADMIN, timeout=10)
        body = {"model": "fake-echo", "messages": [{"role": "user", "content": PROMPT}]}
        ids = [f"kill-{i}" for i in range(14)]
        for request_id in ids[:10]:
            assert http.post("/chat/completions", json=body, headers={"x-request-id": request_id}).status_code == 200
        wait_until("the first batch is written", lambda: len(ledger_rows(storage, tmp_path)) == 10)
        for request_id in ids[10:]:
            assert http.post("/chat/completions", json=body, headers={"x-request-id": request_id}).status_code == 200
        server.proc.kill()
        server.proc.wait(10)
    finally:
        server.stop()
    assert [r["request_id"] for r in ledger_rows(storage, tmp_path)] == ids[:10]


def _postgres_bin() -> Path | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


class OwnPostgres:
    """A PostgreSQL cluster of this test's own (initdb, pg_ctl) on a free port, so it can be stopped and
    started without touching the shared server at 127.0.0.1:5432. As root it runs as the `postgres` user
    (PostgreSQL refuses to run as root)."""

    def __init__(self) -> None:
        bin_dir = _postgres_bin()
        if bin_dir is None:
            pytest.skip("PostgreSQL's initdb/pg_ctl are not installed")
        self.bin = bin_dir
        self.port = free_port()
        # Its own directory under /tmp: pytest's are private to the user running the tests.
        self.dir = Path(tempfile.mkdtemp(prefix="manifold-pg-"))
        self.data = self.dir / "cluster"
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self.prefix, str(self.bin / tool), *args], capture_output=True, timeout=120, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stdout}{done.stderr}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.dir / "log"), "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.SubprocessError):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def dropped_total(server: ManifoldProcess) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("manifold_ledger_dropped_rows_total "):
            return float(line.split()[1])
    return 0.0


def test_database_stopped_and_restarted_under_load(fake: FakeUpstream, tmp_path: Path) -> None:
    """Before the outage every row is written; during it the requests keep being served (the ledger is off
    their path) and the ledger keeps `max_buffered_rows` rows, dropping and counting the rest; once the database
    is back the kept rows are written, and later ones as usual."""
    postgres = OwnPostgres()
    try:
        postgres.start()
        storage = {"url": postgres.url, "retry_interval_s": 0.5}
        bound = 200
        server = serve(config(fake, storage, max_buffered_rows=bound), tmp_path)
        try:
            # One request written first: the writer's connection is open before the load (opening it takes
            # long enough for a buffer this small to fill).
            before = [f"warm-{uuid.uuid4().hex[:6]}"]
            body = {"model": "fake-echo", "messages": [{"role": "user", "content": PROMPT}]}
            headers = {**ADMIN, "x-request-id": before[0]}
            assert httpx.post(server.base_url + "/chat/completions", json=body, headers=headers).status_code == 200
            wait_until("the first row written", lambda: len(ledger_rows(storage, tmp_path)) == 1)
            stop = threading.Event()
            # One client at a time around the outage (the ledger keeps up with it easily); four during it.
            threads = [Load(server.base_url, 0, before, stop)]
            for t in threads:
                t.start()
            wait_until("20 acknowledged requests", lambda: len(before) >= 20)
            stop.set()
            for t in threads:
                t.join(30)
            wait_until(
                "every row before the outage written",
                lambda: len(ledger_rows(storage, tmp_path)) == len(before),
                detail=lambda: (len(ledger_rows(storage, tmp_path)), len(before)),
            )

            postgres.stop()
            during: list[str] = []
            stop = threading.Event()
            threads = [Load(server.base_url, 10 + n, during, stop) for n in range(4)]
            for t in threads:
                t.start()
            wait_until("300 acknowledged requests during the outage", lambda: len(during) >= 300, timeout=60)
            stop.set()
            for t in threads:
                t.join(30)
            assert all(t.refused == 0 for t in threads)  # served while the database was down
            wait_until(
                "the drops counted",
                lambda: dropped_total(server) == len(during) - bound,
                detail=lambda: (dropped_total(server), len(during), len(set(during))),
            )
            # logged by the writer's next attempt (at most one line per flush interval, backing off to 5 s)
            wait_until("the drops logged", lambda: "usage row(s) dropped" in server.log())
            assert "cannot write usage rows" in server.log()

            postgres.start()
            wait_until("the kept rows written", lambda: len(ledger_rows(storage, tmp_path)) == len(before) + bound)
            after: list[str] = []
            stop = threading.Event()
            threads = [Load(server.base_url, 20, after, stop)]
            for t in threads:
                t.start()
            wait_until("20 acknowledged requests after the outage", lambda: len(after) >= 20)
            stop.set()
            for t in threads:
                t.join(30)
            total = len(before) + bound + len(after)
            wait_until("every row after the outage written", lambda: len(ledger_rows(storage, tmp_path)) == total)
            written = {r["request_id"] for r in ledger_rows(storage, tmp_path)}
            assert set(before) <= written and set(after) <= written
            assert len(written & set(during)) == bound
            assert dropped_total(server) == len(during) - bound
        finally:
            server.stop()
    finally:
        postgres.close()


def test_responses_api_rows_have_tokens(fake: FakeUpstream, tmp_path: Path) -> None:
    """The Responses API (translated onto chat here): its rows carry the tokens too, streamed or not."""
    storage = {"data_dir": "data"}
    server = serve(config(fake, storage), tmp_path)
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key=MASTER, max_retries=0)
        answer = client.responses.create(model="fake-details", input=PROMPT, store=False)
        assert answer.usage is not None
        events = list(client.responses.create(model="fake-details", input=PROMPT, stream=True, store=False))
        assert events[-1].type == "response.completed"
        wait_until("2 rows", lambda: len(ledger_rows(storage, tmp_path)) == 2)
    finally:
        server.stop()
    rows = ledger_rows(storage, tmp_path)
    assert [(r["endpoint"], r["stream"]) for r in rows] == [("/v1/responses", False), ("/v1/responses", True)]
    for row in rows:
        assert (row["input_tokens"], row["output_tokens"]) == (answer.usage.input_tokens, answer.usage.output_tokens)
        assert (row["cached_input_tokens"], row["reasoning_tokens"]) == (2, 3)
