"""Shared state on a real three-master Redis Cluster (`state.redis.mode: cluster`), each master with a
replica: every decision stays one atomic script (its keys share a slot through a hash tag), scopes spread
over the masters, three replicas of Seawall keep one budget and place each order once, in both profiles;
and when a master dies under load, its replica takes over and Seawall loses no answer, places no order
twice, earns no -1003 from the exchange, and rejoins on its own.

One cluster per module (`redis_cluster`: whole and empty for each test), started by the fixture with
`redis-server --cluster-enabled yes` and `redis-cli --cluster create`, on loopback TCP ports.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import pytest
import redis.asyncio as redis
from fixtures_proxy import StartSeawall, wait_until
from fixtures_redis import PASSWORD, LocalCluster
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
from proxy.config import RedisConfig
from proxy.config_loader import ConfigError, build_config
from proxy.metrics import Metrics
from proxy.state.ratelimit import Claim
from proxy.state.ratelimit_redis import RedisRateLimitState
from proxy.state.redis_link import RedisLink


def on_cluster(cluster: LocalCluster, **settings: Any) -> dict[str, Any]:
    return redis_state(cluster.url, "cluster", **settings)


async def keys_by_master(cluster: LocalCluster, pattern: str) -> dict[int, list[bytes]]:
    """The keys matching `pattern` on each master (by its port)."""
    found: dict[int, list[bytes]] = {}
    for master in cluster.masters():
        client = redis.Redis(host="127.0.0.1", port=master.port, password=PASSWORD)
        try:
            found[master.port] = [key async for key in client.scan_iter(match=pattern)]
        finally:
            await client.aclose()
    return found


def healthy(replicas: list[Seawall]) -> bool:
    return all(replica.shared is not None and replica.shared.healthy for replica in replicas)


async def test_each_decision_is_one_script_on_one_slot_and_scopes_spread_over_the_masters(
    redis_cluster: LocalCluster,
) -> None:
    link = RedisLink(RedisConfig(url=redis_cluster.url, mode="cluster", retry_interval=0.1), Metrics())
    await link.start()
    state = RedisRateLimitState(link, in_flight_expiry=1.0)
    try:
        for account in range(30):
            # One request under two rules: per account, and per account and symbol (WOO X's placement).
            claims = (
                Claim("order.place", f"acct-{account}|SPOT_BTC_USDT", "a", 1, 30.0, 1),
                Claim("desk", f"acct-{account}", "a", 5, 30.0, 1),
            )
            assert (await state.acquire(claims, (0, 0), time.monotonic())).admitted
            again = await state.acquire(claims, (0, 0), time.monotonic())
            assert not again.admitted and again.waits[0] > 1.0  # the first slot is held: shared, in Redis
        assert link.call_errors == 0  # no CROSSSLOT: each decision's keys share one slot
        assert state.describe()["local_decisions"] == 0 and link.up
        spread = await keys_by_master(redis_cluster, "seawall:rl:*")
        assert len([keys for keys in spread.values() if keys]) == 3, "scopes spread over every master"
        for keys in spread.values():  # the two rules of one account sit on one master, under one tag
            tags = {key.split(b"}")[0] for key in keys}
            assert len(keys) >= 2 * len(tags)
    finally:
        await state.close()
        await link.close()


@pytest.mark.parametrize("profile", ["orderly", "woox"])
async def test_three_replicas_on_a_cluster_keep_one_budget_and_place_each_order_once(
    profile: str,
    redis_cluster: LocalCluster,
    sim_factory: SimFactory,
    sim_http: aiohttp.ClientSession,
    start_seawall: StartSeawall,
) -> None:
    sim = await sim_factory(profile)
    sim.add_fault({"kind": "latency", "delay": 0.3, "paths": ["/v1/order"], "count": 1})
    replicas = await fleet(start_seawall, profile, sim.base_url, 3, **on_cluster(redis_cluster))
    clients = bots(sim_http, sim, replicas)
    # Twenty twins spread over the three replicas while the first is slow: one order, one answer.
    twin = new_client_order_id()
    answers = await asyncio.gather(*(place_market(clients[i % 3], profile, twin) for i in range(20)))
    assert {answer.status for answer in answers} == {200} and len({a.body for a in answers}) == 1
    assert sum(1 for a in answers if a.headers.get("X-Seawall") == "dedup-replay") == 19
    # Thirty placements at once through the three replicas: the exchange sees at most its 10 per second.
    burst = await asyncio.gather(
        *(place_market(clients[i % 3], profile, new_client_order_id()) for i in range(30))
    )
    assert sum(1 for answer in burst if answer.status == 200) >= 10
    snapshot = sim.snapshot()
    assert -1003 not in snapshot["answers_by_code"]
    assert snapshot["max_attempted_in_window"][ORDER_LIMIT[profile]] <= 10
    assert max(orders_per_client_order_id(sim).values()) == 1
    for replica in replicas:
        assert replica.shared is not None and replica.shared.call_errors == 0
        assert replica.status()["ratelimit"]["state"]["local_decisions"] == 0
        assert replica.status()["dedup"]["local_fallbacks"] == 0
        assert replica.status()["state"]["replicas"] == 3  # counted from the heartbeats
    assert sum(len(keys) for keys in (await keys_by_master(redis_cluster, "seawall:dedup:*")).values()) > 1


async def test_a_circuit_opened_by_one_replica_answers_locally_on_the_others(
    redis_cluster: LocalCluster,
    sim_factory: SimFactory,
    sim_http: aiohttp.ClientSession,
    start_seawall: StartSeawall,
) -> None:
    sim = await sim_factory("orderly", limits={"orders_get": 100_000})
    rule = {"name": "trading", "routes": ["orders.list"], "failure_threshold": 3, "reset_timeout": 30}
    overrides = {"ratelimit": {"enabled": False}, "breakers": {"rules": [rule]}}
    replicas = await fleet(
        start_seawall, "orderly", sim.base_url, 2, **overrides, **on_cluster(redis_cluster)
    )
    sim.add_fault({"kind": "error", "code": -1012, "routes": ["orders.list"]})
    a, b = bots(sim_http, sim, replicas)
    for _ in range(3):
        assert (await a.orderly("GET", "/v1/orders")).headers.get("X-Seawall") is None
    for _ in range(5):
        answer = await b.orderly("GET", "/v1/orders")
        assert (answer.code, answer.headers["X-Seawall"]) == (-1012, "circuit-open")
    assert sim.counters.requests_by_route["orders.list"] == 3  # replica b never sent one
    assert all(replica.shared is not None and replica.shared.call_errors == 0 for replica in replicas)
    assert await keys_by_master(redis_cluster, "seawall:breaker:{trading:*}")


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["orderly", "woox"])
async def test_a_master_failover_under_load_loses_no_answer_places_no_order_twice_and_rejoins(
    profile: str,
    redis_cluster: LocalCluster,
    sim_factory: SimFactory,
    sim_http: aiohttp.ClientSession,
    start_seawall: StartSeawall,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sim = await sim_factory(profile)
    replicas = await fleet(start_seawall, profile, sim.base_url, 3, **on_cluster(redis_cluster))
    clients = bots(sim_http, sim, replicas)
    killed: list[int] = []

    async def fail_over_the_busiest_master() -> None:
        await asyncio.sleep(1.0)  # load runs on the whole cluster first
        spread = await keys_by_master(redis_cluster, "seawall:rl:*")
        port = next(port for port, keys in spread.items() if keys)  # the budget's master
        node = next(node for node in redis_cluster.nodes if node.port == port)
        await asyncio.to_thread(node.kill)
        killed.append(port)
        await wait_until(lambda: not healthy(replicas), timeout=5)
        await wait_until(lambda: healthy(replicas), timeout=20)  # its replica took over; Seawall rejoined
        await asyncio.sleep(1.0)  # and load runs on the new master

    with caplog.at_level(logging.INFO, logger="seawall"):
        load = await placements(clients, profile, bots_count=12, meanwhile=fail_over_the_busiest_master)
    shown = " ".join(str(record.__dict__) for record in caplog.records) + str(replicas[0].status())
    assert PASSWORD not in shown and ":***@" in shown  # the URL is logged, its password never
    assert killed and load.lost == []  # every request got an answer
    assert not [cid for cid, end in load.settled.items() if end.startswith("gave up")], load.settled
    orders = orders_per_client_order_id(sim)
    assert max(orders.values()) == 1, "an order placed twice"
    assert all(orders[cid] == 1 for cid, end in load.settled.items() if end in ("placed", "replayed"))
    snapshot = sim.snapshot()
    assert -1003 not in snapshot["answers_by_code"], load.by_second
    assert snapshot["max_attempted_in_window"][ORDER_LIMIT[profile]] <= 10
    assert load.answers["placed"] >= 10 and load.answers["state-unavailable"] >= 1  # the outage was felt
    for replica in replicas:
        state = replica.status()["state"]
        assert state["phase"] == "settled" and state["rebuilds"] >= 1  # the new master is another server
        assert replica.status()["ratelimit"]["state"]["deciding"] == "shared"


def test_rules_that_share_a_route_must_start_with_one_dimension_on_a_cluster() -> None:
    desk = {"name": "desk", "routes": ["order.place"], "limit": 15, "window": 1, "scope": ["account"]}
    per_key = {"name": "order.place", "routes": ["order.place"], "limit": 10, "window": 1, "scope": ["key"]}
    on_a_cluster = {
        "state": {"backend": "redis", "redis": {"mode": "cluster", "url": "redis://10.0.0.1:6379"}}
    }
    with pytest.raises(ConfigError) as error:
        build_config({"ratelimit": {"rules": [per_key, desk]}, **on_a_cluster})
    assert "ratelimit.rules.1.scope: on a Redis Cluster" in str(error.value)
    assert "'order.place' starts with key, this rule with account" in str(error.value)
    # The same budget per key, written to start with the account: accepted; and on one server, anything.
    build_config({"ratelimit": {"rules": [{**per_key, "scope": ["account", "key"]}, desk]}, **on_a_cluster})
    build_config({"ratelimit": {"rules": [per_key, desk]}, "state": {"backend": "redis"}})
    # Both shipped profiles run on a Cluster as they are.
    for profile in ("orderly", "woox"):
        build_config({"profile": profile, **on_a_cluster})


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SEAWALL_REDIS_MODE": "cluster", "SEAWALL_REDIS_URL": "unix:///run/redis.sock"}, "not unix://"),
        (
            {"SEAWALL_REDIS_MODE": "cluster", "SEAWALL_REDIS_URL": "redis://10.0.0.1:6379/2"},
            "database 0 only",
        ),
        ({"SEAWALL_REDIS_URL": "redis://10.0.0.1:6379,10.0.0.2:6379"}, "only mode sentinel takes a list"),
        ({"SEAWALL_REDIS_MODE": "ring"}, "must be 'standalone', 'cluster' or 'sentinel'"),
    ],
)
def test_a_cluster_url_that_cannot_work_is_refused_at_start(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        build_config({}, env=env)
    assert expected in str(error.value)


def test_the_mode_comes_from_the_environment_and_a_cluster_url_names_any_node() -> None:
    env = {"SEAWALL_REDIS_MODE": "cluster", "SEAWALL_REDIS_URL": "rediss://:hunter2@10.0.0.7:6380"}
    redis_config = build_config({}, env=env).state.redis
    assert (redis_config.mode, redis_config.url) == ("cluster", "rediss://:hunter2@10.0.0.7:6380")
    assert (
        build_config({}, env={"SEAWALL_REDIS_MODE": "cluster"}).state.backend == "memory"
    )  # the URL decides
