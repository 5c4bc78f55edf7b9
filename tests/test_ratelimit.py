"""Rate limiting: never a -1003 from the exchange, the budget still used, bursts at once.

The guarantees are shown against the built-in simulator (strict sliding windows) with short windows and
small limits, through a running Seawall; the slot accounting itself is tested on a manual clock. Every
test that starts a Seawall or a state runs twice: on the memory state and on a real Redis (`state:
redis`), which must behave the same (tests/test_ratelimit_redis.py has what only Redis does).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiolimiter import AsyncLimiter
from fixtures_proxy import RecordingUpstream, StartSeawall, held_until, wait_until
from fixtures_simulator import SignedClient, SimFactory

from proxy.app import Seawall
from proxy.config import RedisConfig
from proxy.config_loader import build_config
from proxy.identity import key_fingerprint
from proxy.metrics import Metrics
from proxy.simulator import routes_orderly, routes_woox
from proxy.simulator.symbols import resting_order
from proxy.state.ratelimit import Claim, MemoryRateLimitState, RateLimitState
from proxy.state.ratelimit_redis import RedisRateLimitState
from proxy.state.redis_link import RedisLink

_ids = itertools.count()


def order(symbol: str = "PERP_ETH_USDC") -> dict[str, Any]:
    return resting_order(f"rl{next(_ids)}", symbol)


def rule(name: str, routes: list[str], limit: int, window: float, **extra: Any) -> dict[str, Any]:
    return {"name": name, "routes": routes, "limit": limit, "window": window, **extra}


def sample(seawall: Seawall, name: str, **labels: str) -> float:
    return seawall.metrics.registry.get_sample_value(name, labels) or 0.0


def waits_at_most(seawall: Seawall, rule_name: str, seconds: str) -> tuple[float, float]:
    """(requests that waited at most `seconds` — a histogram bucket bound —, all requests) for a rule."""
    name = "seawall_ratelimit_wait_seconds"
    within = sample(seawall, f"{name}_bucket", rule=rule_name, le=seconds)
    return within, sample(seawall, f"{name}_count", rule=rule_name)


def max_in_any_window(stamps: list[float], window: float) -> int:
    stamps = sorted(stamps)
    best, start = 0, 0
    for end, stamp in enumerate(stamps):
        while stamps[start] <= stamp - window:
            start += 1
        best = max(best, end - start + 1)
    return best


# --- both backends ----------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str | None:
    """None for the memory state; for Redis, the URL of a real redis-server started for the test."""
    if request.param == "memory":
        return None
    return str(request.getfixturevalue("redis_server").url)


@pytest.fixture
def start_seawall(backend: str | None, start_seawall: StartSeawall) -> StartSeawall:
    """The shared `start_seawall`, on the backend under test."""
    if backend is None:
        return start_seawall

    async def start(profile: str, upstream_url: str, **overrides: Any) -> Seawall:
        state = {"backend": "redis", "redis": {"url": backend}}
        return await start_seawall(profile, upstream_url, state=state, **overrides)

    return start


@pytest.fixture
async def rate_state(backend: str | None) -> AsyncIterator[RateLimitState]:
    """A rate-limit state on the backend under test; Redis stamps with the caller's (manual) clock."""
    if backend is None:
        yield MemoryRateLimitState()
        return
    link = RedisLink(RedisConfig(url=backend), Metrics())
    await link.start()
    state = RedisRateLimitState(link, in_flight_expiry=10.0, server_clock=False)
    yield state
    await state.close()
    await link.close()


async def settled(state: RateLimitState) -> None:
    """Redis releases run in the background (the answer does not wait for them): let them land."""
    if isinstance(state, RedisRateLimitState):
        await state.settled()


# --- slot accounting, on a manual clock -------------------------------------------------------------


def claim(rule_name: str = "r", limit: int = 2, hold: float = 1.0, cost: int = 1, scope: str = "k") -> Claim:
    return Claim(rule_name, scope, "alias", limit, hold, cost)


async def test_a_slot_is_held_until_one_window_after_its_answer(rate_state: RateLimitState) -> None:
    state = rate_state
    one = (claim(limit=1, hold=1.0),)
    admitted = await state.acquire(one, (0,), 10.0)
    assert admitted.admitted
    refused = await state.acquire(one, (0,), 10.5)  # in flight: free at least one window from now
    assert not refused.admitted and refused.waits == pytest.approx((1.0,))
    await state.release(one, 10.8, admitted.ticket)  # the exchange may have stamped it as late as 10.8
    await settled(state)
    refused = await state.acquire(one, (0,), 11.5)
    assert not refused.admitted and refused.waits == pytest.approx((0.3,))
    assert not (await state.acquire(one, (0,), 11.79)).admitted
    assert (await state.acquire(one, (0,), 11.81)).admitted


async def test_a_request_under_several_rules_takes_from_all_or_none(rate_state: RateLimitState) -> None:
    state = rate_state
    place, batch = claim("place", limit=10, cost=3), claim("batch", limit=1, cost=1)
    assert (await state.acquire((place, batch), (0, 0), 0.0)).admitted
    refused = await state.acquire((place, batch), (0, 0), 0.1)  # the batch rule is full
    assert not refused.admitted and refused.waits[0] == 0.0 and refused.waits[1] > 0
    assert [(u.rule, u.used) for u in state.usage(0.1)] == [("place", 3), ("batch", 1)]  # nothing taken


async def test_a_queued_request_knows_a_lower_bound_of_its_wait(rate_state: RateLimitState) -> None:
    state = rate_state
    one = claim(limit=2, hold=1.0)
    first = await state.acquire((one,), (0,), 0.0)
    assert first.admitted and (await state.acquire((one,), (0,), 0.0)).admitted
    await state.release((one,), 0.1, first.ticket)  # frees at 1.1; the other is in flight (>= now + 1)
    await settled(state)
    assert (await state.acquire((one,), (0,), 0.5)).waits == pytest.approx((0.6,))
    assert (await state.acquire((one,), (1,), 0.5)).waits == pytest.approx((1.0,))  # behind one
    assert (await state.acquire((one,), (2,), 0.5)).waits == pytest.approx((1.6,))  # a second round
    assert (await state.acquire((claim(limit=2, cost=3),), (0,), 0.5)).waits == (float("inf"),)


async def test_idle_scopes_are_forgotten_but_busy_ones_kept(rate_state: RateLimitState) -> None:
    state = rate_state
    for symbol in range(100):
        verdict = await state.acquire((claim(scope=f"s{symbol}"),), (0,), 0.0)
        await state.release((claim(scope=f"s{symbol}"),), 0.0, verdict.ticket)
    await state.acquire((claim(scope="busy"),), (0,), 0.0)  # in flight, never answered
    assert len(state) == 101  # type: ignore[arg-type]
    assert state.drop_idle(0.5, idle_for=10.0) == 0  # slots still held, and not idle long enough
    assert state.drop_idle(20.0, idle_for=10.0) == 100
    assert [u.label for u in state.usage(20.0)] == ["alias"] and len(state) == 1  # type: ignore[arg-type]


# --- why not aiolimiter ------------------------------------------------------------------------------


async def test_aiolimiter_admits_nearly_2n_in_one_sliding_window() -> None:
    """The stack's default limiter, measured against the requirement (2N-1 per window).
    An exchange enforcing N per sliding window would answer -1003 to the excess: hence our own limiter."""
    limit, window = 10, 0.2
    limiter = AsyncLimiter(limit, window)
    stamps: list[float] = []
    deadline = time.monotonic() + 2 * window
    while time.monotonic() < deadline:
        async with limiter:
            stamps.append(time.monotonic())
    assert max_in_any_window(stamps, window) >= 2 * limit - 3  # 19 = 2N-1 on an idle machine


# --- through Seawall to the simulator ----------------------------------------------------------------


async def seawall_in_front(
    start_seawall: StartSeawall,
    sim_url: str,
    rules: list[dict[str, Any]],
    profile: str = "orderly",
    **extra: Any,
) -> Seawall:
    return await start_seawall(profile, sim_url, ratelimit={"rules": rules, **extra})


async def test_burst_within_budget_is_not_delayed(
    sim_factory: SimFactory, sim_http: aiohttp.ClientSession, start_seawall: StartSeawall
) -> None:
    sim = await sim_factory("orderly")
    seawall = await start_seawall("orderly", sim.base_url)  # the shipped rules: placements 10/s per key
    assert sim.demo_credentials is not None
    bot = SignedClient(sim_http, seawall.proxy_url, sim.demo_credentials)
    answers = await asyncio.gather(*(bot.orderly("POST", "/v1/order", order()) for _ in range(8)))
    assert [a.status for a in answers] == [200] * 8
    assert waits_at_most(seawall, "order.place", "0.0005") == (8, 8)  # none queued
    assert sim.snapshot()["requests_by_route"].get("order.place") == 8
    assert sample(seawall, "seawall_ratelimit_budget_used_ratio", rule="order.place") == pytest.approx(0.8)


async def test_many_clients_on_one_key_never_earn_a_1003_and_use_the_budget(
    sim_factory: SimFactory, sim_http: aiohttp.ClientSession, start_seawall: StartSeawall
) -> None:
    limit, window, clients, duration = 5, 0.2, 30, 2.0
    sim = await sim_factory("orderly", limits={"order_create": (limit, window)})
    seawall = await seawall_in_front(
        start_seawall, sim.base_url, [rule("order.place", ["order.place"], limit, window, max_wait=3.0)]
    )
    assert sim.demo_credentials is not None
    bot = SignedClient(sim_http, seawall.proxy_url, sim.demo_credentials)
    placed: list[float] = []
    statuses: list[int] = []
    stop_at = time.monotonic() + duration

    async def client() -> None:
        while time.monotonic() < stop_at:
            answer = await bot.orderly("POST", "/v1/order", order())
            statuses.append(answer.status)
            if answer.status == 200:
                placed.append(time.monotonic())

    await asyncio.gather(*(client() for _ in range(clients)))
    snapshot = sim.snapshot()
    assert "-1003" not in snapshot["answers_by_code"]
    assert snapshot["max_in_window"]["order_create"] <= limit
    assert set(statuses) == {200}  # everyone queued within the max wait; nobody refused
    # The k-th and (k+N)-th placements are one slot's consecutive uses: ideally one window apart.
    gaps = [later - earlier for earlier, later in zip(placed, placed[limit:], strict=False)]
    goodput = window / (sum(gaps) / len(gaps))
    # 0.2 s windows: margin + round trip weigh ~5x more than at 1 s; a loaded CI box costs a few % more
    # (BENCHMARKS.md measures the 0.97 bar at the exchange's real 1 s window).
    assert goodput >= 0.8, goodput


async def test_a_rejected_multi_rule_request_leaves_no_budget_behind(
    sim_factory: SimFactory, sim_http: aiohttp.ClientSession, start_seawall: StartSeawall
) -> None:
    sim = await sim_factory("orderly", limits={"order_create": (10, 5.0), "order_batch": (1, 5.0)})
    seawall = await seawall_in_front(
        start_seawall,
        sim.base_url,
        [
            rule("order.place", ["order.place", "order.batch_place"], 10, 5.0, max_wait=2.0),
            rule("order.batch_place", ["order.batch_place"], 1, 5.0, cost="request", on_limit="reject"),
        ],
    )
    assert sim.demo_credentials is not None
    bot = SignedClient(sim_http, seawall.proxy_url, sim.demo_credentials)
    assert (
        await bot.orderly("POST", "/v1/batch-order", {"orders": [order() for _ in range(3)]})
    ).status == 200
    refused = await bot.orderly("POST", "/v1/batch-order", {"orders": [order() for _ in range(3)]})
    assert (refused.status, refused.code, refused.headers["X-Seawall"]) == (429, -1003, "ratelimit")
    assert (
        sample(seawall, "seawall_ratelimit_rejected_total", rule="order.batch_place", reason="rejected") == 1
    )
    # The refused batch took none of the placement budget: 3 + 7 singles fit at once.
    singles = await asyncio.gather(*(bot.orderly("POST", "/v1/order", order()) for _ in range(7)))
    assert [a.status for a in singles] == [200] * 7
    assert waits_at_most(seawall, "order.place", "0.0005") == (8, 8)
    assert sim.snapshot()["max_in_window"]["order_create"] == 10


async def test_a_batch_waiting_on_its_own_rule_does_not_stall_single_placements(
    sim_factory: SimFactory, sim_http: aiohttp.ClientSession, start_seawall: StartSeawall
) -> None:
    window = 1.0
    sim = await sim_factory("orderly", limits={"order_create": (10, window), "order_batch": (1, window)})
    seawall = await seawall_in_front(
        start_seawall,
        sim.base_url,
        [
            rule("order.place", ["order.place", "order.batch_place"], 10, window, max_wait=3.0),
            rule("order.batch_place", ["order.batch_place"], 1, window, cost="request", max_wait=3.0),
        ],
    )
    assert sim.demo_credentials is not None
    bot = SignedClient(sim_http, seawall.proxy_url, sim.demo_credentials)
    assert (
        await bot.orderly("POST", "/v1/batch-order", {"orders": [order() for _ in range(2)]})
    ).status == 200
    second = asyncio.ensure_future(  # noqa: RUF006 - awaited below
        bot.orderly("POST", "/v1/batch-order", {"orders": [order() for _ in range(2)]})
    )
    await wait_until(lambda: seawall.status()["ratelimit"]["queued"] == 1)
    started = time.monotonic()
    # 2 placed + 2 reserved for the waiting batch leave 6 singles, which go at once.
    singles = await asyncio.gather(*(bot.orderly("POST", "/v1/order", order()) for _ in range(6)))
    assert [a.status for a in singles] == [200] * 6
    assert not second.done() and time.monotonic() - started < window / 2
    assert (await second).status == 200  # one batch window later
    snapshot = sim.snapshot()
    assert "-1003" not in snapshot["answers_by_code"]
    assert snapshot["max_in_window"]["order_create"] <= 10


async def test_upstream_1003_cools_the_scope_down_then_traffic_resumes(
    sim_factory: SimFactory, sim_http: aiohttp.ClientSession, start_seawall: StartSeawall
) -> None:
    window = 1.0
    sim = await sim_factory("orderly", limits={"order_create": (3, window)})
    seawall = await seawall_in_front(  # the cool-down alone (learning lowers the limit too: its own tests)
        start_seawall,
        sim.base_url,
        [rule("order.place", ["order.place"], 3, window, max_wait=2.0)],
        learning={"enabled": False},
    )
    assert sim.demo_credentials is not None
    other_bot = SignedClient(sim_http, sim.base_url, sim.demo_credentials)  # shares the key, bypasses us
    bot = SignedClient(sim_http, seawall.proxy_url, sim.demo_credentials)
    for _ in range(3):
        assert (await other_bot.orderly("POST", "/v1/order", order())).status == 200
    upstream_refusal = await bot.orderly("POST", "/v1/order", order())
    refused_at = time.monotonic()
    assert upstream_refusal.code == -1003 and "X-Seawall" not in upstream_refusal.headers
    assert sample(seawall, "seawall_ratelimit_upstream_throttled_total", rule="order.place") == 1
    # Queued requests wait out the cool-down (one window) instead of earning more -1003s.
    answers = await asyncio.gather(*(bot.orderly("POST", "/v1/order", order()) for _ in range(3)))
    assert [a.status for a in answers] == [200] * 3
    assert time.monotonic() - refused_at >= window * 0.9
    assert sim.snapshot()["answers_by_code"]["-1003"] == 1


async def test_during_a_cool_down_a_request_that_cannot_wait_gets_the_remaining_time(
    sim_factory: SimFactory, sim_http: aiohttp.ClientSession, start_seawall: StartSeawall
) -> None:
    sim = await sim_factory("orderly", limits={"order_create": (2, 3.0)})
    seawall = await seawall_in_front(
        start_seawall, sim.base_url, [rule("order.place", ["order.place"], 2, 3.0, max_wait=0.5)]
    )
    assert sim.demo_credentials is not None
    other_bot = SignedClient(sim_http, sim.base_url, sim.demo_credentials)
    bot = SignedClient(sim_http, seawall.proxy_url, sim.demo_credentials)
    for _ in range(2):
        await other_bot.orderly("POST", "/v1/order", order())
    assert (await bot.orderly("POST", "/v1/order", order())).code == -1003  # from the exchange
    started = time.monotonic()
    local = await bot.orderly("POST", "/v1/order", order())
    assert time.monotonic() - started < 1.0  # answered at once, not after a vain 3 s wait
    assert (local.status, local.code, local.headers["X-Seawall"]) == (429, -1003, "ratelimit")
    # The remaining part of 3.01 s (window + margin), rounded up: 4 unless the box stalled >10 ms.
    assert local.headers["Retry-After"] in ("3", "4")
    assert sample(seawall, "seawall_ratelimit_rejected_total", rule="order.place", reason="cooldown") == 1
    assert seawall.status()["ratelimit"]["busiest"][0]["cooling_for"] > 2.5
    assert sim.snapshot()["answers_by_code"]["-1003"] == 1  # the local answer never reached it


async def test_per_symbol_budgets_are_separate_and_kept(
    sim_factory: SimFactory, sim_http: aiohttp.ClientSession, start_seawall: StartSeawall
) -> None:
    sim = await sim_factory("woox")
    seawall = await start_seawall("woox", sim.base_url)  # shipped: 10/s per account and symbol
    assert sim.demo_credentials is not None
    bot = SignedClient(sim_http, seawall.proxy_url, sim.demo_credentials)

    def params(symbol: str, price: int) -> dict[str, Any]:
        return {"symbol": symbol, "order_type": "LIMIT", "side": "BUY", "order_price": price,
                "order_quantity": 0.01}  # fmt: skip

    answers = await asyncio.gather(
        *(bot.v1("POST", "/v1/order", params("SPOT_ETH_USDT", 2950)) for _ in range(12)),
        *(bot.v1("POST", "/v1/order", params("SPOT_BTC_USDT", 59000)) for _ in range(10)),
    )
    # 20 go at once; the 2 over ETH's budget would need a whole window (1.01 s) > max wait (1 s): refused.
    assert sorted(a.status for a in answers) == [200] * 20 + [429] * 2
    assert {a.headers.get("X-Seawall") for a in answers if a.status == 429} == {"ratelimit"}
    assert waits_at_most(seawall, "order.place", "0.0005") == (20, 20)
    snapshot = sim.snapshot()
    assert "-1003" not in snapshot["answers_by_code"] and snapshot["max_in_window"]["v1_order_create"] == 10
    scopes = {entry["scope"] for entry in seawall.status()["ratelimit"]["busiest"]}
    account = key_fingerprint(sim.demo_credentials.api_key)  # an unmapped key is its own account
    assert scopes == {f"{account}|SPOT_ETH_USDT", f"{account}|SPOT_BTC_USDT"}


# --- queueing, refusal and priority, against a recording upstream -------------------------------------


async def get_orders(session: aiohttp.ClientSession, url: str) -> aiohttp.ClientResponse:
    target = url + "/v1/orders?symbol=PERP_ETH_USDC"
    async with session.get(target, headers={"orderly-key": "ed25519:bot-key"}) as answer:
        await answer.read()
        return answer


async def test_a_wait_known_to_exceed_max_wait_is_answered_at_once(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    seawall = await seawall_in_front(
        start_seawall, upstream.url, [rule("orders.list", ["orders.list"], 2, 1.0, max_wait=0.2)]
    )
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            assert (await get_orders(session, seawall.proxy_url)).status == 200
        started = time.monotonic()
        refused = await get_orders(session, seawall.proxy_url)
    assert time.monotonic() - started < 0.15  # not the 0.2 s max wait: hopeless, answered at once
    assert (refused.status, refused.headers["X-Seawall"]) == (429, "ratelimit")
    assert refused.headers["Retry-After"] in ("1", "2")  # what is left of 1.01 s, rounded up
    assert len(upstream.seen) == 2
    assert (
        sample(seawall, "seawall_ratelimit_rejected_total", rule="orders.list", reason="queue_timeout") == 1
    )


async def test_on_limit_reject_answers_at_once(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    seawall = await seawall_in_front(
        start_seawall, upstream.url, [rule("orders.list", ["orders.list"], 1, 0.1, on_limit="reject")]
    )
    async with aiohttp.ClientSession() as session:
        assert (await get_orders(session, seawall.proxy_url)).status == 200
        assert (await get_orders(session, seawall.proxy_url)).status == 429
    assert sample(seawall, "seawall_ratelimit_rejected_total", rule="orders.list", reason="rejected") == 1
    assert len(upstream.seen) == 1


async def test_a_queued_request_gives_up_at_max_wait_when_the_slot_holder_is_slow(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    gate = asyncio.Event()

    upstream.responder = held_until(gate)
    seawall = await seawall_in_front(
        start_seawall, upstream.url, [rule("orders.list", ["orders.list"], 1, 0.05, max_wait=0.3)]
    )
    async with aiohttp.ClientSession() as session:
        held = asyncio.ensure_future(get_orders(session, seawall.proxy_url))
        try:
            await wait_until(lambda: len(upstream.seen) == 1)
            started = time.monotonic()
            refused = await get_orders(session, seawall.proxy_url)
        finally:
            gate.set()
        # It waited while the slot's release was unknown, and gave up once even the earliest possible
        # release (the answer right now + one window) would come after its max wait.
        assert refused.status == 429 and 0.3 - 0.06 <= time.monotonic() - started < 0.5
        assert (await held).status == 200
    assert (
        sample(seawall, "seawall_ratelimit_rejected_total", rule="orders.list", reason="queue_timeout") == 1
    )


async def test_cancels_overtake_placements_queued_before_them(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    trading = rule(
        "trading", ["order.place", "order.cancel"], 1, 0.15, max_wait=3.0, priority={"order.cancel": 1}
    )
    seawall = await seawall_in_front(start_seawall, upstream.url, [trading])
    headers = {"orderly-key": "ed25519:bot-key", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:

        async def send(method: str, tag: str) -> int:
            body = orjson.dumps({"symbol": "PERP_ETH_USDC", "tag": tag})
            async with session.request(
                method, seawall.proxy_url + "/v1/order", data=body, headers=headers
            ) as a:
                return a.status

        sent = [asyncio.ensure_future(send("POST", "p0"))]
        await wait_until(lambda: len(upstream.seen) == 1)
        for i in range(3):
            sent.append(asyncio.ensure_future(send("POST", f"q{i}")))
            await wait_until(lambda i=i: seawall.status()["ratelimit"]["queued"] == i + 1)
        sent.append(asyncio.ensure_future(send("DELETE", "cancel")))
        assert await asyncio.gather(*sent) == [200] * 5
    assert [orjson.loads(seen.body)["tag"] for seen in upstream.seen] == ["p0", "cancel", "q0", "q1", "q2"]


async def test_idle_scopes_are_dropped_and_status_never_shows_a_key(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    seawall = await seawall_in_front(
        start_seawall,
        upstream.url,
        [rule("orders.list", ["orders.list"], 5, 0.05, scope=["key", "symbol"])],
        idle_scope_ttl=0.2,
    )
    secret_key = "ed25519:SecretKeyMaterial"
    async with aiohttp.ClientSession() as session:
        for symbol in range(20):
            url = f"{seawall.proxy_url}/v1/orders?symbol=S{symbol}"
            async with session.get(url, headers={"orderly-key": secret_key}) as answer:
                assert answer.status == 200
        status = seawall.status()["ratelimit"]
        assert status["scopes_in_use"] == 20
        async with session.get(seawall.admin_url + "/status") as page:
            shown = await page.text()
        async with session.get(seawall.admin_url + "/metrics") as page:
            shown += await page.text()
    assert "SecretKeyMaterial" not in shown and "k-" in status["busiest"][0]["scope"]
    await wait_until(lambda: seawall.status()["ratelimit"]["scopes_in_use"] == 0, timeout=3.0)


# --- the shipped profiles ----------------------------------------------------------------------------

# Seawall rule -> the simulator's rule for the same documented limit (docs/exchanges.md).
SHIPPED = {
    "orderly": (
        routes_orderly.RULES,
        {
            "order.place": "order_create",
            "order.batch_place": "order_batch",
            "order.cancel": "order_cancel",
            "orders.cancel_all": "orders_cancel_all",
            "orders.list": "orders_get",
            "order.get": "order_get",
            "account.holding": "holding",
            "account.info": "client_info",
            "positions": "positions",
            "public": "public",
            "public.system_info": "public_system_info",
        },
    ),
    "woox": (
        routes_woox.RULES,
        {
            "order.place": "v1_order_create",
            "order.place.v3": "v3_order_create",
            "order.cancel": "v1_order_cancel",
            "order.cancel.v3": "v3_order_cancel",
            "order.get": "v1_order_get",
            "order.get.v3": "v3_order_get",
            "account.holding": "holding",
            "account.info": "client_info",
            "positions": "positions",
            "public": "public",
        },
    ),
}


@pytest.mark.parametrize("profile", ["orderly", "woox"])
def test_shipped_limits_match_the_documented_ones(profile: str) -> None:
    config = build_config({"profile": profile, "upstream": {"url": "http://127.0.0.1:1"}}, env={})
    sim_rules, pairs = SHIPPED[profile]
    documented = {r.name: (r.limit, r.window) for r in sim_rules}
    shipped = {r.name: r for r in config.ratelimit.rules}
    for ours, theirs in pairs.items():
        assert (shipped[ours].limit, shipped[ours].window) == documented[theirs], ours
    # Budgets the exchange shares are one rule; per-IP limits are global (Seawall's egress address).
    assert set(shipped["order.cancel"].routes) == {"order.cancel", "order.cancel_client"}
    assert shipped["public"].scope == ("global",)
    if profile == "orderly":
        assert "order.batch_place" in shipped["order.place"].routes and shipped["order.place"].cost == "units"
    else:
        assert shipped["order.place"].scope == ("account", "symbol")
