"""Real ccxt clients read market data from the simulator: order book, tickers, trades, klines.

ccxt `woofipro` against the orderly profile, ccxt `woo` against the woox profile, straight at the
simulator (no proxy). Every assertion is about what a bot sees through ccxt's own parsing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import ccxt.async_support as ccxt
import pytest
from fixtures_simulator import SimFactory

from proxy.simulator import Simulator


@dataclass(frozen=True)
class Case:
    client: str
    symbol: str  # a market both profiles can rest, fill and show a book for
    perp: str  # tickers are futures-only on both exchanges
    mid: float
    below: float  # a resting BUY price well under the synthetic depth
    above: float  # a resting SELL price well over it
    moved: float  # a new mid, 1 % up


CASES = {
    "orderly": Case("woofipro", "ETH/USDC:USDC", "ETH/USDC:USDC", 3000.0, 2950.0, 3050.0, 3030.0),
    "woox": Case("woo", "BTC/USDT", "BTC/USDT:USDT", 60000.0, 59000.0, 61000.0, 60600.0),
}


@pytest.fixture(params=sorted(CASES))
async def exchange(
    request: pytest.FixtureRequest, sim_factory: SimFactory
) -> AsyncIterator[tuple[Any, Simulator, Case]]:
    # ccxt's own throttle is off to keep the test short; the per-IP public budget is raised to match.
    sim = await sim_factory(request.param, limits={"public": 100})
    assert sim.demo_credentials is not None
    case = CASES[request.param]
    client = getattr(ccxt, case.client)(
        {**sim.demo_credentials.ccxt_config(sim.base_url), "enableRateLimit": False}
    )
    try:
        await client.load_markets()
        yield client, sim, case
    finally:
        await client.close()


async def test_order_book_has_bids_below_asks_and_shows_resting_orders(
    exchange: tuple[Any, Simulator, Case],
) -> None:
    client, sim, case = exchange
    book = await client.fetch_order_book(case.symbol)
    bids, asks = book["bids"], book["asks"]
    assert bids and asks and book["timestamp"] > 0
    assert [level[0] for level in bids] == sorted((level[0] for level in bids), reverse=True)
    assert [level[0] for level in asks] == sorted(level[0] for level in asks)
    assert bids[0][0] < case.mid < asks[0][0]
    assert all(level[1] > 0 for level in bids + asks)
    assert case.below not in [level[0] for level in bids]

    buy = await client.create_order(case.symbol, "limit", "buy", 0.01, case.below)
    await client.create_order(case.symbol, "limit", "buy", 0.02, case.below)
    await client.create_order(case.symbol, "limit", "sell", 0.01, case.above)
    book = await client.fetch_order_book(case.symbol)
    assert [case.below, 0.03] in book["bids"]  # two orders at one price: one level, summed
    assert [case.above, 0.01] in book["asks"]
    assert book["bids"][0][0] < case.mid < book["asks"][0][0]

    await client.cancel_order(buy["id"], case.symbol)
    book = await client.fetch_order_book(case.symbol)
    assert [case.below, 0.02] in book["bids"]

    top = await client.fetch_order_book(case.symbol, 5)
    assert len(top["bids"]) == len(top["asks"]) == 5
    assert top["bids"] == book["bids"][:5] and top["asks"] == book["asks"][:5]
    assert sim.snapshot()["requests_by_route"]["market.orderbook"] == 4


async def test_trades_appear_after_fills_with_the_takers_side(exchange: tuple[Any, Simulator, Case]) -> None:
    client, sim, case = exchange
    assert await client.fetch_trades(case.symbol) == []

    await client.create_order(case.symbol, "market", "buy", 0.01)
    (taken,) = await client.fetch_trades(case.symbol)
    assert (taken["side"], taken["price"], taken["amount"], taken["symbol"]) == (
        "buy",
        case.mid,
        0.01,
        case.symbol,
    )
    assert taken["timestamp"] > 0

    resting = await client.create_order(case.symbol, "limit", "buy", 0.02, case.below)
    sim.fill_order(order_id=int(resting["id"]))  # someone sold into our bid: the taker sold
    trades = await client.fetch_trades(case.symbol)
    # ccxt lists trades oldest first; two fills within one tick of the exchange's clock (WOO X v1 stamps
    # trades to the millisecond, as seconds) may come in either order, so the order is checked by time.
    assert sorted((t["side"], t["price"], t["amount"]) for t in trades) == [
        ("buy", case.mid, 0.01),
        ("sell", case.below, 0.02),
    ]
    assert trades[0]["timestamp"] <= trades[1]["timestamp"]
    assert len(await client.fetch_trades(case.symbol, limit=1)) == 1
    assert sim.snapshot()["requests_by_route"]["market.trades"] == 4


async def test_ticker_follows_mid_and_trades(exchange: tuple[Any, Simulator, Case]) -> None:
    client, sim, case = exchange
    quiet = await client.fetch_ticker(case.perp)
    assert quiet["markPrice"] == quiet["indexPrice"] == quiet["last"] == case.mid
    assert quiet["baseVolume"] == 0 and quiet["timestamp"] > 0

    market_id = client.market(case.perp)["id"]
    sim.set_mid(market_id, case.moved)
    await client.create_order(case.perp, "market", "buy", 0.01)
    ticker = await client.fetch_ticker(case.perp)
    assert ticker["markPrice"] == ticker["last"] == ticker["high"] == ticker["low"] == case.moved
    assert ticker["baseVolume"] == 0.01
    assert ticker["quoteVolume"] == pytest.approx(0.01 * case.moved)
    assert float(ticker["info"].get("open_interest", ticker["info"].get("openInterest"))) == 0.01

    tickers = await client.fetch_tickers()
    perps = [m["symbol"] for m in client.markets.values() if m["swap"]]
    assert sorted(tickers) == sorted(perps) and tickers[case.perp]["last"] == ticker["last"]


async def test_ohlcv_candles_are_consecutive_and_carry_the_fills(
    exchange: tuple[Any, Simulator, Case],
) -> None:
    client, sim, case = exchange
    await client.create_order(case.symbol, "market", "buy", 0.01)
    (trade,) = await client.fetch_trades(case.symbol)
    flat = [case.mid] * 4
    for timeframe, length in (("1m", 60_000), ("1h", 3_600_000)):
        candles = await client.fetch_ohlcv(case.symbol, timeframe, limit=3)
        starts = [candle[0] for candle in candles]
        assert starts == [starts[0], starts[0] + length, starts[0] + 2 * length] and starts[0] % length == 0
        # The clock may turn a minute between the fill and the fetch: find the trade's candle.
        volumes = [
            candle[5] if candle[0] <= trade["timestamp"] < candle[0] + length else 0.0 for candle in candles
        ]
        assert [candle[1:5] for candle in candles] == [flat] * 3
        assert [candle[5] for candle in candles] == volumes and sum(volumes) == 0.01
    assert sim.snapshot()["requests_by_route"]["market.kline"] == 2
