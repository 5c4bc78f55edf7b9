"""No duplicate order when Redis forgets: two replicas on one real `redis-server`, the built-in simulator.

A MARKET placement goes through replica A; then Redis loses what it held (a restart without persistence,
an operator's FLUSHALL) or is down; the bot's blind retry goes through replica B. Before, B forwarded it
and the exchange held two orders for one client order id. Now Redis's loss is noticed (its marker is gone,
its run id changed), every replica writes back what it holds, and until then — or while Redis is down —
B answers what it cannot vouch for with a transient -1003 instead of forwarding it. Replicas also count
one another through heartbeats, so when Redis goes away each spends only its share of a budget.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Any

import aiohttp
import redis.asyncio as redis
from fixtures_proxy import RecordingUpstream, StartSeawall, held_then, wait_until
from fixtures_redis import RedisServer
from fixtures_simulator import Answer, SignedClient, SimFactory
from redis_scenarios import bots, fleet, orders_per_client_order_id, redis_state

from proxy.app import Seawall
from proxy.simulator.server import Simulator
from proxy.simulator.symbols import resting_order

MARKET_BUY = {"symbol": "PERP_ETH_USDC", "order_type": "MARKET", "order_quantity": 0.01, "side": "BUY"}


def healthy(replicas: list[Seawall]) -> bool:
    return all(replica.shared is not None and replica.shared.healthy for replica in replicas)


def down(replicas: list[Seawall]) -> bool:
    return not any(replica.shared is not None and replica.shared.up for replica in replicas)


async def retry_until_settled(bot: SignedClient, order: dict[str, Any]) -> tuple[Answer, list[str]]:
    """A bot's blind retry: again (after its back-off) while the answer is transient."""
    seen: list[str] = []
    for _ in range(200):
        answer = await bot.orderly("POST", "/v1/order", order)
        seen.append(answer.headers.get("X-Seawall") or str(answer.status))
        if answer.status != 429:
            return answer, seen
        await asyncio.sleep(0.05)
    raise AssertionError(f"never settled: {seen[-5:]}")


async def two_replicas(
    start_seawall: StartSeawall, sim: Simulator, server: RedisServer, **overrides: Any
) -> list[Seawall]:
    return await fleet(start_seawall, "orderly", sim.base_url, 2, **redis_state(server.url), **overrides)


async def test_a_retry_through_another_replica_after_redis_restarted_empty_gets_the_first_answer(
    sim_factory: SimFactory,
    sim_http: aiohttp.ClientSession,
    start_seawall: StartSeawall,
    redis_server: RedisServer,
) -> None:
    sim = await sim_factory("orderly")
    a, b = await two_replicas(start_seawall, sim, redis_server)
    via_a, via_b = bots(sim_http, sim, [a, b])
    order = {**MARKET_BUY, "client_order_id": "forgotten-1"}
    placed = await via_a.orderly("POST", "/v1/order", order)
    assert placed.status == 200

    await redis_server.stop()
    await redis_server.start()  # no persistence: it comes back empty
    retry, seen = await retry_until_settled(via_b, order)
    assert (retry.status, retry.headers["X-Seawall"], retry.body) == (200, "dedup-replay", placed.body)
    assert set(seen[:-1]) <= {"state-unavailable"}  # until A had written its answer back
    assert orders_per_client_order_id(sim)["forgotten-1"] == 1
    assert a.status()["state"]["rebuilds"] == 1 and b.status()["state"]["rebuilds"] == 1


async def test_an_operators_flushall_is_noticed_and_rebuilt_without_the_link_ever_going_down(
    sim_factory: SimFactory,
    sim_http: aiohttp.ClientSession,
    start_seawall: StartSeawall,
    redis_server: RedisServer,
) -> None:
    sim = await sim_factory("orderly")
    a, b = await two_replicas(start_seawall, sim, redis_server)
    via_a, via_b = bots(sim_http, sim, [a, b])
    order = {**MARKET_BUY, "client_order_id": "flushed-1"}
    placed = await via_a.orderly("POST", "/v1/order", order)
    client = redis.Redis.from_url(redis_server.url)
    try:
        await client.flushall()
    finally:
        await client.aclose()
    retry, _ = await retry_until_settled(via_b, order)
    assert (retry.headers["X-Seawall"], retry.body) == ("dedup-replay", placed.body)
    assert orders_per_client_order_id(sim)["flushed-1"] == 1
    assert (
        a.shared is not None
        and a.metrics.registry.get_sample_value("seawall_state_rebuilds_total", {"reason": "generation"}) == 1
    )
    assert a.shared.up and b.shared is not None and b.shared.up  # never down: Redis answered all along


async def test_while_redis_is_down_another_replica_refuses_the_retry_instead_of_placing_it(
    sim_factory: SimFactory,
    sim_http: aiohttp.ClientSession,
    start_seawall: StartSeawall,
    redis_server: RedisServer,
) -> None:
    sim = await sim_factory("orderly")
    a, b = await two_replicas(start_seawall, sim, redis_server)
    via_a, via_b = bots(sim_http, sim, [a, b])
    order = {**MARKET_BUY, "client_order_id": "down-1"}
    placed = await via_a.orderly("POST", "/v1/order", order)
    await redis_server.stop()
    await wait_until(lambda: down([a, b]), timeout=3)
    for _ in range(3):
        refused = await via_b.orderly("POST", "/v1/order", order)
        assert (refused.status, refused.code, refused.headers["X-Seawall"]) == (
            429,
            -1003,
            "state-unavailable",
        )
        assert refused.headers["Retry-After"] == "1"
        assert "cannot tell whether another one already sent" in refused.json["message"]
    mine = await via_a.orderly("POST", "/v1/order", order)  # A holds it: its own retry is replayed
    assert (mine.headers["X-Seawall"], mine.body) == ("dedup-replay", placed.body)
    assert orders_per_client_order_id(sim)["down-1"] == 1
    sample = b.metrics.registry.get_sample_value
    assert sample("seawall_dedup_total", {"route": "order.place", "kind": "unvouched"}) == 3
    # Requests without an identity, and reads, still go through.
    assert (await via_b.orderly("POST", "/v1/order", resting_order(None))).status == 200
    assert (await via_b.orderly("GET", "/v1/orders")).status == 200


async def test_forwarding_what_cannot_be_vouched_for_is_a_choice_per_rule(
    sim_factory: SimFactory,
    sim_http: aiohttp.ClientSession,
    start_seawall: StartSeawall,
    redis_server: RedisServer,
) -> None:
    sim = await sim_factory("orderly")
    rules = [{"routes": ["order.place"], "identity": "client_order_id", "on_unavailable": "forward"}]
    a, b = await two_replicas(start_seawall, sim, redis_server, dedup={"rules": rules})
    via_a, via_b = bots(sim_http, sim, [a, b])
    await redis_server.stop()
    await wait_until(lambda: down([a, b]), timeout=3)
    order = {**MARKET_BUY, "client_order_id": "forward-1"}
    first = await via_a.orderly("POST", "/v1/order", order)
    again = await via_a.orderly("POST", "/v1/order", order)
    assert (first.status, again.headers["X-Seawall"]) == (200, "dedup-replay")  # still per replica
    assert (await via_b.orderly("POST", "/v1/order", order)).status == 200  # the documented risk
    assert orders_per_client_order_id(sim)["forward-1"] == 2


async def test_the_only_replica_says_so_and_keeps_placing_while_redis_is_down(
    sim_factory: SimFactory,
    sim_http: aiohttp.ClientSession,
    start_seawall: StartSeawall,
    redis_server: RedisServer,
) -> None:
    sim = await sim_factory("orderly")
    (alone,) = await fleet(
        start_seawall, "orderly", sim.base_url, 1, **redis_state(redis_server.url, replicas=1)
    )
    (bot,) = bots(sim_http, sim, [alone])
    await redis_server.stop()
    await wait_until(lambda: down([alone]), timeout=3)
    order = {**MARKET_BUY, "client_order_id": "alone-1"}
    first = await bot.orderly("POST", "/v1/order", order)
    retry = await bot.orderly("POST", "/v1/order", order)
    assert (first.status, retry.headers["X-Seawall"]) == (200, "dedup-replay")

    await redis_server.start()  # empty: what was decided alone is written back
    await wait_until(lambda: healthy([alone]), timeout=5)
    client = redis.Redis.from_url(redis_server.url)
    try:
        records = [key async for key in client.scan_iter(match="seawall:dedup:*")]
        assert len(records) == 1 and (await client.hget(records[0], "s")) == b"s"
    finally:
        await client.aclose()
    assert orders_per_client_order_id(sim)["alone-1"] == 1


async def test_replicas_count_one_another_and_each_spends_its_share_while_redis_is_down(
    sim_factory: SimFactory,
    sim_http: aiohttp.ClientSession,
    start_seawall: StartSeawall,
    redis_server: RedisServer,
) -> None:
    limit = 4
    sim = await sim_factory("orderly", limits={"order_create": (limit, 1.0)})
    rules = [
        {"name": "order.place", "routes": ["order.place"], "limit": limit, "window": 1.0, "max_wait": 0.2}
    ]
    # `state.redis.replicas` is not set: the share comes from the heartbeats.
    a, b = await two_replicas(start_seawall, sim, redis_server, ratelimit={"rules": rules})
    await wait_until(lambda: [replica.status()["state"]["replicas"] for replica in (a, b)] == [2, 2])
    assert a.metrics.registry.get_sample_value("seawall_state_replicas") == 2
    via_a, via_b = bots(sim_http, sim, [a, b])
    await redis_server.stop()
    await wait_until(lambda: down([a, b]), timeout=3)
    answers = await asyncio.gather(
        *(
            bot.orderly("POST", "/v1/order", resting_order(None))
            for bot in (via_a, via_b)
            for _ in range(limit)
        )
    )
    statuses = sorted(answer.status for answer in answers)
    assert statuses == [200] * limit + [429] * limit  # half of the budget each
    assert {answer.headers.get("X-Seawall") for answer in answers if answer.status == 429} == {"ratelimit"}
    snapshot = sim.snapshot()
    assert -1003 not in snapshot["answers_by_code"]
    assert json.dumps(a.status()["state"]).count('"replicas": 2') == 1  # still known while Redis is away


async def test_a_claim_that_ended_while_redis_was_unreachable_is_released_when_it_answers_again(
    upstream: RecordingUpstream, start_seawall: StartSeawall, redis_server: RedisServer
) -> None:
    release = asyncio.Event()
    upstream.responder = held_then(release, {"success": False, "code": -1011, "message": "try again"})
    a, b = await fleet(start_seawall, "orderly", upstream.url, 2, **redis_state(redis_server.url))
    order = {**MARKET_BUY, "client_order_id": "dropped-1"}
    headers = {
        "orderly-account-id": "0xacc1",
        "orderly-key": "ed25519:KEY1",
        "Content-Type": "application/json",
    }
    async with aiohttp.ClientSession() as session:

        async def place(replica: Seawall) -> int:
            body = json.dumps(order).encode()
            async with session.post(replica.proxy_url + "/v1/order", data=body, headers=headers) as answer:
                await answer.read()
                return answer.status

        first = asyncio.create_task(place(a))
        await wait_until(lambda: len(upstream.seen) == 1)  # claimed in Redis, at the exchange
        assert redis_server.process is not None
        redis_server.process.send_signal(signal.SIGSTOP)  # unreachable, but keeps its data
        try:
            await wait_until(lambda: a.shared is not None and not a.shared.up, timeout=3)
            release.set()
            assert await first == 400  # the transient -1011: nothing to keep, and Redis cannot be told
            assert a.status()["dedup"]["to_release"] == 1
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
        await wait_until(lambda: healthy([a, b]) and a.status()["dedup"]["to_release"] == 0, timeout=5)
        started = time.monotonic()
        assert await place(b) == 200  # the retry elsewhere goes through at once
    assert time.monotonic() - started < 2.0  # not after the claim's 6 s lock TTL
    assert len(upstream.seen) == 2
