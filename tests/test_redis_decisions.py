"""Shared decisions at memory speed: batches, leases and the decision budget, against a real redis-server.

What a user notices: concurrent requests do not each cost Redis a round trip and a connection; a busy
replica on a big budget decides at memory speed without ever letting the replicas together spend more
than the budget; leased slots nobody used come back; a Redis that stalls never holds a request longer
than the decision budget; and the fast parser (hiredis) is in use.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis
from fixtures_proxy import wait_until_async
from fixtures_redis import RedisServer
from redis.asyncio.connection import Connection

from proxy.config import RedisConfig
from proxy.config_loader import ConfigError, load_config
from proxy.metrics import Metrics
from proxy.state.ratelimit import Claim, SharedStateDown
from proxy.state.ratelimit_leases import LEASE_TTL
from proxy.state.ratelimit_redis import RedisRateLimitState
from proxy.state.redis_batch import ScriptCall, SharedScript, command_of, pack
from proxy.state.redis_link import RedisLink

STALL = (
    "local t0 = redis.call('TIME') while true do local t = redis.call('TIME') "
    "if (t[1] - t0[1]) * 1000000 + (t[2] - t0[2]) > tonumber(ARGV[1]) then break end end return 1"
)


def claim(limit: int, hold: float = 1.0, scope: str = "key-1") -> Claim:
    return Claim("orders", scope, "orders:key-1", limit, hold, 1)


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[redis.Redis]:
    client = redis.Redis(unix_socket_path=str(redis_server.socket))
    yield client
    await client.aclose()


async def replica(server: RedisServer, **config: object) -> tuple[RedisLink, RedisRateLimitState, Metrics]:
    metrics = Metrics()
    link = RedisLink(RedisConfig(url=server.url, **config), metrics)  # type: ignore[arg-type]
    await link.start()
    return link, RedisRateLimitState(link, in_flight_expiry=11.0), metrics


async def evalsha_calls(raw: redis.Redis) -> int:
    stats = await raw.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def slots_in_flight(raw: redis.Redis) -> int:
    keys = [key async for key in raw.scan_iter(match="seawall:rl:*:flying")]
    return sum([await raw.zcard(key) for key in keys])


async def test_concurrent_decisions_share_one_round_trip_and_one_connection(
    redis_server: RedisServer, raw: redis.Redis
) -> None:
    link, state, _ = await replica(redis_server)
    try:
        before = int((await raw.info("clients"))["connected_clients"])
        calls_before = await evalsha_calls(raw)
        claims = (claim(limit=5),)  # a tight budget: decided in Redis one by one, no leases
        verdicts = await asyncio.gather(*(state.acquire(claims, (0,), time.monotonic()) for _ in range(30)))
        assert sum(v.admitted for v in verdicts) == 5  # the budget holds, decided in one script call
        assert link.describe()["decisions"]["batches"] <= 2
        assert int((await raw.info("clients"))["connected_clients"]) - before <= 2
        # 30 decisions, one merged script call (twice if Redis had to be given the script first)
        assert await evalsha_calls(raw) - calls_before <= 2
    finally:
        await state.close()
        await link.close()


async def test_a_release_rides_with_the_next_decision(redis_server: RedisServer, raw: redis.Redis) -> None:
    link, state, _ = await replica(redis_server)
    try:
        claims = (claim(limit=5, hold=5.0),)
        for _ in range(5):
            verdict = await state.acquire(claims, (0,), time.monotonic())
            assert verdict.admitted
            await state.release(claims, time.monotonic(), verdict.ticket)
        await state.settled()
        assert link.describe()["decisions"]["batches"] <= 6  # five decisions, the releases along with them
        held = [key async for key in raw.scan_iter(match="seawall:rl:*:held")]
        assert sum([await raw.zcard(key) for key in held]) == 5  # every release landed
        assert await slots_in_flight(raw) == 0
    finally:
        await state.close()
        await link.close()


async def test_a_big_budget_is_spent_on_leases_and_never_overspent_by_two_replicas(
    redis_server: RedisServer, raw: redis.Redis
) -> None:
    one, two = await replica(redis_server, replicas=2), await replica(redis_server, replicas=2)
    try:
        claims = (claim(limit=80, hold=30.0),)  # share: 80 / (4 x 2) = 10 slots a lease may take
        admitted: list[str] = []

        async def bot(state: RedisRateLimitState) -> None:
            for _ in range(60):
                verdict = await state.acquire(claims, (0,), time.monotonic())
                if verdict.admitted:
                    admitted.append(verdict.ticket)
                await asyncio.sleep(0)  # the next request comes in a later loop turn

        await asyncio.gather(*(bot(state) for _, state, _ in (one, two) for _ in range(3)))
        leased = sum(state.describe()["leased_admissions"] for _, state, _ in (one, two))
        assert leased > 0  # most of the first half of the budget went at memory speed
        assert len(admitted) <= 80  # never more than the budget, whoever decided

        # Slots leased but never used come back, so what Redis counts is exactly what went out.
        async def only_used_slots_counted() -> bool:
            return await slots_in_flight(raw) == len(admitted)

        await wait_until_async(only_used_slots_counted, timeout=LEASE_TTL * 20)
        # and the rest of the budget can be spent once they are back
        for _ in range(80 - len(admitted)):
            verdict = await one[1].acquire(claims, (0,), time.monotonic())
            assert verdict.admitted
    finally:
        for link, state, _ in (one, two):
            await state.close()
            await link.close()


async def stalled(redis_server: RedisServer, raw: redis.Redis) -> asyncio.Future[Any]:
    """Redis busy running another client's script for 0.6 s, from when this returns."""
    stall = asyncio.ensure_future(raw.eval(STALL, 0, 600_000))
    await wait_until_async(lambda: _busy(redis_server), timeout=5)
    return stall


async def test_a_stalled_redis_never_holds_a_decision_past_its_budget(
    redis_server: RedisServer, raw: redis.Redis
) -> None:
    link, state, metrics = await replica(redis_server, timeout=2.0, decision_budget=0.05)
    try:
        claims = (claim(limit=5),)
        assert (await state.acquire(claims, (0,), time.monotonic())).admitted  # scripts loaded
        stall = await stalled(redis_server, raw)
        started = time.monotonic()
        with pytest.raises(SharedStateDown) as refused:  # the default: refused, nothing unaccounted sent
            await state.acquire(claims, (0,), time.monotonic())
        assert time.monotonic() - started < 0.4  # the budget (0.05 s), not the stall
        assert refused.value.retry_after == 0.05
        over = metrics.registry.get_sample_value("seawall_state_over_budget_total", {"policy": "ratelimit"})
        assert over == 1
        await stall
        assert link.up  # a slow decision is not an outage
        # Redis took a slot for it after all: freed at once, since nothing went out on it.
        await wait_until_async(lambda: _redis_decided(state))
        assert await slots_in_flight(raw) == 1  # the first request's only
        assert (await state.acquire(claims, (0,), time.monotonic())).admitted  # decided in Redis again
    finally:
        await state.close()
        await link.close()


async def test_a_slow_decision_admitted_on_the_local_share_is_counted_in_redis_afterwards(
    redis_server: RedisServer, raw: redis.Redis
) -> None:
    link, state, _ = await replica(redis_server, timeout=2.0, decision_budget=0.05, on_slow="local_share")
    try:
        claims = (claim(limit=5),)
        assert (await state.acquire(claims, (0,), time.monotonic())).admitted  # scripts loaded
        stall = await stalled(redis_server, raw)
        started = time.monotonic()
        verdict = await state.acquire(claims, (0,), time.monotonic())
        assert verdict.admitted  # on this replica's share
        assert time.monotonic() - started < 0.4
        await stall

        async def held_slots() -> int:
            held = [key async for key in raw.scan_iter(match="seawall:rl:*:held")]
            return sum([await raw.zcard(key) for key in held])

        # Redis admitted it after all: that slot is now the request's, in flight while the request is...
        await wait_until_async(lambda: _redis_decided(state))
        assert (await slots_in_flight(raw), await held_slots()) == (2, 0)
        # ...and held for the window once it is answered, like any request's (not freed early).
        await state.release(claims, time.monotonic(), verdict.ticket)
        await state.settled()
        assert (await slots_in_flight(raw), await held_slots()) == (1, 1)
    finally:
        await state.close()
        await link.close()


async def _redis_decided(state: RedisRateLimitState) -> bool:
    await state.settled()
    return state.describe()["slow_awaiting_redis"] == 0


async def _busy(server: RedisServer) -> bool:
    """True while another client's script runs (a new client's PING waits): seen as a slow PING."""
    client = redis.Redis(unix_socket_path=str(server.socket))
    try:
        await asyncio.wait_for(client.ping(), 0.05)
        return False
    except TimeoutError:
        return True
    finally:
        await client.aclose()


async def test_the_fast_parser_reads_redis_replies(redis_server: RedisServer) -> None:
    link, state, _ = await replica(redis_server)
    try:
        await state.acquire((claim(limit=5),), (0,), time.monotonic())
        connection = link.client.connection_pool.make_connection()
        assert type(connection._parser).__name__ == "_AsyncHiredisParser"
    finally:
        await state.close()
        await link.close()


def test_a_decision_budget_longer_than_the_redis_timeout_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "seawall.yaml"
    path.write_text("state:\n  backend: redis\n  redis:\n    timeout: 100ms\n    decision_budget: 300ms\n")
    with pytest.raises(ConfigError) as error:
        load_config(path, env={})
    assert "state.redis.decision_budget: decision_budget must not exceed timeout" in str(error.value)


async def test_a_batch_is_written_exactly_as_redis_py_would_write_its_commands() -> None:
    # Seawall packs its own writes (redis-py's packer was a third of a decision's CPU): the bytes must be
    # the ones redis-py sends, for every kind of argument a script call carries.
    future = asyncio.get_running_loop().create_future()
    script = SharedScript("test.script", "return 1")
    calls = [
        ScriptCall(script, ["seawall:rl:{ab}:orders:1:flying"], ["", "t:1", 11.0, 5, 1.01, -1, 0.0], future),
        ScriptCall(script, ["seawall:dedup:é"], ["payé", 3], future),  # non-ASCII text
        ScriptCall(script, ["seawall:dedup:x"], [b"\x00\xff\r\n", b"", 120000, "s"], future),  # bytes
    ]
    reference = Connection()
    for call in calls:
        assert pack([call]) == b"".join(reference.pack_command(*command_of(call)))
    assert pack(calls) == b"".join(b"".join(reference.pack_command(*command_of(c))) for c in calls)
