"""The shared-state link: up when Redis answers, down (and said so) when it does not, back by itself."""

from __future__ import annotations

import logging
import time

import pytest
from fixtures_proxy import wait_until
from fixtures_redis import RedisServer

from proxy.config import RedisConfig
from proxy.metrics import Metrics
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
