"""Circuit breakers: a -1011/-1012 storm opens the breaker, an open breaker answers locally without
touching the exchange, one probe after the reset timeout decides, and the bot's own errors never trip it.

Unit tests drive the policy with an injectable clock and a scripted next step; the integration tests run
a real Seawall in front of the built-in simulator (its fault injection) or a recording upstream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from fixtures_proxy import RecordingUpstream, StartSeawall, wait_until
from fixtures_redis import Backend
from fixtures_simulator import SignedClient, SimFactory
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.answer import Answer
from proxy.app import Seawall
from proxy.config import BreakerConfig, BreakerRule
from proxy.context import RequestContext
from proxy.errors import CircuitOpen, Congested, RateLimited, UpstreamUnavailable, UpstreamUnreached
from proxy.metrics import Metrics
from proxy.policies.breaker import MAX_ACCOUNT_LABELS, MAX_SCOPES_PER_RULE, CircuitBreakerPolicy
from proxy.routing import Route
from proxy.simulator.server import Simulator
from proxy.state.breaker import MemoryBreakerStore

# -- unit tests: the policy alone, with a clock the test moves ------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_policy(clock: FakeClock, metrics: Metrics | None = None, **rule: Any) -> CircuitBreakerPolicy:
    settings: dict[str, Any] = {"name": "trading", "routes": ["order.place"], "failure_threshold": 3}
    settings.update(rule)
    config = BreakerConfig(rules=(BreakerRule(**settings),))
    return CircuitBreakerPolicy(
        config, metrics or Metrics(), MemoryBreakerStore(), aliases={"acct-alias-me": "desk-a"}, clock=clock
    )


def request(
    route: str = "order.place",
    key: str | None = "ed25519:SECRETKEY",
    account: str | None = None,
    key_name: str = "k-0123456789",
) -> RequestContext:
    return RequestContext(
        "POST",
        "/v1/order",
        CIMultiDictProxy(CIMultiDict()),
        b"{}",
        "127.0.0.1",
        Route(route),
        key=key,
        key_name=key_name,
        account=account,
    )


def error_answer(code: int, status: int = 400) -> Answer:
    body = orjson.dumps({"success": False, "code": code, "message": "x"})
    return Answer(status, CIMultiDict(), body, code=code, name="X")


def ok_answer() -> Answer:
    return Answer(200, CIMultiDict(), b'{"success":true}')


class Upstream:
    """The rest of the chain as the breaker sees it: counts calls and answers as scripted."""

    def __init__(self) -> None:
        self.calls = 0
        self.answer: Callable[[], Awaitable[Answer]] = self._ok

    @staticmethod
    async def _ok() -> Answer:
        return ok_answer()

    def answers(self, make: Callable[[], Answer]) -> None:
        async def scripted() -> Answer:
            return make()

        self.answer = scripted

    async def __call__(self, ctx: RequestContext) -> Answer:
        self.calls += 1
        return await self.answer()


async def send(policy: CircuitBreakerPolicy, upstream: Upstream, ctx: RequestContext | None = None) -> Answer:
    return await policy.handle(ctx or request(), upstream)


async def trip(policy: CircuitBreakerPolicy, upstream: Upstream, code: int = -1011, times: int = 3) -> None:
    upstream.answers(lambda: error_answer(code))
    for _ in range(times):
        await send(policy, upstream)


def state(policy: CircuitBreakerPolicy, scope: str = "*", rule: str = "trading") -> str:
    return str(policy.status()[rule]["scopes"][scope]["state"])


async def test_storm_of_1011_opens_at_threshold_and_later_requests_never_reach_upstream() -> None:
    clock, upstream = FakeClock(), Upstream()
    policy = make_policy(clock)
    await trip(policy, upstream, times=2)
    assert state(policy) == "closed"
    await trip(policy, upstream, times=1)
    assert state(policy) == "open"
    for _ in range(10):
        with pytest.raises(CircuitOpen) as raised:
            await send(policy, upstream)
        assert raised.value.code == -1011
        assert raised.value.retry_after == pytest.approx(5.0)
    assert upstream.calls == 3
    clock.now += 2.0
    with pytest.raises(CircuitOpen) as raised:
        await send(policy, upstream)
    assert raised.value.retry_after == pytest.approx(3.0)
    assert policy.status()["trading"]["scopes"]["*"]["open_remaining_seconds"] == pytest.approx(3.0)


async def test_open_breaker_repeats_the_code_that_tripped_it() -> None:
    clock, upstream = FakeClock(), Upstream()
    policy = make_policy(clock)
    await trip(policy, upstream, code=-1012)
    with pytest.raises(CircuitOpen) as raised:
        await send(policy, upstream)
    assert raised.value.code == -1012


async def test_bot_errors_never_trip_and_do_not_reset_the_failure_count() -> None:
    clock, upstream = FakeClock(), Upstream()
    policy = make_policy(clock)
    for code in (-1005, -1101, -1102, -1103, -1104, -1105, -1007, -1003):
        upstream.answers(lambda code=code: error_answer(code))
        for _ in range(5):
            await send(policy, upstream)
    assert state(policy) == "closed"
    await trip(policy, upstream, times=2)
    upstream.answers(lambda: error_answer(-1005))
    await send(policy, upstream)  # pybreaker's `exclude` would have reset the count here
    await trip(policy, upstream, times=1)
    assert state(policy) == "open"


async def test_success_resets_the_consecutive_failure_count() -> None:
    clock, upstream = FakeClock(), Upstream()
    policy = make_policy(clock)
    for _ in range(3):
        await trip(policy, upstream, times=2)
        upstream.answers(ok_answer)
        await send(policy, upstream)
    assert state(policy) == "closed"
    assert upstream.calls == 9


async def test_half_open_lets_exactly_one_probe_through_and_its_success_closes() -> None:
    clock, upstream = FakeClock(), Upstream()
    policy = make_policy(clock)
    await trip(policy, upstream)
    clock.now += 5.0
    release = asyncio.Event()

    async def slow_ok() -> Answer:
        await release.wait()
        return ok_answer()

    upstream.answer = slow_ok
    probe = asyncio.create_task(send(policy, upstream))
    await wait_until(lambda: upstream.calls == 4)  # the probe holds its slot, at the upstream
    others = await asyncio.wait_for(
        asyncio.gather(*(send(policy, upstream) for _ in range(50)), return_exceptions=True), 5
    )
    assert all(isinstance(result, CircuitOpen) for result in others)
    assert state(policy) == "half-open"
    assert upstream.calls == 4
    release.set()
    assert (await probe).status == 200
    assert state(policy) == "closed"
    assert (await send(policy, upstream)).status == 200


async def test_probe_failure_reopens_for_a_full_reset_timeout() -> None:
    clock, upstream = FakeClock(), Upstream()
    policy = make_policy(clock)
    await trip(policy, upstream)
    clock.now += 5.0
    await trip(policy, upstream, code=-1012, times=1)  # the probe
    assert state(policy) == "open"
    clock.now += 4.9
    with pytest.raises(CircuitOpen) as raised:
        await send(policy, upstream)
    assert raised.value.code == -1012
    assert upstream.calls == 4
    clock.now += 0.2
    upstream.answers(ok_answer)
    assert (await send(policy, upstream)).status == 200
    assert state(policy) == "closed"


async def failure_in_flight_then_trip(
    policy: CircuitBreakerPolicy, upstream: Upstream
) -> tuple[asyncio.Task[Answer], asyncio.Event]:
    """Send a request whose -1011 arrives only when `release` is set, then trip the breaker meanwhile."""
    release = asyncio.Event()

    async def slow_failure() -> Answer:
        await release.wait()
        return error_answer(-1011)

    upstream.answer = slow_failure
    calls = upstream.calls
    late = asyncio.create_task(send(policy, upstream))
    await wait_until(lambda: upstream.calls == calls + 1)  # at the upstream before the storm
    await trip(policy, upstream)
    return late, release


async def test_late_failure_of_a_request_sent_before_opening_does_not_extend_the_open_period() -> None:
    clock, upstream = FakeClock(), Upstream()
    policy = make_policy(clock)
    late, release = await failure_in_flight_then_trip(policy, upstream)
    clock.now += 4.0
    release.set()
    await late  # fails after the breaker opened
    clock.now += 1.0
    upstream.answers(ok_answer)
    assert (await send(policy, upstream)).status == 200  # the probe went out on time
    assert state(policy) == "closed"


async def test_late_failure_after_the_reset_timeout_neither_reopens_nor_takes_the_probe() -> None:
    clock, upstream = FakeClock(), Upstream()
    policy = make_policy(clock)
    late, release = await failure_in_flight_then_trip(policy, upstream)
    clock.now += 6.0
    release.set()
    await late
    assert state(policy) == "open"  # not re-opened: still due for its probe
    upstream.answers(ok_answer)
    assert (await send(policy, upstream)).status == 200
    assert state(policy) == "closed"


async def test_late_failure_from_before_an_outage_does_not_count_after_recovery() -> None:
    clock, upstream = FakeClock(), Upstream()
    policy = make_policy(clock)
    late, release = await failure_in_flight_then_trip(policy, upstream)
    clock.now += 5.0
    upstream.answers(ok_answer)
    await send(policy, upstream)  # the probe succeeds: closed again
    release.set()
    await late
    assert policy.status()["trading"]["scopes"]["*"]["consecutive_failures"] == 0


async def test_cancelled_probe_is_not_a_failure_and_frees_the_probe_slot() -> None:
    clock, upstream = FakeClock(), Upstream()
    policy = make_policy(clock)
    await trip(policy, upstream)
    clock.now += 5.0
    upstream.answer = asyncio.Event().wait  # type: ignore[assignment]  # never answers
    probe = asyncio.create_task(send(policy, upstream))
    await wait_until(lambda: upstream.calls == 4)
    probe.cancel()  # the bot hung up
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert state(policy) == "half-open"
    upstream.answers(ok_answer)
    assert (await send(policy, upstream)).status == 200
    assert state(policy) == "closed"


async def test_cancelled_requests_do_not_count_toward_the_threshold() -> None:
    clock, upstream = FakeClock(), Upstream()
    policy = make_policy(clock)
    await trip(policy, upstream, times=2)
    upstream.answer = asyncio.Event().wait  # type: ignore[assignment]
    tasks = [asyncio.create_task(send(policy, upstream)) for _ in range(5)]
    await wait_until(lambda: upstream.calls == 7)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert state(policy) == "closed"
    assert policy.status()["trading"]["scopes"]["*"]["consecutive_failures"] == 2


async def test_probe_stopped_by_the_limiter_frees_the_probe_slot() -> None:
    clock, upstream = FakeClock(), Upstream()
    policy = make_policy(clock)
    await trip(policy, upstream)
    clock.now += 5.0

    async def throttled() -> Answer:
        raise RateLimited("over budget", retry_after=0.1)

    upstream.answer = throttled
    with pytest.raises(RateLimited):
        await send(policy, upstream)
    upstream.answers(ok_answer)
    assert (await send(policy, upstream)).status == 200
    assert state(policy) == "closed"


@pytest.mark.parametrize("trip_on_transport", [True, False])
async def test_transport_failures_trip_only_when_configured(trip_on_transport: bool) -> None:
    clock, upstream = FakeClock(), Upstream()
    policy = make_policy(clock, trip_on_transport=trip_on_transport)

    async def unreachable() -> Answer:
        raise UpstreamUnreached("the exchange refused the connection", cause="refused")

    upstream.answer = unreachable
    for _ in range(2):
        with pytest.raises(UpstreamUnavailable):
            await send(policy, upstream)
    upstream.answers(lambda: Answer(502, CIMultiDict(), b"<html>502 Bad Gateway</html>", name="HTTP_502"))
    await send(policy, upstream)
    assert state(policy) == ("open" if trip_on_transport else "closed")


@pytest.mark.parametrize(
    "error",
    [
        UpstreamUnreached("proxy is shutting down"),  # Seawall stopping: no cause
        UpstreamUnavailable("the request's deadline ran out before the exchange answered", cause="deadline"),
        Congested("no upstream connection came free in time", cause="pool_timeout"),
        Congested("Seawall has no local resources left", cause="local_resources"),
    ],
    ids=["shutting-down", "deadline-after-sending", "pool-timeout", "local-resources"],
)
async def test_failures_that_are_not_the_exchanges_neither_trip_nor_reset_the_count(
    error: UpstreamUnavailable | Congested,
) -> None:
    clock, upstream = FakeClock(), Upstream()
    policy = make_policy(clock, trip_on_transport=True)
    await trip(policy, upstream, times=2)  # two of the three failures that open it

    async def fails() -> Answer:
        raise error

    upstream.answer = fails
    for _ in range(5):
        with pytest.raises(type(error)):
            await send(policy, upstream)
    assert state(policy) == "closed"
    assert policy.status()["trading"]["scopes"]["*"]["consecutive_failures"] == 2  # no news: kept, not reset
    await trip(policy, upstream, times=1)
    assert state(policy) == "open"


async def test_routes_outside_every_rule_are_never_stopped() -> None:
    clock, upstream = FakeClock(), Upstream()
    policy = make_policy(clock)
    await trip(policy, upstream)
    upstream.answers(ok_answer)
    assert (await send(policy, upstream, request(route="orders.list"))).status == 200
    assert upstream.calls == 4


async def test_per_account_breakers_are_independent_and_named_without_keys() -> None:
    clock, upstream = FakeClock(), Upstream()
    metrics = Metrics()
    policy = make_policy(clock, metrics, per_account=True)
    storm = request(key="SECRET-KEY-A", key_name="k-aaaaaaaaaa")
    upstream.answers(lambda: error_answer(-1012))
    for _ in range(3):
        await send(policy, upstream, storm)
    with pytest.raises(CircuitOpen):
        await send(policy, upstream, storm)
    upstream.answers(ok_answer)
    other = request(key="SECRET-KEY-B", key_name="k-bbbbbbbbbb")
    assert (await send(policy, upstream, other)).status == 200
    aliased = request(key="SECRET-KEY-C", account="acct-alias-me")
    assert (await send(policy, upstream, aliased)).status == 200
    unaliased = request(key="SECRET-KEY-D", account="0xsecretish-account-id")
    assert (await send(policy, upstream, unaliased)).status == 200
    shown = orjson.dumps(policy.status()).decode()
    scopes = policy.status()["trading"]["scopes"]
    assert scopes["k-aaaaaaaaaa"]["state"] == "open"
    assert scopes["k-bbbbbbbbbb"]["state"] == "closed"
    assert "desk-a" in scopes
    from prometheus_client import generate_latest

    exported = generate_latest(metrics.registry).decode()
    assert 'seawall_circuit_state{breaker="trading:k-aaaaaaaaaa"} 2.0' in exported
    for secret in ("SECRET-KEY", "0xsecretish-account-id", "acct-alias-me"):
        assert secret not in shown
        assert secret not in exported


async def test_per_account_breakers_keep_memory_and_metric_series_bounded() -> None:
    clock, upstream = FakeClock(), Upstream()
    metrics = Metrics()
    policy = make_policy(clock, metrics, per_account=True)
    upstream.answers(lambda: error_answer(-1011))
    for index in range(MAX_SCOPES_PER_RULE + 300):
        await send(policy, upstream, request(key=f"key-{index}", key_name=f"k-{index:010d}"))
    assert len(policy.status()["trading"]["scopes"]) == MAX_SCOPES_PER_RULE
    for index in range(MAX_ACCOUNT_LABELS + 10):  # trip many accounts: their series stay capped
        ctx = request(key=f"key-{index}", key_name=f"k-{index:010d}")
        for _ in range(3):
            await send(policy, upstream, ctx)
    from prometheus_client import generate_latest

    exported = generate_latest(metrics.registry).decode()
    transitions = [line for line in exported.splitlines() if line.startswith("seawall_circuit_transitions")]
    assert 0 < len(transitions) <= MAX_ACCOUNT_LABELS + 1
    assert any('breaker="trading:other"' in line for line in transitions)


async def test_transitions_are_counted_gauged_and_logged_as_json_fields() -> None:
    clock, upstream = FakeClock(), Upstream()
    metrics = Metrics()
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("seawall")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        policy = make_policy(clock, metrics)
        gauge = metrics.circuit_state.labels("trading")
        assert gauge._value.get() == 0
        await trip(policy, upstream, code=-1012)
        assert gauge._value.get() == 2
        clock.now += 5.0
        upstream.answers(ok_answer)
        await send(policy, upstream)
        assert gauge._value.get() == 0
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    for to, count in (("open", 1), ("half-open", 1), ("closed", 1)):
        assert metrics.circuit_transitions.labels("trading", to)._value.get() == count
    fields = [getattr(record, "fields", {}) for record in records if "circuit" in record.getMessage()]
    assert [f["to"] for f in fields] == ["open", "half-open", "closed"]
    assert fields[0]["code"] == -1012 and fields[0]["breaker"] == "trading"


# -- integration: a real Seawall in front of the simulator's fault injection -------------------------------

ORDERS = "/v1/orders"  # orders.list: a signed private call the simulator serves cheaply


@pytest.fixture
async def sim(sim_factory: SimFactory) -> Simulator:
    # Generous exchange limits: these tests are about faults, and no rate limiter runs in front here.
    return await sim_factory("orderly", limits={"orders_get": 100_000})


# The limiter's budget (orders.list: 10/s per key) would shape these storms; here only the breaker acts.
ISOLATED: dict[str, Any] = {"ratelimit": {"enabled": False}}


def breaker_rules(**rule: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "name": "trading",
        "routes": ["orders.list"],
        "failure_threshold": 3,
        "reset_timeout": 0.3,
    }
    settings.update(rule)
    return {"rules": [settings]}


class Bot:
    """A bot signing its own requests, pointed at Seawall."""

    def __init__(self, sim: Simulator, proxy_url: str, session: aiohttp.ClientSession) -> None:
        assert sim.demo_credentials is not None
        self.client = SignedClient(session, proxy_url, sim.demo_credentials)

    async def list_orders(self) -> tuple[int, dict[str, Any], Mapping[str, str]]:
        answer = await self.client.orderly("GET", ORDERS)
        return answer.status, answer.json, answer.headers


def reached(sim: Simulator) -> int:
    return sim.counters.requests_by_route["orders.list"]


def scope_status(seawall: Seawall) -> dict[str, Any]:
    return seawall.status()["breaker"]["trading"]["scopes"]["*"]  # type: ignore[no-any-return]


def outcomes(seawall: Seawall, outcome: str) -> float:
    return sum(
        sample.value
        for metric in seawall.metrics.requests.collect()
        for sample in metric.samples
        if sample.labels.get("outcome") == outcome
    )


async def test_storm_opens_the_breaker_and_the_exchange_sees_no_more_traffic(
    sim: Simulator, start_seawall: StartSeawall, backend: Backend
) -> None:
    seawall = await start_seawall(
        "orderly", sim.base_url, **ISOLATED, breakers=breaker_rules(reset_timeout=30), **backend
    )
    sim.add_fault({"kind": "error", "code": -1012, "routes": ["orders.list"]})
    async with aiohttp.ClientSession() as session:
        bot = Bot(sim, seawall.proxy_url, session)
        for _ in range(3):
            status, payload, headers = await bot.list_orders()
            assert (status, payload["code"], headers.get("X-Seawall")) == (400, -1012, None)
        for _ in range(20):
            status, payload, headers = await bot.list_orders()
            assert (status, payload["code"], headers["X-Seawall"]) == (400, -1012, "circuit-open")
            assert payload["success"] is False
            assert 1 <= int(headers["Retry-After"]) <= 30
        async with session.get(seawall.admin_url + "/status") as response:
            shown = (await response.json())["breaker"]["trading"]["scopes"]["*"]
    assert reached(sim) == 3
    assert outcomes(seawall, "circuit_open") == 20  # the calls saved during the outage
    assert shown["state"] == "open" and 25 < shown["open_remaining_seconds"] <= 30
    assert shown["trip_code"] == -1012


async def test_one_probe_in_half_open_and_recovery_after_the_storm_ends(
    sim: Simulator, start_seawall: StartSeawall, backend: Backend
) -> None:
    seawall = await start_seawall("orderly", sim.base_url, **ISOLATED, breakers=breaker_rules(), **backend)
    storm = sim.add_fault({"kind": "error", "code": -1011, "routes": ["orders.list"]})
    async with aiohttp.ClientSession() as session:
        bot = Bot(sim, seawall.proxy_url, session)
        for _ in range(3):
            await bot.list_orders()
        assert scope_status(seawall)["state"] == "open"
        # Still stormy at the first probe: it fails and re-opens the breaker.
        await wait_until(lambda: scope_status(seawall)["open_remaining_seconds"] == 0)
        _, payload, headers = await bot.list_orders()
        assert (payload["code"], headers.get("X-Seawall")) == (-1011, None)
        assert scope_status(seawall)["state"] == "open" and reached(sim) == 4
        # The storm ends; the next probe is slow, and 30 bots retry at that moment: one goes upstream.
        sim.remove_fault(storm)
        sim.add_fault({"kind": "latency", "delay": 0.2, "routes": ["orders.list"]})
        await wait_until(lambda: scope_status(seawall)["open_remaining_seconds"] == 0)
        answers = await asyncio.gather(*(bot.list_orders() for _ in range(30)))
        assert reached(sim) == 5
        assert sorted(status for status, _, _ in answers) == [200] + [400] * 29
        assert sum(headers.get("X-Seawall") == "circuit-open" for _, _, headers in answers) == 29
        assert scope_status(seawall)["state"] == "closed"
        sim.clear_faults()
        for _ in range(5):
            assert (await bot.list_orders())[0] == 200
    assert reached(sim) == 10
    transitions = seawall.metrics.circuit_transitions
    assert [transitions.labels("trading", to)._value.get() for to in ("open", "half-open", "closed")] == [
        2,
        2,
        1,
    ]


async def test_flood_of_bad_requests_never_opens_the_breaker(
    sim: Simulator, start_seawall: StartSeawall, backend: Backend
) -> None:
    seawall = await start_seawall("orderly", sim.base_url, **ISOLATED, breakers=breaker_rules(), **backend)
    sim.add_fault({"kind": "error", "code": -1005, "routes": ["orders.list"]})
    async with aiohttp.ClientSession() as session:
        bot = Bot(sim, seawall.proxy_url, session)
        answers = await asyncio.gather(*(bot.list_orders() for _ in range(40)))
    assert all(payload["code"] == -1005 and "X-Seawall" not in headers for _, payload, headers in answers)
    assert reached(sim) == 40
    assert scope_status(seawall)["state"] == "closed"


async def test_requests_racing_the_opening_each_get_exactly_one_answer(
    sim: Simulator, start_seawall: StartSeawall, backend: Backend
) -> None:
    seawall = await start_seawall(
        "orderly", sim.base_url, **ISOLATED, breakers=breaker_rules(reset_timeout=30), **backend
    )
    sim.add_fault({"kind": "error", "code": -1011, "routes": ["orders.list"]})
    sim.add_fault({"kind": "latency", "delay": 0.01, "routes": ["orders.list"]})
    # 8 connections for 200 requests: some are in flight upstream while the breaker opens.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8)) as session:
        bot = Bot(sim, seawall.proxy_url, session)
        answers = await asyncio.gather(*(bot.list_orders() for _ in range(200)))
    local = sum(headers.get("X-Seawall") == "circuit-open" for _, _, headers in answers)
    assert len(answers) == 200
    assert all(status == 400 and payload["code"] == -1011 for status, payload, _ in answers)
    assert 3 <= reached(sim) <= 3 + 8  # the threshold, plus what was already in flight
    assert local == 200 - reached(sim)
    assert outcomes(seawall, "circuit_open") == local
    assert outcomes(seawall, "forwarded") == reached(sim)


@pytest.mark.parametrize("trip_on_transport", [True, False])
async def test_dropped_connections_trip_the_breaker_when_configured(
    sim: Simulator, start_seawall: StartSeawall, backend: Backend, trip_on_transport: bool
) -> None:
    seawall = await start_seawall(
        "orderly",
        sim.base_url,
        **ISOLATED,
        breakers=breaker_rules(trip_on_transport=trip_on_transport, reset_timeout=30),
        **backend,
    )
    sim.add_fault({"kind": "reset", "routes": ["orders.list"]})
    async with aiohttp.ClientSession() as session:
        bot = Bot(sim, seawall.proxy_url, session)
        answers = [await bot.list_orders() for _ in range(6)]
    policies = [headers.get("X-Seawall") for _, _, headers in answers]
    assert all(payload["code"] == -1011 for _, payload, _ in answers)
    if trip_on_transport:
        assert policies == ["upstream-unavailable"] * 3 + ["circuit-open"] * 3
        assert reached(sim) == 3
    else:
        assert policies == ["upstream-unavailable"] * 6
        assert reached(sim) == 6


async def test_open_breaker_spends_no_rate_budget(
    sim: Simulator, start_seawall: StartSeawall, backend: Backend
) -> None:
    # The whole chain, limiter included: 5 requests per 10 s for orders.list, excess rejected at once.
    budget = {
        "rules": [
            {
                "name": "orders.list",
                "routes": ["orders.list"],
                "limit": 5,
                "window": "10s",
                "on_limit": "reject",
            }
        ]
    }
    seawall = await start_seawall(
        "orderly", sim.base_url, ratelimit=budget, breakers=breaker_rules(), **backend
    )
    storm = sim.add_fault({"kind": "error", "code": -1011, "routes": ["orders.list"]})
    async with aiohttp.ClientSession() as session:
        bot = Bot(sim, seawall.proxy_url, session)
        for _ in range(3):  # 3 of the 5 spent on the storm
            await bot.list_orders()
        for _ in range(20):
            assert (await bot.list_orders())[2]["X-Seawall"] == "circuit-open"
        sim.remove_fault(storm)
        await wait_until(lambda: scope_status(seawall)["open_remaining_seconds"] == 0)
        statuses = [(await bot.list_orders())[0] for _ in range(2)]  # the probe, then one more
        _, payload, headers = await bot.list_orders()
    assert statuses == [200, 200]
    assert (payload["code"], headers["X-Seawall"]) == (-1003, "ratelimit")
    assert reached(sim) == 5


async def test_shipped_profile_isolates_an_accounts_rpc_reject_storm(
    upstream: RecordingUpstream, start_seawall: StartSeawall, backend: Backend
) -> None:
    async def responder(request: web.BaseRequest, body: bytes) -> web.StreamResponse:
        if request.headers["orderly-account-id"] == "0xliquidating":
            payload = {"success": False, "code": -1012, "message": "Another liquidation is in process"}
            return web.json_response(payload, status=400)
        return web.json_response({"success": True, "data": {"order_id": 1}, "timestamp": 1})

    upstream.responder = responder
    seawall = await start_seawall("orderly", upstream.url, **backend)

    async def place(account: str) -> tuple[int, str | None, int | None]:
        headers = {"orderly-account-id": account, "orderly-key": f"ed25519:KEY-OF-{account}"}
        async with session.post(seawall.proxy_url + "/v1/order", data=b"{}", headers=headers) as response:
            return response.status, response.headers.get("X-Seawall"), (await response.json()).get("code")

    async with aiohttp.ClientSession() as session:
        storm = [await place("0xliquidating") for _ in range(8)]
        healthy = [await place("0xhealthy") for _ in range(3)]
    assert storm == [(400, None, -1012)] * 5 + [(400, "circuit-open", -1012)] * 3
    assert healthy == [(200, None, None)] * 3  # other accounts, and the exchange-wide breaker, unaffected
    assert len(upstream.seen) == 8
    breakers = seawall.status()["breaker"]
    assert breakers["trading"]["scopes"]["*"]["state"] == "closed"
    assert sorted(scope["state"] for scope in breakers["trading-account"]["scopes"].values()) == [
        "closed",
        "open",
    ]
    assert "0xliquidating" not in orjson.dumps(breakers).decode()
