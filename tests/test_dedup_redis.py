"""Deduplication shared through Redis: several Seawall replicas in front of one exchange hold each identity
once between them (a refused identity is taken over by one corrected request only), a claim whose replica
died does not block retries, and losing Redis degrades dedup to per-replica without failing requests.

Every test runs real replicas (in this process, each with its own listeners and Redis link), a real
`redis-server` and the built-in simulator or a recording upstream, all on loopback. The single-replica
scenarios run on both backends in tests/test_dedup.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import orjson
import redis.asyncio as redis
from aiohttp import web
from fixtures_proxy import RecordingUpstream, StartSeawall, held_then, held_until, wait_until
from fixtures_redis import RedisServer
from fixtures_simulator import SignedClient
from multidict import CIMultiDictProxy

from proxy.app import Seawall
from proxy.policies.dedup import _digest
from proxy.simulator.server import Simulator

MARKET_BUY = {"symbol": "PERP_ETH_USDC", "order_type": "MARKET", "order_quantity": 0.01, "side": "BUY"}
LIMIT_BUY = {"symbol": "PERP_ETH_USDC", "order_type": "LIMIT", "order_quantity": 0.01, "side": "BUY"}
ORDERLY_BOT = {
    "orderly-account-id": "0xacc1",
    "orderly-key": "ed25519:KEY1",
    "Content-Type": "application/json",
}


def shared(server: RedisServer, **redis_settings: Any) -> dict[str, Any]:
    settings = {"url": server.url, "timeout": 0.2, "retry_interval": 0.05, **redis_settings}
    return {"state": {"backend": "redis", "redis": settings}}


async def replicas(
    start_seawall: StartSeawall, count: int, upstream_url: str, **overrides: Any
) -> list[Seawall]:
    return [await start_seawall("orderly", upstream_url, **overrides) for _ in range(count)]


def bots(session: aiohttp.ClientSession, sim: Simulator, fleet: list[Seawall]) -> list[SignedClient]:
    assert sim.demo_credentials is not None
    return [SignedClient(session, seawall.proxy_url, sim.demo_credentials) for seawall in fleet]


def orders_for(sim: Simulator, cid: str) -> int:
    return sum(1 for order in sim.orders() if order.client_order_id == cid)


async def place(
    session: aiohttp.ClientSession, seawall: Seawall, body: dict[str, Any], **headers: str
) -> tuple[int, CIMultiDictProxy[str], bytes]:
    async with session.post(
        seawall.proxy_url + "/v1/order", data=json.dumps(body).encode(), headers={**ORDERLY_BOT, **headers}
    ) as response:
        return response.status, response.headers, await response.read()


async def dedup_records(server: RedisServer) -> dict[bytes, dict[bytes, bytes]]:
    client = redis.Redis.from_url(server.url)
    try:
        return {key: await client.hgetall(key) async for key in client.scan_iter(match="seawall:dedup:*")}
    finally:
        await client.aclose()


async def test_twenty_identical_placements_spread_over_three_replicas_make_one_order(
    orderly_sim: Simulator,
    sim_http: aiohttp.ClientSession,
    start_seawall: StartSeawall,
    redis_server: RedisServer,
) -> None:
    # The exchange is slow for the first placement: the twins arrive on every replica while it is in flight.
    orderly_sim.add_fault({"kind": "latency", "delay": 0.3, "paths": ["/v1/order"], "count": 1})
    fleet = await replicas(start_seawall, 3, orderly_sim.base_url, **shared(redis_server))
    clients = bots(sim_http, orderly_sim, fleet)
    order = {**MARKET_BUY, "client_order_id": "spread-1"}
    answers = await asyncio.gather(*(clients[i % 3].orderly("POST", "/v1/order", order) for i in range(20)))
    assert orders_for(orderly_sim, "spread-1") == 1
    assert {answer.status for answer in answers} == {200}
    assert len({answer.body for answer in answers}) == 1 and answers[0].json["success"] is True
    replayed = [answer for answer in answers if answer.headers.get("X-Seawall") == "dedup-replay"]
    assert len(replayed) == 19
    original = next(answer for answer in answers if "X-Seawall" not in answer.headers)
    expected = [(k, v) for k, v in original.headers.items() if k not in ("Date", "Server")]
    for answer in replayed:  # byte for byte: status, headers (in order) and body
        assert [
            (k, v) for k, v in answer.headers.items() if k not in ("Date", "Server", "X-Seawall")
        ] == expected
    # Later retries on any replica are answered from Redis.
    for client in clients:
        retry = await client.orderly("POST", "/v1/order", order)
        assert (retry.headers["X-Seawall"], retry.body) == ("dedup-replay", original.body)
    assert orders_for(orderly_sim, "spread-1") == 1


async def test_retry_on_another_replica_after_a_lost_answer_is_held(
    orderly_sim: Simulator,
    sim_http: aiohttp.ClientSession,
    start_seawall: StartSeawall,
    redis_server: RedisServer,
) -> None:
    orderly_sim.add_fault({"kind": "lose_answer", "lose_mode": "reset", "paths": ["/v1/order"], "count": 1})
    first, second = bots(
        sim_http, orderly_sim, await replicas(start_seawall, 2, orderly_sim.base_url, **shared(redis_server))
    )
    order = {**MARKET_BUY, "client_order_id": "lost-elsewhere"}
    assert (await first.orderly("POST", "/v1/order", order)).status >= 400
    retry = await second.orderly("POST", "/v1/order", order)
    assert (retry.status, retry.headers["X-Seawall"], retry.code) == (409, "dedup-conflict", -1007)
    # The rest of the profile's 20 s unknown window, as Redis holds it for every replica.
    seconds = int(retry.headers["Retry-After"])
    assert 15 <= seconds <= 20
    assert "look the order up with GET /v1/client/order/{client_order_id}" in retry.json["message"]
    assert f"this identity is held for {seconds} more seconds" in retry.json["message"]
    assert orders_for(orderly_sim, "lost-elsewhere") == 1


async def test_conflicting_payload_is_refused_on_every_replica(
    upstream: RecordingUpstream, start_seawall: StartSeawall, redis_server: RedisServer
) -> None:
    release = asyncio.Event()

    upstream.responder = held_until(release, {"order_id": 1})
    a, b, c = await replicas(start_seawall, 3, upstream.url, **shared(redis_server))
    order = {**MARKET_BUY, "client_order_id": "conflict-1"}
    other = {**order, "order_quantity": 0.02}
    async with aiohttp.ClientSession() as session:
        first = asyncio.create_task(place(session, a, order))
        await wait_until(lambda: len(upstream.seen) == 1)
        status, headers, body = await place(session, b, other)  # while the first is in flight
        assert (status, headers["X-Seawall"], json.loads(body)["code"]) == (409, "dedup-conflict", -1007)
        release.set()
        assert (await first)[0] == 200
        status, headers, body = await place(session, c, other)  # after it completed
        assert (status, headers["X-Seawall"], json.loads(body)["code"]) == (409, "dedup-conflict", -1007)
    assert len(upstream.seen) == 1


async def test_one_corrected_request_takes_a_refused_identity_over_even_racing_on_two_replicas(
    upstream: RecordingUpstream, start_seawall: StartSeawall, redis_server: RedisServer
) -> None:
    release = asyncio.Event()

    async def exchange(request: web.BaseRequest, body: bytes) -> web.StreamResponse:
        if json.loads(body)["order_price"] == 5000:
            return web.json_response({"success": False, "code": -1105, "message": "price"}, status=400)
        await release.wait()
        return web.json_response({"success": True, "data": {"order_id": 9}})

    upstream.responder = exchange
    a, b, c = await replicas(start_seawall, 3, upstream.url, **shared(redis_server))
    wrong = {**LIMIT_BUY, "order_price": 5000, "client_order_id": "race-1"}
    async with aiohttp.ClientSession() as session:
        refused = await place(session, a, wrong)
        (record,) = (await dedup_records(redis_server)).values()
        assert (record[b"s"], record[b"r"]) == (b"s", b"1")  # a stored answer, flagged as a refusal
        replayed = await place(session, b, wrong)  # the identical twin, on a replica without a copy
        assert (replayed[1]["X-Seawall"], replayed[2]) == ("dedup-replay", refused[2])
        # Two different corrections at once, on two replicas: one is sent, the other is a conflict.
        fixes = [{**wrong, "order_price": 2950}, {**wrong, "order_price": 2940}]
        racing = [
            asyncio.create_task(place(session, replica, fix))
            for replica, fix in zip((a, b), fixes, strict=True)
        ]
        await wait_until(lambda: any(task.done() for task in racing))
        loser = next(i for i, task in enumerate(racing) if task.done())
        winner = 1 - loser
        status, headers, body = racing[loser].result()
        assert (status, headers["X-Seawall"], json.loads(body)["code"]) == (409, "dedup-conflict", -1007)
        # A twin of the correction in flight, on a third replica, waits for its answer.
        twin = asyncio.create_task(place(session, c, fixes[winner]))
        await wait_until(lambda: c.status()["dedup"]["waiting_remote"] == 1)
        release.set()
        placed, twin_answer = await racing[winner], await twin
    assert (placed[0], "X-Seawall" in placed[1], json.loads(placed[2])["data"]["order_id"]) == (200, False, 9)
    assert (twin_answer[1]["X-Seawall"], twin_answer[2]) == ("dedup-replay", placed[2])
    assert [json.loads(seen.body)["order_price"] for seen in upstream.seen] == [
        5000,
        fixes[winner]["order_price"],
    ]
    (record,) = (await dedup_records(redis_server)).values()
    assert record[b"s"] == b"s" and b"r" not in record  # settled by the success: no longer replaceable


async def test_twins_on_other_replicas_get_the_transient_failure_and_a_later_retry_goes_through(
    upstream: RecordingUpstream, start_seawall: StartSeawall, redis_server: RedisServer
) -> None:
    release = asyncio.Event()
    upstream.responder = held_then(release, {"success": False, "code": -1011, "message": "try again"})
    a, b, c = await replicas(start_seawall, 3, upstream.url, **shared(redis_server))
    order = {**MARKET_BUY, "client_order_id": "storm-1"}
    async with aiohttp.ClientSession() as session:
        leader = asyncio.create_task(place(session, a, order))
        await wait_until(lambda: len(upstream.seen) == 1)
        twins = [asyncio.create_task(place(session, replica, order)) for replica in (b, c)]
        # Both twins wait on the claim of replica `a` before the exchange answers.
        await wait_until(
            lambda: b.status()["dedup"]["waiting_remote"] + c.status()["dedup"]["waiting_remote"] == 2
        )
        records = await dedup_records(redis_server)
        assert [record.get(b"w") for record in records.values()] == [b"1"]  # so its settlement is published
        release.set()
        results = [await leader, *(await asyncio.gather(*twins))]
        assert [json.loads(body)["code"] for _, _, body in results] == [-1011] * 3
        assert len(upstream.seen) == 1  # the twins were not sent
        status, _, body = await place(session, c, order)
    assert (status, json.loads(body)["success"]) == (200, True)
    assert len(upstream.seen) == 2


async def test_claim_of_a_replica_that_died_expires_and_the_retry_goes_through(
    upstream: RecordingUpstream, start_seawall: StartSeawall, redis_server: RedisServer
) -> None:
    (replica,) = await replicas(start_seawall, 1, upstream.url, **shared(redis_server))
    order = {**MARKET_BUY, "client_order_id": "orphan-1"}
    # What a replica that died mid-request leaves behind: an in-flight claim (no answer), with its lock
    # TTL, that nobody refreshes. The identity is the one Seawall derives for (account, client order id).
    identity = _digest("client_order_id", ORDERLY_BOT["orderly-account-id"], "orphan-1")
    fingerprint = _digest("POST", "/v1/order", "", orjson.dumps(order, option=orjson.OPT_SORT_KEYS))
    client = redis.Redis.from_url(redis_server.url)
    try:
        key = f"seawall:dedup:{identity}"
        await client.hset(key, mapping={"s": "f", "fp": fingerprint, "o": "dead-replica"})
        await client.pexpire(key, 600)
        started = time.monotonic()
        async with aiohttp.ClientSession() as session:
            status, headers, body = await place(session, replica, order)
        waited = time.monotonic() - started
    finally:
        await client.aclose()
    assert (status, headers.get("X-Seawall"), json.loads(body)["success"]) == (200, None, True)
    assert 0.4 < waited < 3  # held while the claim lived, then sent once the lock expired
    assert len(upstream.seen) == 1


async def test_redis_outage_holds_what_a_replica_saw_refuses_what_it_cannot_vouch_for_and_resumes(
    upstream: RecordingUpstream, start_seawall: StartSeawall, redis_server: RedisServer
) -> None:
    a, b = await replicas(start_seawall, 2, upstream.url, **shared(redis_server))
    async with aiohttp.ClientSession() as session:
        first = await place(session, a, {**MARKET_BUY, "client_order_id": "outage-1"})
        assert first[0] == 200
        await redis_server.stop()
        await wait_until(lambda: not any(r.shared is not None and r.shared.up for r in (a, b)))
        # The replica that placed it still answers its retry, from its own copy.
        retry = await place(session, a, {**MARKET_BUY, "client_order_id": "outage-1"})
        assert (retry[0], retry[1]["X-Seawall"], retry[2]) == (200, "dedup-replay", first[2])
        async with session.get(a.admin_url + "/readyz") as response:
            assert response.status == 200
            assert (await response.json())["checks"]["shared_state"].startswith("degraded")
        # Another replica cannot tell whether it was placed: a transient refusal, not a second order.
        elsewhere = await place(session, b, {**MARKET_BUY, "client_order_id": "outage-1"})
        assert (elsewhere[0], elsewhere[1]["X-Seawall"], json.loads(elsewhere[2])["code"]) == (
            429,
            "state-unavailable",
            -1003,
        )
        assert "Retry-After" in elsewhere[1]
        # Nor can any replica for an identity none of them holds; a request without identity goes through.
        assert (await place(session, a, {**MARKET_BUY, "client_order_id": "outage-2"}))[0] == 429
        assert (await place(session, b, {**MARKET_BUY}))[0] == 200
        assert len(upstream.seen) == 2
        assert b.status()["dedup"]["unvouched"] == 1 and a.status()["dedup"]["unvouched"] == 1

        await redis_server.start()  # empty: the replicas rebuild it from what they hold
        await wait_until(lambda: all(r.shared is not None and r.shared.healthy for r in (a, b)), timeout=10)
        again = await place(session, b, {**MARKET_BUY, "client_order_id": "outage-1"})
        assert (again[0], again[1]["X-Seawall"], again[2]) == (200, "dedup-replay", first[2])
        status, _, body = await place(session, a, {**MARKET_BUY, "client_order_id": "after-1"})
        twin = await place(session, b, {**MARKET_BUY, "client_order_id": "after-1"})
    assert (status, twin[0], twin[1]["X-Seawall"], twin[2]) == (200, 200, "dedup-replay", body)
    assert len(upstream.seen) == 3


async def test_redis_holds_hashed_identities_only(
    upstream: RecordingUpstream, start_seawall: StartSeawall, redis_server: RedisServer
) -> None:
    (replica,) = await replicas(start_seawall, 1, upstream.url, **shared(redis_server))
    async with aiohttp.ClientSession() as session:
        await place(session, replica, {**MARKET_BUY, "client_order_id": "secret-cid"})
        await place(session, replica, {**MARKET_BUY}, **{"Idempotency-Key": "secret-idem"})
    records = await dedup_records(redis_server)
    assert len(records) == 2
    for key, record in records.items():
        for secret in (b"secret-cid", b"secret-idem", b"0xacc1", b"KEY1"):
            assert secret not in key
            assert secret not in record[b"fp"]
