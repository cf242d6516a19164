"""Pure parts of access control: prices in integer micro-dollars, OpenAI's reset format, budget periods, and the
in-memory sliding window at its edges."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from manifold.access.limits import WINDOW_S, Admission, Budget, MemoryCounters, Scope, format_reset, period_start
from manifold.access.pricing import dollars, micros, prices_for
from manifold.access.principal import Limits, Principal
from manifold.access.resp import bulk
from manifold.config import LocalDeployment, OpenAIDeployment


def test_money_is_exact() -> None:
    assert micros(0.15) == 150_000
    assert micros("2.5") == 2_500_000
    assert micros(0.1) + micros(0.2) == micros(0.3)  # never a binary float sum
    assert dollars(1234) == "0.001234"
    assert dollars(1_000_000) == "1"
    assert dollars(1_500_000) == "1.5"
    assert dollars(0) == "0"


def test_configured_prices_and_rounding_up() -> None:
    dep = OpenAIDeployment(
        model_name="p",
        model="priced",
        input_cost_per_million=0.15,
        output_cost_per_million="0.60",
        cached_input_cost_per_million=0.075,
    )
    prices = prices_for(dep)
    assert (prices.input, prices.output, prices.cached_input, prices.source) == (150_000, 600_000, 75_000, "config")
    usage = {"prompt_tokens": 1000, "completion_tokens": 500, "prompt_tokens_details": {"cached_tokens": 100}}
    # 900 x 0.15 + 100 x 0.075 + 500 x 0.60 = 442.5 micro-dollars: rounded up
    assert prices.cost(usage) == 443
    assert prices.cost({"input_tokens": 1000, "output_tokens": 0}) == 150  # the Responses API's spelling
    assert prices.cost(None) == 0


def test_dataset_prices_and_free_deployments() -> None:
    found = prices_for(OpenAIDeployment(model_name="d", model="gpt-4o-mini"))
    assert found.source == "genai-prices"
    assert found.input > 0 and found.output > found.input
    local = prices_for(LocalDeployment(model_name="l"))
    assert (local.input, local.output, local.source) == (0, 0, "free")
    unknown = prices_for(OpenAIDeployment(model_name="u", model="no-such-model-anywhere"))
    assert unknown.source == "unknown"


def test_reset_format_is_openais() -> None:
    assert format_reset(0) == "0s"
    assert format_reset(0.12) == "120ms"
    assert format_reset(1) == "1s"
    assert format_reset(1.5) == "1.5s"
    assert format_reset(59.481) == "59.481s"
    assert format_reset(360) == "6m0s"
    assert format_reset(3723) == "1h2m3s"


def test_budget_periods() -> None:
    created = int(datetime(2026, 1, 31, 12, tzinfo=UTC).timestamp())
    now = datetime(2026, 3, 15, tzinfo=UTC).timestamp()
    start, _ = period_start("monthly", created, now)
    assert datetime.fromtimestamp(start, UTC) == datetime(2026, 2, 28, 12, tzinfo=UTC)  # clamped to February
    start, length = period_start("daily", 0, now)
    assert (start, length) == (int(now), 86400)
    start, length = period_start(None, created, now)
    assert start == 0 and start + length > now + 100 * 365 * 86400  # one period, for ever


def test_a_budget_without_a_duration_keeps_its_spend() -> None:
    """Seen in review: a budget that never resets was counted in a period that had ended in 1980, so its spend
    expired a second after each request and the budget was never reached."""
    admission = Admission(MemoryCounters())
    key = Principal(key_id="k", key_alias="a", key_limits=Limits(max_budget_micros=10), created_at=1_700_000_000)
    now = 1_800_000_000.0
    (budget,) = admission.plan(key, "m", now).budgets
    assert budget.ttl_s(now) > 100 * 365 * 86400
    counters = MemoryCounters()
    counters.release([], int(now), 0, [budget], 10, "r1")
    assert counters.admit_now([], 0, [budget], "r2", now + 3600).refused == "budget"


def test_memory_window_is_sliding() -> None:
    counters = MemoryCounters()
    scope = [Scope("key k", "k", 2, None, None)]
    t = 1000.0
    assert counters.admit_now(scope, 0, [], "a", t).refused is None
    assert counters.admit_now(scope, 0, [], "b", t + 30).refused is None
    refused = counters.admit_now(scope, 0, [], "c", t + 59)
    assert refused.refused == "requests"
    assert refused.retry_after_s == WINDOW_S - 59  # when the first one leaves the window
    assert counters.admit_now(scope, 0, [], "d", t + WINDOW_S).refused is None  # the first has left
    assert counters.admit_now(scope, 0, [], "e", t + WINDOW_S).refused == "requests"


def test_a_plan_is_kept_per_principal_and_model_while_its_budget_period_lasts() -> None:
    """The scopes and budgets of a request are built once per principal and model group and reused; a new
    principal object (a changed key) or the end of the budget period builds them again, with the new period's
    counter id."""
    admission = Admission(MemoryCounters())
    limits = Limits(rpm=10, max_budget_micros=5_000_000, budget_duration="daily")
    key = Principal(key_id="k1", key_alias="a", key_limits=limits, created_at=0)
    day = 86400
    now = 20 * day + 100.0
    first = admission.plan(key, "m", now)
    assert [s.name for s in first.scopes] == ["key a"] and not first.counts_tokens
    assert [(b.id, b.keep_until) for b in first.budgets] == [(f"k:k1:{20 * day}", 21 * day + 60)]
    assert admission.plan(key, "m", now + 3600) is first
    assert admission.plan(key, "other", now) is not first
    changed = Principal(key_id="k1", key_alias="a", key_limits=Limits(rpm=5, tpm=100), created_at=0)
    again = admission.plan(changed, "m", now)
    assert [(s.rpm, s.tpm) for s in again.scopes] == [(5, 100)] and again.counts_tokens and again.budgets == []
    next_day = admission.plan(key, "m", 21 * day + 1.0)
    assert next_day is not first and [b.id for b in next_day.budgets] == [f"k:k1:{21 * day}"]
    assert next_day.budgets[0].ttl_s(21 * day + 1.0) == day + 59


def test_the_redis_scripts_prepacked_commands_are_what_packing_each_argument_gives() -> None:
    """RedisCounters packs the scripts' commands once per plan but for the per-request arguments: the bytes
    must be those of EVALSHA sha numkeys KEYS… ARGV… packed one argument at a time."""
    from manifold.access.redis_counters import _ADMIT_SHA, _RELEASE_SHA, RedisCounters, admit_frame, release_frame
    from manifold.access.resp import _pack

    counters = RedisCounters("redis://127.0.0.1:1/0", 1.0, "p:")
    scopes = [Scope("key a", "k:1", 10, None, 3), Scope("key a, model m", "k:1:m:m", None, 500, None)]
    budgets = [Budget("key a", "k:1:0", 9_000_000, 4_000_000_000)]
    f = counters._frames(scopes, budgets)
    assert counters._frames(scopes, budgets) is f  # kept for the same plan's lists
    keys = ["p:rl:k:1:r", "p:rl:k:1:t", "p:rl:k:1:p", "p:rl:k:1:m:m:r", "p:rl:k:1:m:m:t", "p:rl:k:1:m:m:p"]
    admit = ["EVALSHA", _ADMIT_SHA, 7, *keys, "p:budget:k:1:0", 2, 812, "req_1", 3600, 10, -1, 3, -1, 500, -1]
    assert b"".join((f.admit_head, bulk(812), bulk("req_1"), f.admit_tail)) == _pack((*admit, 9_000_000))
    assert admit_frame(f, 812, "req_1") == _pack((*admit, 9_000_000))
    assert admit_frame(f, 0, "réq") == _pack((*admit[:-9], 0, "réq", *admit[-7:], 9_000_000))  # bytes, not chars
    keys = ["p:rl:k:1:t", "p:rl:k:1:p", "p:rl:k:1:m:m:t", "p:rl:k:1:m:m:p", "p:budget:k:1:0"]
    release = ["EVALSHA", _RELEASE_SHA, 5, *keys, 2, 1_700_000_000, -12, "req_1", 44, "0", "1", "1", "0"]
    frame = b"".join((f.release_head, bulk(1_700_000_000), bulk(-12), bulk("req_1"), bulk(44), f.release_tail))
    assert frame == _pack((*release, 4_000_000_000))
    assert release_frame(f, 1_700_000_000, -12, "req_1", 44) == frame


async def test_a_redis_write_that_raises_fails_its_waiters_cleanly() -> None:
    """A transport that raises on write (closing under the connection): the command written at once and the
    one queued before it both fail with ConnectionError, nothing raises into the request, the connection is
    marked lost (the next command connects again)."""
    from manifold.access.resp import _Protocol

    class Closing:
        def write(self, data: bytes) -> None:
            raise RuntimeError("the transport is closing")

        def abort(self) -> None:
            pass

    protocol = _Protocol(5.0)
    protocol.connection_made(Closing())  # type: ignore[arg-type]
    queued = protocol.send_frame(b"*1\r\n$4\r\nPING\r\n")
    at_once = protocol.send_frame(b"*1\r\n$4\r\nPING\r\n", at_once=True)
    for future in (queued, at_once):
        assert isinstance(future.exception(), ConnectionError)
    assert protocol.lost and not protocol.waiting


_INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_REQUEST_IDS = st.text(min_size=1, max_size=80)


@settings(max_examples=200, deadline=None)
@given(tokens=_INT64, rid=_REQUEST_IDS, second=_INT64, delta=_INT64, cost=_INT64)
def test_the_redis_frames_are_resp_for_any_arguments(tokens: int, rid: str, second: int, delta: int, cost: int) -> None:
    """The two frames built in one `%` format each are, for any integers and any request id (non-ASCII too:
    lengths in bytes), the bytes that packing each argument gives; and hiredis reads them back as the command."""
    import hiredis

    from manifold.access.redis_counters import RedisCounters, admit_frame, release_frame
    from manifold.access.resp import _pack

    counters = RedisCounters("redis://127.0.0.1:1/0", 1.0, "p:")
    f = counters._frames([Scope("key a", "k:1", 10, 100, 3)], [Budget("key a", "k:1:0", 9, 4_000_000_000)])
    admit = admit_frame(f, tokens, rid)
    assert admit == b"".join((f.admit_head, bulk(tokens), bulk(rid), f.admit_tail))
    release = release_frame(f, second, delta, rid, cost)
    assert release == b"".join((f.release_head, bulk(second), bulk(delta), bulk(rid), bulk(cost), f.release_tail))
    reader = hiredis.Reader()
    reader.feed(admit + release)
    read_admit, read_release = reader.gets(), reader.gets()
    assert read_admit[0] == b"EVALSHA" and read_admit[8:10] == [str(tokens).encode(), rid.encode()]
    assert read_release[0] == b"EVALSHA" and read_release[7:11] == [
        b"%d" % second,
        b"%d" % delta,
        rid.encode(),
        b"%d" % cost,
    ]
    assert _pack(tuple(read_release)) == release  # nothing left over, nothing cut


_HEADER_NAMES = st.sampled_from([b"authorization", b"api-key", b"x-api-key", b"host", b"user-agent", b"x-request-id"])
_HEADER_VALUES = st.binary(max_size=40).filter(lambda v: b"\r" not in v and b"\n" not in v)


@settings(max_examples=300, deadline=None)
@given(headers=st.lists(st.tuples(_HEADER_NAMES, _HEADER_VALUES), max_size=12))
def test_the_key_a_request_carries_follows_the_documented_order(headers: list[tuple[bytes, bytes]]) -> None:
    """`secret_of` against the rule as docs/access.md states it, written the slow way: Authorization (Bearer,
    else no key), else api-key, else x-api-key; of a header sent twice, the last."""
    from manifold.access.auth import secret_of

    def last(name: bytes) -> bytes | None:
        values = [v for n, v in headers if n == name]
        return values[-1] if values else None

    authorization = last(b"authorization")
    expected: str | None
    if authorization is not None:
        expected = authorization[7:].strip().decode("latin-1") if authorization[:7].lower() == b"bearer " else ""
    else:
        other = last(b"api-key")
        if other is None:
            other = last(b"x-api-key")
        expected = None if other is None else other.strip().decode("latin-1")
    assert secret_of(headers) == expected


async def test_a_detached_command_is_told_only_of_its_failure() -> None:
    """`send_detached` (a release): written at once; an ordinary reply tells nobody and leaves the awaited
    commands' replies matched in order; an error reply, a lost connection, or a connection lost already each
    reach its `failed` exactly once."""
    from manifold.access.resp import Detached, RespError, _Protocol

    class Wire:
        def __init__(self) -> None:
            self.written: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.written.append(data)

        def abort(self) -> None:
            pass

    class Told(Detached):
        __slots__ = ("failures",)

        def __init__(self) -> None:
            self.failures: list[BaseException] = []

        def failed(self, exc: BaseException) -> None:
            self.failures.append(exc)

    wire = Wire()
    protocol = _Protocol(5.0)
    protocol.connection_made(wire)  # type: ignore[arg-type]
    ok, bad, lost = Told(), Told(), Told()
    protocol.send_detached(b"*1\r\n$4\r\nPING\r\n", ok)
    assert wire.written == [b"*1\r\n$4\r\nPING\r\n"]  # at once: before anything the caller writes next
    awaited = protocol.send_frame(b"*1\r\n$4\r\nPING\r\n", at_once=True)
    protocol.send_detached(b"*1\r\n$4\r\nNOPE\r\n", bad)
    protocol.send_detached(b"*1\r\n$4\r\nPING\r\n", lost)
    protocol.data_received(b"+PONG\r\n:7\r\n-NOSCRIPT no such script\r\n")
    assert ok.failures == [] and awaited.result() == 7
    assert len(bad.failures) == 1 and isinstance(bad.failures[0], RespError)
    assert str(bad.failures[0]).startswith("NOSCRIPT")
    assert lost.failures == []
    protocol.connection_lost(None)
    assert len(lost.failures) == 1 and isinstance(lost.failures[0], ConnectionError)
    late = Told()
    protocol.send_detached(b"*1\r\n$4\r\nPING\r\n", late)
    assert len(late.failures) == 1 and isinstance(late.failures[0], ConnectionError)
    assert ok.failures == [] and len(bad.failures) == 1  # each told once
