"""The shared-state link: up when Redis answers, down (and said so) when it does not, back by itself."""

from __future__ import annotations

import logging
import time

import pytest
import redis.asyncio as redis
from fixtures_proxy import wait_until
from fixtures_redis import RedisServer

from proxy.config import RedisConfig
from proxy.metrics import Metrics
from proxy.state.ratelimit import Claim
from proxy.state.ratelimit_redis import RedisRateLimitState
from proxy.state.redis_link import RedisLink, StateUnavailableError


async def test_link_reports_redis_loss_fast_and_rejoins(redis_server: RedisServer) -> None:
    metrics = Metrics()
    link = RedisLink(RedisConfig(url=redis_server.url, timeout=0.2, retry_interval=0.05), metrics)
    changes: list[bool] = []
    link.on_change(changes.append)
    await link.start()
    try:
        assert link.ready() == (True, "shared_state", "ok")
        assert await link.call(lambda r: r.set(link.key("probe"), b"1")) is True
        assert metrics.state_backend_up._value.get() == 1

        await redis_server.stop()
        started = time.monotonic()
        with pytest.raises(StateUnavailableError):
            await link.call(lambda r: r.get(link.key("probe")))
        assert time.monotonic() - started < 1.0  # no multi-second hidden retries
        assert link.ready()[2].startswith("degraded")
        assert metrics.state_backend_up._value.get() == 0
        with pytest.raises(StateUnavailableError):  # while down, calls fail at once
            await link.call(lambda r: r.get(link.key("probe")))

        await redis_server.start()
        await wait_until(lambda: link.up, timeout=5)
        assert metrics.state_backend_up._value.get() == 1
        assert changes == [True, False, True]
    finally:
        await link.close()


async def test_link_to_an_absent_redis_starts_down_says_so_and_does_not_hang(
    tmp_path, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    url = f"unix://{tmp_path}/none.sock?password=hunter2"
    link = RedisLink(RedisConfig(url=url, timeout=0.2), Metrics())
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="seawall"):
        await link.start()
    try:
        assert not link.up
        assert time.monotonic() - started < 1.0
        down = [record for record in caplog.records if "shared state (redis) is down" in record.getMessage()]
        assert down, "a Redis that is unreachable at start must be logged"
        assert "hunter2" not in str(down[0].__dict__)
    finally:
        await link.close()


async def _flush_scripts_and(redis_server: RedisServer, *command: str) -> None:
    admin = redis.Redis(unix_socket_path=str(redis_server.socket))
    try:
        await admin.execute_command(*command)
    finally:
        await admin.aclose()


async def test_a_script_redis_forgot_is_loaded_again_and_decisions_stay_shared(
    redis_server: RedisServer,
) -> None:
    one = (Claim("r", "k", "alias", 1, 30.0, 1),)  # one slot, held long after its answer
    links = [RedisLink(RedisConfig(url=redis_server.url, retry_interval=0.05), Metrics()) for _ in range(2)]
    for link in links:
        await link.start()
    first, second = (RedisRateLimitState(link, in_flight_expiry=5.0) for link in links)
    try:
        assert (await first.acquire(one, (0,), time.monotonic())).admitted
        await _flush_scripts_and(redis_server, "SCRIPT", "FLUSH")  # as after a restart with persistence
        verdict = await second.acquire(one, (0,), time.monotonic())
        assert not verdict.admitted, "the slot the first replica holds must still count after NOSCRIPT"
        assert all(link.up for link in links)
        assert second.describe()["local_decisions"] == 0
    finally:
        for link in links:
            await link.close()


async def test_a_redis_error_reply_is_decided_by_the_fail_mode_without_flapping_the_link(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics()
    link = RedisLink(RedisConfig(url=redis_server.url, retry_interval=0.05), metrics)
    changes: list[bool] = []
    link.on_change(changes.append)
    await link.start()
    state = RedisRateLimitState(link, in_flight_expiry=5.0)
    one = (Claim("r", "k", "alias", 5, 0.05, 1),)
    admin = redis.Redis(unix_socket_path=str(redis_server.socket))
    try:
        assert (await state.acquire(one, (0,), time.monotonic())).admitted
        sorted_sets = [key for key in await admin.keys("*") if await admin.type(key) == b"zset"]
        assert sorted_sets
        # A key of the wrong type makes the decision script fail with an error reply (as a script bug or
        # an operator's stray write would): Redis is there and answering, so the link must stay up — no
        # fleet-wide fallback, no readiness flap — and this decision is made per the fail mode.
        for key in sorted_sets:
            await admin.delete(key)
            await admin.set(key, b"not a sorted set")
        with caplog.at_level(logging.WARNING, logger="seawall"):
            verdict = await state.acquire(one, (0,), time.monotonic())
            await state.acquire(one, (0,), time.monotonic())
        assert verdict.admitted, "local_share: the request is decided on this replica's share"
        assert state.describe()["local_decisions"] == 2
        assert link.up and changes == [True]
        assert link.ready() == (True, "shared_state", "ok")
        assert metrics.state_backend_up._value.get() == 1
        refused = [r for r in caplog.records if "refused a call" in r.getMessage()]
        assert len(refused) == 1, "one log line per kind of error, not one per request"
        assert refused[0].__dict__["fields"]["error"] == "WRONGTYPE"

        await admin.delete(*sorted_sets)
        assert (await state.acquire(one, (0,), time.monotonic())).admitted
        assert state.describe()["local_decisions"] == 2, "decided on Redis again"
        assert changes == [True]
    finally:
        await admin.aclose()
        await link.close()
