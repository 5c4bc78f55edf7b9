"""A fleet polling market data through Seawall against the simulator, which enforces the exchange's
per-IP public budget (10 per second): every bot is answered with data and the exchange sees its budget at
most — the bar of the market-data issue, scaled down (benchmarks/market_data.py runs it in full)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import ccxt.async_support as ccxt
import orjson
import pytest
from fixtures_proxy import StartSeawall
from fixtures_simulator import SimFactory

QUIET = {"logging": {"level": "warning", "request_level": "off"}}


@dataclass
class Polled:
    requests: int = 0
    with_data: int = 0  # 200 with the exchange's success payload
    marks: dict[str, int] = field(default_factory=dict)  # X-Seawall -> answers


async def poll(url: str, bots: int, seconds: float) -> Polled:
    """`bots` clients, each on its own keep-alive connection, asking again as soon as an answer comes."""
    polled = Polled()
    stop_at = time.monotonic() + seconds

    async def bot() -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while time.monotonic() < stop_at:
                async with session.get(url) as answer:
                    body = await answer.read()
                    mark = answer.headers.get("X-Seawall", "")
                polled.requests += 1
                polled.marks[mark] = polled.marks.get(mark, 0) + 1
                if answer.status == 200 and orjson.loads(body).get("success") is True:
                    polled.with_data += 1

    await asyncio.gather(*(bot() for _ in range(bots)))
    return polled


@pytest.mark.parametrize("profile", ["orderly", "woox"])
async def test_a_fleet_polling_public_info_gets_data_and_the_exchange_sees_its_budget(
    profile: str, sim_factory: SimFactory, start_seawall: StartSeawall
) -> None:
    sim = await sim_factory(profile)
    seawall = await start_seawall(profile, sim.base_url, **QUIET)  # the shipped profile's cache rules
    polled = await poll(seawall.proxy_url + "/v1/public/info", bots=20, seconds=2.0)

    assert polled.with_data >= 0.99 * polled.requests, polled
    snapshot = sim.snapshot()
    assert snapshot["answers_by_code"].get("-1003", 0) == 0
    assert snapshot["max_in_window"]["public"] <= 10
    assert snapshot["requests_by_path"]["/v1/public/info"] <= 2  # kept 30 s: one call, maybe a twin's
    assert polled.marks.get("cache", 0) >= 0.9 * polled.requests


async def test_a_fleet_polling_a_book_is_coalesced_into_the_budget(
    sim_factory: SimFactory, start_seawall: StartSeawall
) -> None:
    """Books are not kept by default: twins in flight share one call, so ten calls a second serve all."""
    sim = await sim_factory("woox")
    seawall = await start_seawall("woox", sim.base_url, **QUIET)
    polled = await poll(seawall.proxy_url + "/v3/public/orderbook?symbol=SPOT_BTC_USDT", bots=20, seconds=1.5)

    snapshot = sim.snapshot()
    calls = snapshot["requests_by_path"]["/v3/public/orderbook"]
    assert snapshot["answers_by_code"].get("-1003", 0) == 0
    assert snapshot["max_in_window"]["public"] <= 10
    assert calls <= polled.requests / 5, (calls, polled)
    assert polled.marks.get("coalesced", 0) >= polled.requests - calls
    assert "cache" not in polled.marks
    assert polled.with_data >= 0.9 * polled.requests, polled


async def test_ccxt_clients_share_markets_and_with_the_profiles_consent_a_signed_book(
    sim_factory: SimFactory, start_seawall: StartSeawall
) -> None:
    sim = await sim_factory("orderly")
    seawall = await start_seawall(
        "orderly",
        sim.base_url,
        cache={
            "rules": [
                {"routes": ["public.info", "public.token"], "ttl": "30s"},
                {"routes": ["market.orderbook"], "ttl": "1s", "shared": True},
            ]
        },
        **QUIET,
    )
    assert sim.demo_credentials is not None
    config: dict[str, Any] = sim.demo_credentials.ccxt_config(seawall.proxy_url)
    clients = [ccxt.woofipro(config), ccxt.woofipro(config)]
    try:
        markets = [await client.load_markets() for client in clients]
        assert markets[0].keys() == markets[1].keys() and "ETH/USDC:USDC" in markets[0]
        books = [await client.fetch_order_book("ETH/USDC:USDC") for client in clients]
    finally:
        for client in clients:
            await client.close()
    assert books[0]["bids"] and books[0]["bids"] == books[1]["bids"]
    seen = sim.snapshot()["requests_by_path"]
    assert seen["/v1/public/info"] == 1
    assert seen["/v1/orderbook/PERP_ETH_USDC"] == 1  # signed by each client, one call for both
