"""Real clients work against the simulator with only the base URL changed (docs/exchanges.md).

ccxt `woofipro` against the orderly profile and ccxt `woo` against the woox profile, both through
ccxt's async (aiohttp) transport, not in sandbox mode — so ccxt's `order_tag` / `broker_id` injection is
exercised too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import ccxt.async_support as ccxt
import pytest
from fixtures_simulator import SimFactory

from proxy.simulator import Simulator

CASES = {
    "orderly": ("woofipro", "ETH/USDC:USDC", 2900, "cid-1", {"USDC": 100000}),
    "woox": ("woo", "BTC/USDT", 59000, "4242", {"USDT": 100000, "BTC": 2}),
}


@pytest.fixture(params=sorted(CASES))
async def exchange(
    request: pytest.FixtureRequest, sim_factory: SimFactory
) -> AsyncIterator[tuple[Any, Simulator]]:
    sim = await sim_factory(request.param)
    assert sim.demo_credentials is not None
    cls = getattr(ccxt, CASES[request.param][0])
    client = cls(sim.demo_credentials.ccxt_config(sim.base_url))
    try:
        yield client, sim
    finally:
        await client.close()


async def test_full_order_flow(exchange: tuple[Any, Simulator]) -> None:
    client, sim = exchange
    _, symbol, price, cid, funded = CASES[sim.profile]
    markets = await client.load_markets()
    assert symbol in markets
    assert markets[symbol]["limits"]["amount"]["min"] > 0 and markets[symbol]["precision"]["price"] > 0

    balance = await client.fetch_balance()
    for token, amount in funded.items():
        assert balance["total"][token] == amount

    created = await client.create_order(symbol, "limit", "buy", 0.01, price, {"clientOrderId": cid})
    assert created["id"] and created["clientOrderId"] == cid

    fetched = await client.fetch_order(created["id"], symbol)
    assert (fetched["status"], fetched["clientOrderId"], fetched["price"], fetched["amount"]) == (
        "open",
        cid,
        price,
        0.01,
    )
    by_client_id = await client.fetch_order("", symbol, {"clientOrderId": cid})
    assert by_client_id["id"] == created["id"]

    open_orders = await client.fetch_open_orders(symbol)
    assert [o["id"] for o in open_orders] == [created["id"]]

    with pytest.raises(ccxt.BadRequest):  # -1007: the id is taken by an open order
        await client.create_order(symbol, "limit", "buy", 0.01, price, {"clientOrderId": cid})

    cancelled = await client.cancel_order(created["id"], symbol)
    assert cancelled["status"] == "canceled"
    assert await client.fetch_open_orders(symbol) == []
    with pytest.raises((ccxt.BadRequest, ccxt.InvalidOrder)):  # -1006: already cancelled
        await client.cancel_order(created["id"], symbol)

    again = await client.create_order(symbol, "limit", "buy", 0.01, price, {"clientOrderId": cid})
    assert again["id"] != created["id"]  # reusable once the first completed
    snapshot = sim.snapshot()
    assert snapshot["orders_accepted"][0]["count"] == 2
    assert snapshot["answers_by_code"].get("-1001", 0) == snapshot["answers_by_code"].get("-1002", 0) == 0


async def test_ccxt_maps_injected_errors(exchange: tuple[Any, Simulator]) -> None:
    client, sim = exchange
    _, symbol, price, _, _ = CASES[sim.profile]
    await client.load_markets()
    sim.add_fault({"kind": "error", "code": -1003, "routes": ["order.place"], "count": 1})
    with pytest.raises(ccxt.RateLimitExceeded):
        await client.create_order(symbol, "limit", "buy", 0.01, price)
    sim.add_fault({"kind": "error", "code": -1002, "routes": ["account.*"], "count": 1})
    with pytest.raises(ccxt.AuthenticationError):
        await client.fetch_balance()
