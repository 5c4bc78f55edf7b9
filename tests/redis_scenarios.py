"""Scenarios that run the same on every way of running Redis (one server, a Cluster, Sentinel): replicas
of Seawall on shared state, bots that place orders the way a careful bot does, and what the exchange saw.

A bot here places MARKET orders (they fill at once, so a second order for one client order id would be
a real second order, not the exchange's -1007) with a fresh client order id each, and retries the same
one, through another replica, after any transient answer — as a bot that never wants an order twice does.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from fixtures_proxy import StartSeawall
from fixtures_simulator import Answer, SignedClient

from proxy.app import Seawall
from proxy.simulator.server import Simulator

# The simulator's name for each profile's placement budget (strict sliding window, 10 per 1 s).
ORDER_LIMIT = {"orderly": "order_create", "woox": "v1_order_create"}
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
_numbers = itertools.count(1)


def redis_state(url: str, mode: str = "standalone", **settings: Any) -> dict[str, Any]:
    """Config overrides: shared state on Redis at `url`, reacting fast (tests)."""
    redis = {"url": url, "timeout": 0.25, "retry_interval": 0.1, **settings}
    if mode != "standalone":
        redis["mode"] = mode
    return {"state": {"backend": "redis", "redis": redis}}


async def fleet(
    start_seawall: StartSeawall, profile: str, upstream_url: str, count: int, **overrides: Any
) -> list[Seawall]:
    return [await start_seawall(profile, upstream_url, **overrides) for _ in range(count)]


def bots(session: aiohttp.ClientSession, sim: Simulator, replicas: list[Seawall]) -> list[SignedClient]:
    assert sim.demo_credentials is not None
    return [SignedClient(session, replica.proxy_url, sim.demo_credentials) for replica in replicas]


def new_client_order_id() -> str:
    return str(next(_numbers))  # digits: WOO X v1 takes integers


async def place_market(bot: SignedClient, profile: str, client_order_id: str) -> Answer:
    if profile == "orderly":
        order = {"symbol": "PERP_ETH_USDC", "order_type": "MARKET", "order_quantity": 0.01, "side": "BUY"}
        return await bot.orderly("POST", "/v1/order", {**order, "client_order_id": client_order_id})
    order = {"symbol": "SPOT_BTC_USDT", "order_type": "MARKET", "order_quantity": "0.01", "side": "BUY"}
    return await bot.v1("POST", "/v1/order", {**order, "client_order_id": int(client_order_id)})


def kind(answer: Answer) -> str:
    """Who answered: `placed`, `replayed`, the Seawall policy (X-Seawall), or `exchange <code>`."""
    if answer.status == 200:
        return "replayed" if answer.headers.get("X-Seawall") == "dedup-replay" else "placed"
    return answer.headers.get("X-Seawall") or f"exchange {answer.code}"


@dataclass
class Load:
    answers: Counter[str] = field(default_factory=Counter)
    settled: dict[str, str] = field(default_factory=dict)  # client order id -> how it ended
    lost: list[str] = field(default_factory=list)  # requests that got no answer at all
    by_second: dict[int, Counter[str]] = field(default_factory=dict)  # second of the run -> kinds


async def placements(
    clients: list[SignedClient],
    profile: str,
    *,
    bots_count: int,
    meanwhile: Callable[[], Awaitable[None]],
    settle_within: float = 20.0,
) -> Load:
    """Bots place (and retry) until `meanwhile` returns; then each settles the order it is on."""
    load = Load()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def bot(number: int) -> None:
        while not stop.is_set():
            cid = new_client_order_id()
            deadline = None
            for attempt in itertools.count():
                client = clients[(number + attempt) % len(clients)]  # a retry lands on another replica
                try:
                    answer = await place_market(client, profile, cid)
                except (aiohttp.ClientError, TimeoutError) as error:
                    load.lost.append(f"{cid}: {type(error).__name__}")
                    return
                seen = kind(answer)
                load.answers[seen] += 1
                load.by_second.setdefault(int(loop.time() - started), Counter())[seen] += 1
                if answer.status not in TRANSIENT_STATUSES:
                    load.settled[cid] = seen
                    break
                if stop.is_set():
                    deadline = deadline or loop.time() + settle_within
                    if loop.time() > deadline:
                        load.settled[cid] = "gave up: " + seen
                        break
                await asyncio.sleep(0.05)  # the bot's own back-off before its retry

    tasks = [asyncio.create_task(bot(number)) for number in range(bots_count)]
    try:
        await meanwhile()
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    return load


def orders_per_client_order_id(sim: Simulator) -> Counter[str]:
    return Counter(str(order.client_order_id) for order in sim.orders() if order.client_order_id)
