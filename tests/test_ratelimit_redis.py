"""Rate limits shared through Redis (`state: redis`): what only a shared state does.

Several Seawall replicas share one real redis-server and sit in front of ONE simulator (strict sliding
windows): together they keep one budget; when Redis goes away each keeps serving on its share of the
budget (or fails closed, per config) and says so; when it returns they share again. The scenarios both
backends must pass alike are in tests/test_ratelimit.py.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import signal
import time
from collections import Counter
from typing import Any

import aiohttp
import pytest
from fixtures_proxy import StartSeawall, wait_until, wait_until_async
from fixtures_redis import RedisServer
from fixtures_simulator import Answer, SignedClient, SimFactory

from proxy.app import Seawall
from proxy.config import RedisConfig
from proxy.metrics import Metrics
from proxy.simulator.symbols import resting_order
from proxy.state.ratelimit import Claim
from proxy.state.ratelimit_redis import RedisRateLimitState
from proxy.state.redis_link import RedisLink

_ids = itertools.count()


def order() -> dict[str, Any]:
    return resting_order(f"rr{next(_ids)}")


async def replicas(
    start_seawall: StartSeawall,
    sim_url: str,
    redis_url: str,
    count: int,
    limit: int,
    window: float,
    max_wait: float = 3.0,
    **redis: Any,
) -> list[Seawall]:
    rules = [{"name": "order.place", "routes": ["order.place"], "limit": limit, "window": window,
              "max_wait": max_wait}]  # fmt: skip
    state = {"backend": "redis", "redis": {"url": redis_url, "replicas": count, **redis}}
    # These scenarios are about budgets: placements Redis cannot vouch for are forwarded (dedup per
    # replica), not refused as they are by default (tests/test_dedup_forget.py).
    dedup = {"on_unavailable": "forward"}
    return [
        await start_seawall("orderly", sim_url, ratelimit={"rules": rules}, state=state, dedup=dedup)
        for _ in range(count)
    ]


async def readiness(session: aiohttp.ClientSession, seawall: Seawall) -> tuple[int, str]:
    async with session.get(seawall.admin_url + "/readyz") as answer:
        return answer.status, (await answer.json())["checks"]["shared_state"]


async def burst(bot: SignedClient, n: int) -> list[Answer]:
    return list(await asyncio.gather(*(bot.orderly("POST", "/v1/order", order()) for _ in range(n))))


def kinds(answers: list[Answer]) -> Counter[str]:
    """200, or who answered the refusal: the exchange (`exchange`) or a Seawall policy (X-Seawall)."""
    return Counter("200" if a.status == 200 else a.headers.get("X-Seawall", "exchange") for a in answers)


def used(seawall: Seawall) -> int:
    return sum(scope["used"] for scope in seawall.status()["ratelimit"]["busiest"])


async def test_three_replicas_on_one_redis_keep_one_budget(
    sim_factory: SimFactory,
    sim_http: aiohttp.ClientSession,
    start_seawall: StartSeawall,
    redis_server: RedisServer,
) -> None:
    limit, window, clients, duration = 5, 0.25, 30, 2.0
    sim = await sim_factory("orderly", limits={"order_create": (limit, window)})
    seawalls = await replicas(start_seawall, sim.base_url, redis_server.url, 3, limit, window)
    assert sim.demo_credentials is not None
    bots = [SignedClient(sim_http, s.proxy_url, sim.demo_credentials) for s in seawalls]
    placed: list[float] = []
    answered: Counter[str] = Counter()
    stop_at = time.monotonic() + duration

    async def client(bot: SignedClient) -> None:
        while time.monotonic() < stop_at:
            answer = await bot.orderly("POST", "/v1/order", order())
            answered.update(kinds([answer]))
            if answer.status == 200:
                placed.append(time.monotonic())

    await asyncio.gather(*(client(bots[i % 3]) for i in range(clients)))
    snapshot = sim.snapshot()
    # Each replica alone would admit `limit` per window: 3x the budget, answered -1003 by the exchange.
    assert "-1003" not in snapshot["answers_by_code"]
    assert snapshot["max_attempted_in_window"]["order_create"] <= limit
    # Every refusal is Seawall's own, never the exchange's; on a loaded 2-core machine a few queued
    # requests may outlast max_wait (3 s), which is a local -1003 by design, not a budget overrun.
    assert "exchange" not in answered
    assert answered["ratelimit"] <= 0.05 * sum(answered.values()), answered
    assert all(s.status()["ratelimit"]["state"]["deciding"] == "shared" for s in seawalls)
    placed.sort()
    gaps = [later - earlier for earlier, later in zip(placed, placed[limit:], strict=False)]
    assert window / (sum(gaps) / len(gaps)) >= 0.8  # short windows: margin + round trips weigh more
    # Scopes are named in Redis by a hash: the (public) key the bots sign with never appears.
    names = b" ".join(await redis_server_keys(redis_server))
    assert (
        re.search(rb"rl:\{[0-9a-f]{16}\}:order\.place:", names)
        and sim.demo_credentials.secret[:12].encode() not in names
    )
    assert sim.demo_credentials.account_id.encode() not in names


async def redis_server_keys(server: RedisServer) -> list[bytes]:
    link = RedisLink(RedisConfig(url=server.url), Metrics())
    await link.start()
    try:
        return list(await link.call(lambda r: r.keys("*")))
    finally:
        await link.close()


async def test_a_cool_down_after_an_exchange_1003_holds_every_replica(
    sim_factory: SimFactory,
    sim_http: aiohttp.ClientSession,
    start_seawall: StartSeawall,
    redis_server: RedisServer,
) -> None:
    sim = await sim_factory("orderly", limits={"order_create": (2, 3.0)})
    a, b = await replicas(start_seawall, sim.base_url, redis_server.url, 2, 2, 3.0, max_wait=0.5)
    assert sim.demo_credentials is not None
    other_bot, via_a, via_b = (
        SignedClient(sim_http, url, sim.demo_credentials) for url in (sim.base_url, a.proxy_url, b.proxy_url)
    )
    assert kinds(await burst(other_bot, 2)) == {"200": 2}  # shares the key, bypasses Seawall
    assert kinds(await burst(via_a, 1)) == {"exchange": 1}  # -1003 from the exchange: A cools down
    # The other replica never saw that -1003, yet waits out the cool-down it caused.
    (local,) = await burst(via_b, 1)
    assert (local.status, local.headers["X-Seawall"]) == (429, "ratelimit")
    assert local.headers["Retry-After"] in ("3", "4")  # what is left of 3.01 s, rounded up
    labels = {"rule": "order.place", "reason": "cooldown"}
    assert b.metrics.registry.get_sample_value("seawall_ratelimit_rejected_total", labels) == 1
    assert sim.snapshot()["answers_by_code"]["-1003"] == 1


async def test_losing_redis_falls_back_to_each_replicas_share_then_rejoins(
    sim_factory: SimFactory,
    sim_http: aiohttp.ClientSession,
    start_seawall: StartSeawall,
    redis_server: RedisServer,
) -> None:
    limit, window = 4, 1.0
    sim = await sim_factory("orderly", limits={"order_create": (limit, window)})
    a, b = await replicas(
        start_seawall, sim.base_url, redis_server.url, 2, limit, window, max_wait=0.2, retry_interval=0.05
    )
    assert sim.demo_credentials is not None
    via_a, via_b = (SignedClient(sim_http, s.proxy_url, sim.demo_credentials) for s in (a, b))

    # Shared: a burst of the whole budget through one replica goes at once, and the other sees it spent.
    assert kinds(await burst(via_a, limit)) == {"200": limit}
    assert kinds(await burst(via_b, 1)) == {"ratelimit": 1}

    await redis_server.stop()
    async with aiohttp.ClientSession() as admin:
        for seawall in (a, b):
            await wait_until(lambda s=seawall: s.status()["state"]["up"] is False, timeout=3)
            status, detail = await readiness(admin, seawall)
            assert status == 200 and detail.startswith("degraded")
            assert seawall.metrics.registry.get_sample_value("seawall_state_backend_up") == 0
        # The slots taken through Redis stay counted locally until they free: no doubled window.
        await wait_until(lambda: used(a) == 0 and used(b) == 0, timeout=3)
        # Each replica now decides alone on its share: budget / replicas.
        assert kinds(await burst(via_a, limit)) == {"200": limit // 2, "ratelimit": limit // 2}
        assert kinds(await burst(via_b, limit)) == {"200": limit // 2, "ratelimit": limit // 2}
        assert a.status()["ratelimit"]["state"]["deciding"] == "local_share"

        await redis_server.start()
        for seawall in (a, b):
            await wait_until(lambda s=seawall: s.status()["ratelimit"]["state"]["deciding"] == "shared")
            await wait_until(lambda s=seawall: s.shared is not None and s.shared.healthy, timeout=5)
            assert await readiness(admin, seawall) == (200, "ok")
    # Back on Redis, the slots taken locally were handed over: within their window nothing more goes.
    assert kinds(await burst(via_a, limit)) == {"ratelimit": limit}
    await wait_until(lambda: used(a) == 0, timeout=3)
    # And decisions are shared again: the whole budget through one replica, the other sees it spent.
    assert kinds(await burst(via_a, limit)) == {"200": limit}
    assert kinds(await burst(via_b, 1)) == {"ratelimit": 1}
    snapshot = sim.snapshot()
    assert "-1003" not in snapshot["answers_by_code"]
    assert snapshot["max_attempted_in_window"]["order_create"] <= limit


async def test_fail_closed_answers_1003_locally_until_redis_returns(
    sim_factory: SimFactory,
    sim_http: aiohttp.ClientSession,
    start_seawall: StartSeawall,
    redis_server: RedisServer,
) -> None:
    sim = await sim_factory("orderly")
    (seawall,) = await replicas(
        start_seawall, sim.base_url, redis_server.url, 1, 10, 1.0, on_unavailable="fail_closed",
        retry_interval=0.05,
    )  # fmt: skip
    assert sim.demo_credentials is not None
    bot = SignedClient(sim_http, seawall.proxy_url, sim.demo_credentials)
    assert (await bot.orderly("POST", "/v1/order", order())).status == 200

    await redis_server.stop()
    await wait_until(lambda: seawall.status()["state"]["up"] is False)
    refused = await bot.orderly("POST", "/v1/order", order())
    assert (refused.status, refused.code) == (429, -1003)
    assert refused.headers["X-Seawall"] == "state-unavailable" and refused.headers["Retry-After"] == "1"
    sample = seawall.metrics.registry.get_sample_value
    labels = {"rule": "order.place", "reason": "state_unavailable"}
    assert sample("seawall_ratelimit_rejected_total", labels) == 1
    async with aiohttp.ClientSession() as admin:
        status, detail = await readiness(admin, seawall)
        assert status == 503 and detail.startswith("failing")
        assert sim.snapshot()["requests_by_route"]["order.place"] == 1  # the refusal never reached it

        await redis_server.start()  # empty: settled again once the replica wrote back what it holds
        await wait_until(lambda: seawall.shared is not None and seawall.shared.healthy, timeout=5)
        assert await readiness(admin, seawall) == (200, "ok")
    assert (await bot.orderly("POST", "/v1/order", order())).status == 200


# --- the state itself, on Redis' own clock --------------------------------------------------------


async def shared_state(server: RedisServer, **config: Any) -> tuple[RedisLink, RedisRateLimitState]:
    link = RedisLink(RedisConfig(url=server.url, retry_interval=0.05, **config), Metrics())
    await link.start()
    return link, RedisRateLimitState(link, in_flight_expiry=0.3)


async def test_a_slot_in_flight_on_a_replica_that_died_frees_after_its_expiry(
    redis_server: RedisServer,
) -> None:
    one = (Claim("r", "k", "alias", 1, 0.05, 1),)
    dead_link, dead = await shared_state(redis_server)
    link, alive = await shared_state(redis_server)
    try:
        assert (await dead.acquire(one, (0,), time.monotonic())).admitted  # never released
        await dead_link.close()
        started = time.monotonic()
        refused = await alive.acquire(one, (0,), started)
        assert not refused.admitted and refused.waits[0] == pytest.approx(0.05, abs=0.01)

        async def admitted() -> bool:
            return (await alive.acquire(one, (0,), time.monotonic())).admitted

        await wait_until_async(admitted, timeout=2.0, interval=0.02)
        # Freed by the in-flight expiry (hold + 0.3 s), not before: a slow answer keeps its slot.
        assert time.monotonic() - started >= 0.3
    finally:
        await alive.close()
        await link.close()


async def test_a_release_redis_missed_is_sent_when_it_answers_again(redis_server: RedisServer) -> None:
    one = (Claim("r", "k", "alias", 1, 30.0, 1),)
    link, state = await shared_state(redis_server, timeout=0.1)
    try:
        verdict = await state.acquire(one, (0,), time.monotonic())
        assert verdict.admitted
        assert redis_server.process is not None
        redis_server.process.send_signal(signal.SIGSTOP)  # unreachable, but keeps its data
        try:
            await state.release(one, time.monotonic(), verdict.ticket)
            await wait_until(lambda: not link.up)  # the release timed out
            assert state.describe() == {"backend": "redis", "deciding": "local_share", "local_decisions": 0,
                                        "leased_admissions": 0, "slow_awaiting_redis": 0,
                                        "releases_pending": 1}  # fmt: skip
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
        await wait_until(lambda: link.up and state.describe()["releases_pending"] == 0)
        await state.settled()
        keys = await link.call(lambda r: r.keys(link.key("rl", "*", "r", "*")))
        # No longer in flight (an empty set vanishes), held until answer + window.
        assert [key.rsplit(b":", 1)[1] for key in keys] == [b"held"]
        assert await link.call(lambda r: r.zcard(keys[0])) == 1
    finally:
        await state.close()
        await link.close()
