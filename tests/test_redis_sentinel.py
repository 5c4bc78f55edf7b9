"""Shared state on a real Sentinel setup (`state.redis.mode: sentinel`): a master, its replica and three
sentinels. Seawall finds the master through the sentinels named in its URL, keeps one budget and one
order per identity across replicas in both profiles, and when the master dies under load and the
sentinels promote its replica, loses no answer, places no order twice, earns no -1003 from the exchange,
and rejoins the new master on its own.

One setup per module (`redis_sentinel`: whole and empty for each test), started by the fixture with
`redis-server` and `redis-sentinel` (or `redis-server CONF --sentinel`) on loopback TCP ports.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import pytest
from fixtures_proxy import StartSeawall, seawall_config, wait_until
from fixtures_redis import PASSWORD, LocalSentinel
from fixtures_simulator import SimFactory
from redis_scenarios import (
    ORDER_LIMIT,
    bots,
    fleet,
    new_client_order_id,
    orders_per_client_order_id,
    place_market,
    placements,
    redis_state,
)

from proxy.app import Seawall
from proxy.config_loader import ConfigError, build_config, redacted
from proxy.state.redis_clients import sentinel_addresses


def on_sentinel(setup: LocalSentinel, **settings: Any) -> dict[str, Any]:
    return redis_state(setup.url, "sentinel", sentinel_master=LocalSentinel.MASTER, **settings)


def healthy(replicas: list[Seawall]) -> bool:
    return all(replica.shared is not None and replica.shared.healthy for replica in replicas)


@pytest.mark.parametrize("profile", ["orderly", "woox"])
async def test_replicas_find_the_master_through_the_sentinels_and_share_budget_and_orders(
    profile: str,
    redis_sentinel: LocalSentinel,
    sim_factory: SimFactory,
    sim_http: aiohttp.ClientSession,
    start_seawall: StartSeawall,
) -> None:
    sim = await sim_factory(profile)
    sim.add_fault({"kind": "latency", "delay": 0.3, "paths": ["/v1/order"], "count": 1})
    replicas = await fleet(start_seawall, profile, sim.base_url, 3, **on_sentinel(redis_sentinel))
    clients = bots(sim_http, sim, replicas)
    twin = new_client_order_id()
    answers = await asyncio.gather(*(place_market(clients[i % 3], profile, twin) for i in range(20)))
    assert {answer.status for answer in answers} == {200} and len({a.body for a in answers}) == 1
    burst = await asyncio.gather(
        *(place_market(clients[i % 3], profile, new_client_order_id()) for i in range(30))
    )
    assert sum(1 for answer in burst if answer.status == 200) >= 10
    snapshot = sim.snapshot()
    assert -1003 not in snapshot["answers_by_code"]
    assert snapshot["max_attempted_in_window"][ORDER_LIMIT[profile]] <= 10
    assert max(orders_per_client_order_id(sim).values()) == 1
    for replica in replicas:
        assert replica.status()["ratelimit"]["state"]["local_decisions"] == 0
        assert (
            replica.status()["state"] | {"mode": "sentinel", "phase": "settled", "replicas": 3}
            == (replica.status()["state"])
        )


def test_the_sentinel_url_and_passwords_are_shown_redacted() -> None:
    url = "rediss://seawall:hunter2@10.0.0.1:26379,10.0.0.2:26379/0?sentinel_password=hunter3"
    config = seawall_config(
        "orderly", "http://127.0.0.1:1", **redis_state(url, "sentinel", sentinel_master="mymaster")
    )
    shown = redacted(config)["state"]["redis"]["url"]
    assert shown == "rediss://seawall:***@10.0.0.1:26379,10.0.0.2:26379/0?sentinel_password=***"


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["orderly", "woox"])
async def test_a_promoted_replica_takes_over_under_load_without_a_lost_answer_or_a_second_order(
    profile: str,
    redis_sentinel: LocalSentinel,
    sim_factory: SimFactory,
    sim_http: aiohttp.ClientSession,
    start_seawall: StartSeawall,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sim = await sim_factory(profile)
    replicas = await fleet(start_seawall, profile, sim.base_url, 3, **on_sentinel(redis_sentinel))
    clients = bots(sim_http, sim, replicas)
    old_master = redis_sentinel.master()

    async def fail_over_the_master() -> None:
        await asyncio.sleep(1.0)  # load runs on the first master
        await asyncio.to_thread(old_master.kill)
        await wait_until(lambda: not healthy(replicas), timeout=5)
        await wait_until(lambda: healthy(replicas), timeout=20)  # promoted, found, rebuilt
        await asyncio.sleep(1.0)  # and load runs on the new master

    with caplog.at_level(logging.INFO, logger="seawall"):
        load = await placements(clients, profile, bots_count=12, meanwhile=fail_over_the_master)
    assert redis_sentinel.master() is not old_master
    assert load.lost == []  # every request got an answer
    assert not [cid for cid, end in load.settled.items() if end.startswith("gave up")], load.settled
    orders = orders_per_client_order_id(sim)
    assert max(orders.values()) == 1, "an order placed twice"
    assert all(orders[cid] == 1 for cid, end in load.settled.items() if end in ("placed", "replayed"))
    snapshot = sim.snapshot()
    assert -1003 not in snapshot["answers_by_code"], load.by_second
    assert snapshot["max_attempted_in_window"][ORDER_LIMIT[profile]] <= 10
    assert load.answers["placed"] >= 10 and load.answers["state-unavailable"] >= 1
    for replica in replicas:
        assert replica.status()["state"]["rebuilds"] >= 1  # the new master is another server
        assert replica.status()["ratelimit"]["state"]["deciding"] == "shared"
    said = [record.getMessage() for record in caplog.records]
    assert any("may have lost what the replicas shared" in line for line in said)
    assert any("rebuilt: every replica wrote back" in line for line in said)
    shown = " ".join(str(record.__dict__) for record in caplog.records) + str(replicas[0].status())
    assert PASSWORD not in shown and ":***@" in shown  # the URL is logged, its password never


def test_sentinel_mode_needs_the_masters_name_and_takes_it_from_the_environment() -> None:
    sentinels = "redis://10.0.0.1:26379,10.0.0.2:26379/0"
    with pytest.raises(ConfigError) as error:
        build_config({}, env={"SEAWALL_REDIS_MODE": "sentinel", "SEAWALL_REDIS_URL": sentinels})
    expected = "SEAWALL_REDIS_MODE='sentinel' (overrides state.redis.mode): sentinel needs"
    assert f"{expected} state.redis.sentinel_master" in str(error.value)
    env = {
        "SEAWALL_REDIS_MODE": "sentinel",
        "SEAWALL_REDIS_URL": sentinels,
        "SEAWALL_REDIS_SENTINEL_MASTER": "m1",
    }
    redis_config = build_config({}, env=env).state.redis
    assert (redis_config.mode, redis_config.sentinel_master) == ("sentinel", "m1")
    assert sentinel_addresses(redis_config.url) == [("10.0.0.1", 26379), ("10.0.0.2", 26379)]
