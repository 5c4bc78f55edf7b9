"""Circuit breakers shared through Redis (`state: redis`): an opening on one replica makes
every replica answer locally, one probe goes out across all of them, and losing Redis leaves each
replica's breakers working on local state until sharing resumes.

Real replicas, a real `redis-server` and the built-in simulator's fault injection, all on loopback. The
single-replica scenarios run on both backends in tests/test_breaker.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

import aiohttp
import pytest
import redis.asyncio as redis
from fixtures_proxy import StartSeawall, wait_until, wait_until_async
from fixtures_redis import RedisServer
from fixtures_simulator import SignedClient, SimFactory

from proxy.app import Seawall
from proxy.simulator.server import Simulator

ORDERS = "/v1/orders"  # orders.list: a signed private call the simulator serves cheaply


@pytest.fixture
async def sim(sim_factory: SimFactory) -> Simulator:
    # Generous exchange limits: these tests are about faults; no rate limiter runs in front here.
    return await sim_factory("orderly", limits={"orders_get": 100_000})


async def replicas(
    start_seawall: StartSeawall, count: int, sim: Simulator, server: RedisServer, reset_timeout: float
) -> list[Seawall]:
    rule = {
        "name": "trading",
        "routes": ["orders.list"],
        "failure_threshold": 3,
        "reset_timeout": reset_timeout,
    }
    overrides: dict[str, Any] = {
        "ratelimit": {"enabled": False},
        "breakers": {"rules": [rule]},
        "state": {"backend": "redis", "redis": {"url": server.url, "timeout": 0.2, "retry_interval": 0.05}},
    }
    return [await start_seawall("orderly", sim.base_url, **overrides) for _ in range(count)]


def bots(session: aiohttp.ClientSession, sim: Simulator, fleet: list[Seawall]) -> list[SignedClient]:
    assert sim.demo_credentials is not None
    return [SignedClient(session, seawall.proxy_url, sim.demo_credentials) for seawall in fleet]


def reached(sim: Simulator) -> int:
    return sim.counters.requests_by_route["orders.list"]


def scope(seawall: Seawall) -> dict[str, Any]:
    return seawall.status()["breaker"]["trading"]["scopes"]["*"]  # type: ignore[no-any-return]


async def test_storm_through_one_replica_opens_the_breaker_on_the_others(
    sim: Simulator, start_seawall: StartSeawall, redis_server: RedisServer
) -> None:
    fleet = await replicas(start_seawall, 2, sim, redis_server, reset_timeout=30)
    sim.add_fault({"kind": "error", "code": -1012, "routes": ["orders.list"]})
    async with aiohttp.ClientSession() as session:
        a, b = bots(session, sim, fleet)
        for _ in range(3):
            answer = await a.orderly("GET", ORDERS)
            assert (answer.code, answer.headers.get("X-Seawall")) == (-1012, None)
        for _ in range(10):
            answer = await b.orderly("GET", ORDERS)
            assert (answer.status, answer.code, answer.headers["X-Seawall"]) == (400, -1012, "circuit-open")
            assert 25 <= int(answer.headers["Retry-After"]) <= 30
    assert reached(sim) == 3  # replica b never sent one
    shown = scope(fleet[1])
    assert (shown["state"], shown["trip_code"]) == ("open", -1012)
    assert fleet[1].metrics.circuit_transitions.labels("trading", "open")._value.get() == 1


async def test_half_open_sends_exactly_one_probe_across_replicas_and_its_success_closes_all(
    sim: Simulator, start_seawall: StartSeawall, redis_server: RedisServer
) -> None:
    fleet = await replicas(start_seawall, 3, sim, redis_server, reset_timeout=0.4)
    storm = sim.add_fault({"kind": "error", "code": -1011, "routes": ["orders.list"]})
    async with aiohttp.ClientSession() as session:
        clients = bots(session, sim, fleet)
        for _ in range(3):
            await clients[0].orderly("GET", ORDERS)
        assert scope(fleet[0])["state"] == "open"
        # The storm ends; the probe is slow, and 30 bots spread over the replicas retry at that moment.
        sim.remove_fault(storm)
        sim.add_fault({"kind": "latency", "delay": 0.2, "routes": ["orders.list"]})
        await wait_until(lambda: scope(fleet[0])["open_remaining_seconds"] == 0)
        answers = await asyncio.gather(*(clients[i % 3].orderly("GET", ORDERS) for i in range(30)))
        assert reached(sim) == 4
        assert sorted(answer.status for answer in answers) == [200] + [400] * 29
        assert sum(answer.headers.get("X-Seawall") == "circuit-open" for answer in answers) == 29
        sim.clear_faults()
        # Closed everywhere: every replica forwards again.
        for client in clients:
            assert (await client.orderly("GET", ORDERS)).status == 200
    assert [scope(seawall)["state"] for seawall in fleet] == ["closed"] * 3


async def test_probe_claim_of_a_replica_that_died_expires(
    sim: Simulator, start_seawall: StartSeawall, redis_server: RedisServer
) -> None:
    a, b = await replicas(start_seawall, 2, sim, redis_server, reset_timeout=0.3)
    storm = sim.add_fault({"kind": "error", "code": -1011, "routes": ["orders.list"]})
    client = redis.Redis.from_url(redis_server.url)
    async with aiohttp.ClientSession() as session:
        bot_a, bot_b = bots(session, sim, [a, b])
        for _ in range(3):
            await bot_a.orderly("GET", ORDERS)
        sim.remove_fault(storm)
        await wait_until(lambda: scope(a)["open_remaining_seconds"] == 0)
        # What a replica that took the probe and died leaves behind: a claim nobody releases, with its TTL.
        [record] = [key async for key in client.scan_iter(match="seawall:breaker:*")]
        await client.set(record + b":probe", b"dead-replica", px=400)
        claimed = time.monotonic()
        answer = await bot_b.orderly("GET", ORDERS)
        assert answer.headers["X-Seawall"] == "circuit-open"  # the probe is taken
        await wait_until_async(lambda: _is(client.exists(record + b":probe"), 0), timeout=3, interval=0.01)
        answer = await bot_b.orderly("GET", ORDERS)  # the next retry is the probe
    await client.aclose()
    assert (answer.status, answer.headers.get("X-Seawall")) == (200, None)
    assert time.monotonic() - claimed >= 0.35
    assert reached(sim) == 4
    assert scope(b)["state"] == "closed"


async def _is(reading: Awaitable[Any], expected: Any) -> bool:
    return bool(await reading == expected)


async def test_redis_outage_leaves_breakers_local_and_sharing_resumes_when_it_returns(
    sim: Simulator, start_seawall: StartSeawall, redis_server: RedisServer
) -> None:
    fleet = await replicas(start_seawall, 3, sim, redis_server, reset_timeout=30)
    storm = sim.add_fault({"kind": "error", "code": -1011, "routes": ["orders.list"]})
    async with aiohttp.ClientSession() as session:
        a, b, c = bots(session, sim, fleet)
        await redis_server.stop()
        for _ in range(3):
            await a.orderly("GET", ORDERS)
        # Replica a opened on its own state and answers locally; b knows nothing of it, yet still answers.
        assert (await a.orderly("GET", ORDERS)).headers["X-Seawall"] == "circuit-open"
        answer = await b.orderly("GET", ORDERS)
        assert (answer.code, answer.headers.get("X-Seawall")) == (-1011, None)
        assert reached(sim) == 4

        await redis_server.start()
        await wait_until(lambda: all(seawall.shared is not None and seawall.shared.up for seawall in fleet))
        for _ in range(2):  # b's third consecutive failure opens it, and now every replica learns it
            await b.orderly("GET", ORDERS)
        assert scope(fleet[1])["state"] == "open"
        sim.remove_fault(storm)
        answer = await c.orderly("GET", ORDERS)
    assert (answer.code, answer.headers["X-Seawall"]) == (-1011, "circuit-open")
    assert reached(sim) == 6
