"""Metrics, readiness and access logs end to end: a real `manifold serve` in front of the fake upstream, known
traffic, then `/metrics` parsed with prometheus-client's own parser and every count checked exactly."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import ManifoldProcess, free_port
from tests.fakes.openai_upstream import FakeUpstream

MESSAGES: list[dict[str, Any]] = [{"role": "user", "content": "one two three"}]
CHAT = "/v1/chat/completions"
PROVIDER = "openai"
UPSTREAM = "upstream-model"


def deployment(fake: FakeUpstream, name: str, behavior: str, **extra: Any) -> dict[str, Any]:
    return {
        "model_name": name,
        "provider": "openai",
        "model": UPSTREAM,
        "api_base": fake.base(behavior),
        "timeouts": {"connect": 2, "first_byte": 5},
        **extra,
    }


def observed_config(fake: FakeUpstream, **server: Any) -> dict[str, Any]:
    return {
        "model_list": [
            deployment(fake, "obs-echo", "echo@obs"),
            deployment(fake, "obs-slow", "slow_first_token:0.3@obs"),
            deployment(fake, "obs-500", "status:500@obs"),
            deployment(fake, "obs-retry", "flaky:1@obs"),
            deployment(fake, "obs-primary", "status:500@obs-fo"),
        ],
        "router": {
            "num_retries": 0,
            "cooldown_time": 0,
            "retry_backoff": 0.01,
            "groups": {
                "obs-500": {"allowed_fails": 1, "cooldown_time": 600},
                "obs-retry": {"num_retries": 1},
                "obs-primary": {"fallbacks": ["obs-echo"]},
            },
        },
        "server": {"log_level": "info", "log_format": "json", **server},
    }


class Scrape:
    """One scrape, parsed by prometheus-client: `value(name, **labels)` sums the samples that match."""

    def __init__(self, text: str) -> None:
        self.samples = [s for family in text_string_to_metric_families(text) for s in family.samples]

    def value(self, name: str, **labels: str) -> float:
        return sum(
            s.value for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def has(self, name: str) -> bool:
        return any(s.name == name for s in self.samples)


def scrape(url: str, path: str = "/metrics") -> Scrape:
    resp = httpx.get(url + path, timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    return Scrape(resp.text)


def access_lines(proc: ManifoldProcess, count: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The JSON access lines logged so far, waiting for at least `count` (INFO lines reach the log in blocks,
    up to 0.2 s late)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [json.loads(x) for x in proc.log().splitlines() if x.startswith("{")]
        access = [x for x in lines if "route" in x and "latency_ms" in x]
        if len(access) >= count or time.monotonic() > deadline:
            return access


def access_line(proc: ManifoldProcess, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = [x for x in access_lines(proc, 0) if x["request_id"] == request_id]
        if found or time.monotonic() > deadline:
            assert len(found) == 1, f"{len(found)} access lines for {request_id}"
            return found[0]
        time.sleep(0.05)


def settled(url: str, path: str, name: str, expected: float, **labels: str) -> float:
    """The value once it reached `expected` (a scrape that another thread or worker serves sees figures that
    are flushed once a second), or the last value after 5 s."""
    deadline = time.monotonic() + 5
    while True:
        value = scrape(url, path).value(name, **labels)
        if value == expected or time.monotonic() > deadline:
            return value
        assert value < expected, f"{name} overshot: {value} > {expected}"
        time.sleep(0.1)


def chat(http: httpx.Client, model: str, stream: bool = False) -> httpx.Response:
    body: dict[str, Any] = {"model": model, "messages": MESSAGES}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    resp = http.post(CHAT, json=body)
    resp.read()
    return resp


@pytest.fixture(scope="module")
def served(fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManifoldProcess]:
    fake.clear()
    proc = ManifoldProcess(observed_config(fake), tmp_path_factory.mktemp("observed"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def traffic(served: ManifoldProcess) -> dict[str, list[httpx.Response]]:
    """The known traffic every test below counts."""
    out: dict[str, list[httpx.Response]] = {}
    with httpx.Client(base_url=served.url, timeout=20) as http:
        out["echo"] = [chat(http, "obs-echo") for _ in range(3)]
        out["echo-stream"] = [chat(http, "obs-echo", stream=True) for _ in range(2)]
        out["slow"] = [chat(http, "obs-slow", stream=True)]
        out["500"] = [chat(http, "obs-500")]
        out["unknown"] = [chat(http, "no-such-model-" + "x" * 40)]
        out["retry"] = [chat(http, "obs-retry")]
        out["failover"] = [chat(http, "obs-primary")]
        out["models"] = [http.get("/v1/models")]
        out["missing"] = [http.get("/v1/no/such/route/12345")]
    return out


def test_request_counts_are_exact(served: ManifoldProcess, traffic: dict[str, list[httpx.Response]]) -> None:
    assert [r.status_code for r in traffic["echo"] + traffic["echo-stream"] + traffic["slow"]] == [200] * 6
    status_500 = str(traffic["500"][0].status_code)
    assert traffic["unknown"][0].status_code == 404
    assert traffic["retry"][0].status_code == 200 and traffic["retry"][0].headers["x-manifold-attempts"] == "2"
    assert traffic["failover"][0].status_code == 200
    m = scrape(served.url)
    requests = "manifold_requests_total"
    assert m.value(requests, route=CHAT, status="200", model="obs-echo") == 5
    assert m.value(requests, route=CHAT, status="200", model="obs-slow") == 1
    assert m.value(requests, route=CHAT, status=status_500, model="obs-500") == 1
    # A model the config does not know is `unknown`, never the client's string.
    assert m.value(requests, route=CHAT, status="404", model="unknown") == 1
    assert not any("no-such-model" in str(s.labels) for s in m.samples)
    # The fallback counts under the model the client asked for.
    assert m.value(requests, route=CHAT, status="200", model="obs-primary") == 1
    assert m.value(requests, route="/v1/models", status="200", model="") == 1
    # An unmatched path is one label value, not the path.
    assert m.value(requests, route="unmatched", status="404") == 1
    assert m.value(requests, route=CHAT) == 10


def test_upstream_attempts_by_outcome(served: ManifoldProcess, traffic: dict[str, list[httpx.Response]]) -> None:
    m = scrape(served.url)
    attempts = "manifold_upstream_attempts_total"
    assert m.value(attempts, deployment="obs-echo#0", outcome="ok") == 6  # 3 + 2 streams + the fallback
    assert m.value(attempts, deployment="obs-retry#0", outcome="retried") == 1
    assert m.value(attempts, deployment="obs-retry#0", outcome="ok") == 1
    assert m.value(attempts, deployment="obs-primary#0", outcome="failed_over") == 1
    assert m.value(attempts, deployment="obs-500#0", outcome="failed") == 1
    assert m.value(attempts, outcome="timed_out") == 0
    # The circuit breaker of obs-500 opened after its one allowed failure.
    assert m.value("manifold_deployment_breaker_state", deployment="obs-500#0") == 1
    assert m.value("manifold_deployment_breaker_state", deployment="obs-echo#0") == 0
    assert m.value("manifold_deployment_in_flight", deployment="obs-echo#0") == 0


def test_gen_ai_metrics(served: ManifoldProcess, traffic: dict[str, list[httpx.Response]]) -> None:
    m = scrape(served.url)
    echo = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": PROVIDER, "gen_ai_request_model": "obs-echo"}
    echo["gen_ai_response_model"] = UPSTREAM
    # The fake counts words: "one two three" is 3 input tokens; "echo: one two three" 4 output tokens.
    usage = "gen_ai_client_token_usage"
    assert m.value(usage + "_count", gen_ai_token_type="input", **echo) == 6
    assert m.value(usage + "_sum", gen_ai_token_type="input", **echo) == 18
    assert m.value(usage + "_sum", gen_ai_token_type="output", **echo) == 24
    duration = "gen_ai_client_operation_duration_seconds_count"
    assert m.value(duration, error_type="", **echo) == 6
    assert m.value(duration, gen_ai_request_model="obs-500", error_type="500") == 1
    server = "gen_ai_server_request_duration_seconds_count"
    assert m.value(server, gen_ai_operation_name="chat", gen_ai_request_model="obs-echo", error_type="") == 5
    assert m.value(server, gen_ai_request_model="obs-500", error_type="500") == 1
    stream = "manifold_stream_outcomes_total"
    assert m.value(stream, model="obs-echo", outcome="completed") == 2
    assert m.value(stream, model="obs-slow", outcome="completed") == 1
    assert m.value("manifold_stream_output_tokens_per_second_count", model="obs-echo") == 2
    assert m.value("gen_ai_server_time_per_output_token_seconds_count", **echo) == 2
    assert m.value("manifold_gateway_time_seconds_count", route=CHAT) == 10


def test_ttft_histogram_shows_a_slow_first_token(
    served: ManifoldProcess, traffic: dict[str, list[httpx.Response]]
) -> None:
    m = scrape(served.url)
    labels = {"gen_ai_request_model": "obs-slow", "gen_ai_operation_name": "chat"}
    ttft = "gen_ai_server_time_to_first_token_seconds"
    assert m.value(ttft + "_count", **labels) == 1
    # The fake waits 300 ms before its first chunk: not in the 0.25 s bucket, in the 0.5 s one.
    assert m.value(ttft + "_bucket", le="0.25", **labels) == 0
    assert m.value(ttft + "_bucket", le="0.5", **labels) == 1
    assert m.value(ttft + "_sum", **labels) >= 0.3
    # The fast streams' first tokens are all under the 0.25 s bucket.
    assert m.value(ttft + "_bucket", le="0.25", gen_ai_request_model="obs-echo") == 2


def test_openmetrics_when_asked(served: ManifoldProcess, traffic: dict[str, list[httpx.Response]]) -> None:
    resp = httpx.get(served.url + "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/openmetrics-text")
    assert resp.text.rstrip().endswith("# EOF")
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families

    families = {f.name: f for f in om_families(resp.text)}
    assert families["manifold_requests"].type == "counter"


def test_access_log_lines(served: ManifoldProcess, traffic: dict[str, list[httpx.Response]]) -> None:
    access = access_lines(served, 14)
    by_id = {line["request_id"]: line for line in access}
    sent = traffic["echo-stream"][0]
    line = by_id[sent.headers["x-request-id"]]
    assert line["method"] == "POST" and line["route"] == CHAT and line["status"] == 200
    assert line["model"] == "obs-echo" and line["deployment"] == "obs-echo#0" and line["stream"] is True
    assert line["attempts"] == 1 and line["input_tokens"] == 3 and line["output_tokens"] == 4
    assert line["client"] == "127.0.0.1" and line["latency_ms"] >= line["ttft_ms"] > 0
    retry = by_id[traffic["retry"][0].headers["x-request-id"]]
    assert retry["attempts"] == 2 and retry["stream"] is False and retry["ttft_ms"] is None
    assert {"time", "trace_id", "cost", "key_alias"} <= set(line)
    # The router's warning about the failed attempt carries the request's id.
    failed_id = traffic["500"][0].headers["x-request-id"]
    lines = [json.loads(x) for x in served.log().splitlines() if x.startswith("{")]
    warnings = [x for x in lines if x.get("level") == "warning" and x.get("request_id") == failed_id]
    assert warnings and "obs-500#0" in warnings[0]["message"], lines
    # Exactly one line per request: Manifold's, not also uvicorn's own (its HTTP protocol logs one per request
    # whenever its logger has a handler, whatever `access_log=False` says).
    assert len([a for a in access if a["route"] == CHAT]) == 10
    assert [x for x in lines if x.get("logger") == "uvicorn.access"] == []


def test_ready_lists_each_deployment(served: ManifoldProcess, traffic: dict[str, list[httpx.Response]]) -> None:
    # obs-500's only deployment has its breaker open: that model cannot serve.
    resp = httpx.get(served.url + "/health/ready")
    assert resp.status_code == 503
    assert resp.json()["unavailable_models"] == ["obs-500"]
    detail = httpx.get(served.url + "/health/ready?detail=1").json()
    states = {d["deployment"]: d for d in detail["deployments"]}
    assert states["obs-500#0"]["breaker"] == "open" and states["obs-echo#0"]["breaker"] == "closed"
    assert states["obs-echo#0"]["in_flight"] == 0 and states["obs-echo#0"]["ready"] is True
    assert {"latency_ms", "ttft_ms", "queued", "max_concurrency"} <= set(states["obs-echo#0"])


def test_ready_when_every_model_can_serve(fake: FakeUpstream, tmp_path: Path) -> None:
    config = {"model_list": [deployment(fake, "only", "echo@ready")]}
    proc = ManifoldProcess(config, tmp_path)
    try:
        resp = httpx.get(proc.url + "/health/ready")
        assert resp.status_code == 200 and resp.json()["status"] == "ready"
    finally:
        proc.stop()


def test_metrics_path_and_port_configurable(fake: FakeUpstream, tmp_path: Path) -> None:
    port = free_port()
    config = {
        "model_list": [deployment(fake, "only", "echo@port")],
        "metrics": {"path": "/internal/prom", "port": port},
    }
    proc = ManifoldProcess(config, tmp_path)
    try:
        httpx.post(proc.url + CHAT, json={"model": "only", "messages": MESSAGES}).raise_for_status()
        assert httpx.get(proc.url + "/metrics").status_code == 404  # not on the main port
        url = f"http://127.0.0.1:{port}"
        assert settled(url, "/internal/prom", "manifold_requests_total", 1, route=CHAT, status="200", model="only") == 1
    finally:
        proc.stop()


def test_metrics_off(fake: FakeUpstream, tmp_path: Path) -> None:
    config = {"model_list": [deployment(fake, "only", "echo@off")], "metrics": {"enabled": False}}
    proc = ManifoldProcess(config, tmp_path)
    try:
        httpx.post(proc.url + CHAT, json={"model": "only", "messages": MESSAGES}).raise_for_status()
        assert httpx.get(proc.url + "/metrics").status_code == 404
    finally:
        proc.stop()


def test_two_workers_are_summed(fake: FakeUpstream, tmp_path: Path) -> None:
    config = {"model_list": [deployment(fake, "only", "echo@workers")], "server": {"workers": 2}}
    proc = ManifoldProcess(config, tmp_path, extra_args=("--workers", "2"))
    try:
        pids: set[str] = set()
        n = 0
        deadline = time.monotonic() + 60
        # New connections until both workers have counted requests.
        while time.monotonic() < deadline and (n < 30 or len(pids) < 2):
            with httpx.Client(base_url=proc.url) as http:
                http.post(CHAT, json={"model": "only", "messages": MESSAGES}).raise_for_status()
            n += 1
            pids = worker_pids(proc)
        assert len(pids) == 2, proc.log()
        requests = "manifold_requests_total"
        assert settled(proc.url, "/metrics", requests, n, route=CHAT, status="200", model="only") == n
        time.sleep(1.2)  # every worker has flushed
        for _ in range(6):  # each scrape lands on either worker: every one shows the sum
            m = scrape(proc.url)
            assert m.value(requests, route=CHAT, status="200", model="only") == n
            assert m.value("manifold_upstream_attempts_total", deployment="only#0", outcome="ok") == n
    finally:
        proc.stop()


def worker_pids(proc: ManifoldProcess) -> set[str]:
    """The worker processes that have counted requests: prometheus-client's multiprocess files are named by
    pid, in the directory `manifold serve` gave its workers (read from a worker's environment)."""
    directory = None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat[stat.rindex(")") + 2 :].split()[1]) != proc.proc.pid:
                continue
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        for item in env:
            if item.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
                directory = Path(item.split(b"=", 1)[1].decode())
    if directory is None:
        return set()
    return {f.stem.rsplit("_", 1)[1] for f in directory.glob("counter_*.db")}


def test_storage_write_latency(served: ManifoldProcess, traffic: dict[str, list[httpx.Response]]) -> None:
    """Last in this module: its request is not part of the counted traffic."""
    before = scrape(served.url).value("manifold_storage_write_seconds_count")
    body = {"model": "obs-echo", "messages": MESSAGES, "store": True}
    created = httpx.post(served.url + CHAT, json=body, timeout=20)
    assert created.status_code == 200
    # The stored completion can be read back once its write committed.
    deadline = time.monotonic() + 10
    while httpx.get(f"{served.url}{CHAT}/{created.json()['id']}").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert scrape(served.url).value("manifold_storage_write_seconds_count") >= before + 1
