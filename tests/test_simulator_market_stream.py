"""The simulator's public WebSocket: real ccxt.pro clients, and the protocol's edges on a raw socket.

Intervals are shortened through `StreamSettings`; every wait is a poll with a deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import ccxt.pro as ccxtpro
import orjson
import pytest
from fixtures_proxy import wait_until, wait_until_async
from fixtures_simulator import SignedClient, SimFactory, client_for

from proxy.simulator import Simulator
from proxy.simulator.stream import StreamSettings
from proxy.simulator.symbols import resting_order

FAST = StreamSettings(orderbook_interval=0.05, update_interval=0.02, ticker_interval=0.05)
CASES = {
    "orderly": ("woofipro", "ETH/USDC:USDC", "PERP_ETH_USDC", 2950.0),
    "woox": ("woo", "BTC/USDT", "SPOT_BTC_USDT", 59000.0),
}


def ws_url(sim: Simulator, stream_id: str = "app-1") -> str:
    return f"ws://127.0.0.1:{sim.port}/ws/stream/{stream_id}"


@pytest.fixture(params=sorted(CASES))
async def pro(
    request: pytest.FixtureRequest, sim_factory: SimFactory
) -> AsyncIterator[tuple[Any, Simulator]]:
    sim = await sim_factory(request.param, stream=FAST)
    assert sim.demo_credentials is not None
    client = getattr(ccxtpro, CASES[request.param][0])(sim.demo_credentials.ccxt_config(sim.base_url))
    client.urls["api"]["ws"] = {"public": f"ws://127.0.0.1:{sim.port}/ws/stream", "private": "ws://unused"}
    try:
        await client.load_markets()
        yield client, sim
    finally:
        await client.close()


async def watch_until(watch: Any, condition: Any, timeout: float = 5.0) -> Any:
    """Keep watching until a pushed value satisfies `condition`; fail at the deadline."""

    async def next_value() -> Any:
        value = await asyncio.wait_for(watch(), timeout)
        return value if condition(value) else None

    return await wait_until_async(next_value, timeout, interval=0)


async def test_ccxt_pro_watches_book_ticker_and_trades(pro: tuple[Any, Simulator]) -> None:
    client, sim = pro
    _, symbol, market_id, below = CASES[sim.profile]
    book = await asyncio.wait_for(client.watch_order_book(symbol), 5)
    assert book["bids"][0][0] < sim.book.symbols[market_id].mid < book["asks"][0][0]
    ticker = await asyncio.wait_for(client.watch_ticker(symbol), 5)
    assert ticker["close"] == float(sim.book.symbols[market_id].mid) and ticker["baseVolume"] == 0

    trades = asyncio.ensure_future(client.watch_trades(symbol))
    await wait_until(lambda: sim.snapshot()["stream"]["subscriptions_by_topic"].get(f"{market_id}@trade"))
    await client.create_order(symbol, "limit", "buy", 0.01, below)
    await client.create_order(symbol, "market", "sell", 0.02)
    (trade,) = await asyncio.wait_for(trades, 5)
    assert (trade["side"], trade["amount"], trade["symbol"]) == ("sell", 0.02, symbol)

    book = await watch_until(lambda: client.watch_order_book(symbol), lambda b: [below, 0.01] in b["bids"])
    assert book["bids"][0][0] < book["asks"][0][0]
    ticker = await watch_until(lambda: client.watch_ticker(symbol), lambda t: t["baseVolume"] == 0.02)
    assert ticker["close"] == trade["price"]
    stream = sim.snapshot()["stream"]
    assert stream["connections_open"] == stream["connections_total"] == 1
    assert set(stream["subscriptions_by_topic"]) == {
        f"{market_id}@{kind}" for kind in ("orderbook", "ticker", "trade")
    }


async def test_woo_incremental_book_follows_placements_and_cancels(sim_factory: SimFactory) -> None:
    sim = await sim_factory("woox", stream=FAST)
    assert sim.demo_credentials is not None
    client = ccxtpro.woo(sim.demo_credentials.ccxt_config(sim.base_url))
    client.urls["api"]["ws"] = {"public": f"ws://127.0.0.1:{sim.port}/ws/stream", "private": "ws://unused"}
    try:

        def watch() -> Any:
            return client.watch_order_book("BTC/USDT", params={"method": "orderbookupdate"})

        await asyncio.wait_for(watch(), 5)  # REST snapshot from /v3/public/orderbook, then deltas
        order = await client.create_order("BTC/USDT", "limit", "sell", 0.05, 61000.0)
        await watch_until(watch, lambda b: [61000.0, 0.05] in b["asks"])
        await client.cancel_order(order["id"], "BTC/USDT")
        book = await watch_until(watch, lambda b: 61000.0 not in [a[0] for a in b["asks"]])
        assert len(book["asks"]) == len(book["bids"]) == 25  # the synthetic depth, nothing stale
        assert sim.snapshot()["requests_by_route"]["market.orderbook"] == 1
    finally:
        await client.close()


async def test_raw_protocol_answers_like_the_exchange(
    orderly_sim: Simulator, orderly_client: SignedClient, sim_http: aiohttp.ClientSession
) -> None:
    async with sim_http.ws_connect(ws_url(orderly_sim)) as ws:

        async def ask(message: Any) -> dict[str, Any]:
            await (ws.send_str(message) if isinstance(message, str) else ws.send_json(message))
            reply = await asyncio.wait_for(ws.receive_json(), 5)
            assert isinstance(reply, dict)
            return reply

        ok = await ask({"id": "c1", "event": "subscribe", "topic": "PERP_ETH_USDC@trade"})
        assert ok == {"id": "c1", "event": "subscribe", "success": True, "ts": ok["ts"]}
        bad = await ask({"id": "c2", "event": "subscribe", "topic": "PERP_BTC_USDT@trade"})
        assert (bad["id"], bad["success"], bad["errorMsg"]) == ("c2", False, "invalid symbol PERP_BTC_USDT")
        assert (await ask({"id": "c3", "event": "subscribe", "topic": "PERP_ETH_USDC@candles"}))[
            "success"
        ] is False
        assert (await ask("not json"))["success"] is False
        assert (await ask({"event": "auth", "params": {}}))[
            "success"
        ] is False  # the public stream has no auth
        pong = await ask({"event": "ping"})
        assert pong["event"] == "pong" and pong["ts"] > 0

        market_buy = resting_order(None, order_type="MARKET", order_price=None)
        assert (await orderly_client.orderly("POST", "/v1/order", market_buy)).status == 200
        push = await asyncio.wait_for(ws.receive_json(), 5)
        assert push["topic"] == "PERP_ETH_USDC@trade" and push["ts"] > 0
        assert push["data"] == {"symbol": "PERP_ETH_USDC", "price": 3000.0, "size": 0.01, "side": "BUY"}

        gone = await ask({"id": "c4", "event": "unsubscribe", "topic": "PERP_ETH_USDC@trade"})
        assert (gone["success"], gone["data"]) == (True, "PERP_ETH_USDC@trade")
        assert (await orderly_client.orderly("POST", "/v1/order", market_buy)).status == 200
        assert (await ask({"event": "ping"}))["event"] == "pong"  # no trade push came in between
        stream = orderly_sim.snapshot()["stream"]
        assert stream["subscriptions_open"] == 0 and stream["unsubscribes"] == {"PERP_ETH_USDC@trade": 1}
        assert stream["subscribes"] == {"PERP_ETH_USDC@trade": 1}  # refused ones are not subscriptions


async def test_server_pings_and_drops_a_client_that_never_pongs(
    sim_factory: SimFactory, sim_http: aiohttp.ClientSession
) -> None:
    sim = await sim_factory("woox", stream=StreamSettings(ping_interval=0.02, max_missed_pongs=3))
    answered = 0

    async def answer_pings(ws: aiohttp.ClientWebSocketResponse) -> None:
        nonlocal answered
        async for message in ws:
            assert orjson.loads(message.data)["event"] == "ping"
            await ws.send_json({"event": "pong"})
            answered += 1

    async with (
        sim_http.ws_connect(ws_url(sim, "answers")) as polite,
        sim_http.ws_connect(ws_url(sim, "mute")) as mute,
    ):
        answering = asyncio.ensure_future(answer_pings(polite))
        pings = 0
        while (message := await asyncio.wait_for(mute.receive(), 5)).type == aiohttp.WSMsgType.TEXT:
            assert orjson.loads(message.data)["event"] == "ping"
            pings += 1
        assert message.type == aiohttp.WSMsgType.CLOSE and pings == 3
        await wait_until(lambda: answered >= 6)  # twice the allowance: answering keeps a connection
        assert sim.snapshot()["stream"]["connections_by_id"] == {"answers": 1}
        answering.cancel()
    await wait_until(lambda: sim.snapshot()["stream"]["connections_open"] == 0)
    assert sim.snapshot()["stream"]["closed"] == {"missed_pongs": 1, "client": 1}


async def test_connections_are_capped_per_id_and_closed_when_the_simulator_stops(
    sim_factory: SimFactory, sim_http: aiohttp.ClientSession
) -> None:
    sim = await sim_factory("orderly", stream=StreamSettings(max_connections_per_id=2))
    assert (
        sim.info()["stream"]["path"] == "/ws/stream/{id}"
        and sim.info()["stream"]["max_connections_per_id"] == 2
    )
    first = await sim_http.ws_connect(ws_url(sim, "acct"))
    second = await sim_http.ws_connect(ws_url(sim, "acct"))
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await sim_http.ws_connect(ws_url(sim, "acct"))
    assert refused.value.status == 429
    other = await sim_http.ws_connect(ws_url(sim, "another"))  # the cap is per id
    stream = sim.snapshot()["stream"]
    assert stream["connections_by_id"] == {"acct": 2, "another": 1} and stream["connections_refused"] == 1
    await sim.stop()
    for ws in (first, second, other):
        assert (await asyncio.wait_for(ws.receive(), 5)).type == aiohttp.WSMsgType.CLOSE
        await ws.close()


async def test_a_reader_that_falls_behind_is_closed(
    sim_factory: SimFactory, sim_http: aiohttp.ClientSession
) -> None:
    sim = await sim_factory("orderly", stream=StreamSettings(queue_limit=3))
    client = client_for(sim_http, sim)
    async with sim_http.ws_connect(ws_url(sim)) as ws:
        await ws.send_json({"id": 1, "event": "subscribe", "topic": "PERP_ETH_USDC@trade"})
        assert (await asyncio.wait_for(ws.receive_json(), 5))["success"] is True
        orders = [resting_order(None, order_type="MARKET", order_price=None) for _ in range(10)]
        assert (await client.orderly("POST", "/v1/batch-order", {"orders": orders})).status == 200
        seen = []  # ten trades at once overflow the three-message queue
        while (message := await asyncio.wait_for(ws.receive(), 5)).type == aiohttp.WSMsgType.TEXT:
            seen.append(orjson.loads(message.data))
        assert message.type == aiohttp.WSMsgType.CLOSE and len(seen) <= 3
    await wait_until(lambda: sim.snapshot()["stream"]["closed"] == {"slow_reader": 1})
    assert len(sim.book.tape.latest("PERP_ETH_USDC", 100)) == 10  # the fills themselves stand
