"""Streams through Seawall to the simulator: real ccxt.pro `woo` and `woofipro` clients with every URL
pointed at Seawall, and the public fan-out seen from both ends (the bots' frames, the simulator's
stream counters).

Every wait is a poll or a receive with a deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import ccxt.pro as ccxtpro
import orjson
import pytest
from fixtures_proxy import StartSeawall, wait_until, wait_until_async
from fixtures_simulator import SimFactory

from proxy.app import Seawall
from proxy.simulator import Simulator
from proxy.simulator.accounts import Account, Credentials, generate_account
from proxy.simulator.stream import StreamSettings

FAST = StreamSettings(orderbook_interval=0.05, update_interval=0.02, ticker_interval=0.05)
# profile -> (ccxt.pro class, symbol, market id, a resting BUY price, a perp for orders)
CASES = {
    "orderly": ("woofipro", "ETH/USDC:USDC", "PERP_ETH_USDC", 2950.0),
    "woox": ("woo", "BTC/USDT", "SPOT_BTC_USDT", 59000.0),
}
BOOK = "PERP_ETH_USDC@orderbook"


def ccxt_account(profile: str) -> tuple[Account, Credentials]:
    """A generated account ccxt can sign with: ccxt's base58 decoding drops a leading zero byte of an
    Orderly secret (one generated seed in 256), which then fails as a malformed key inside ccxt."""
    while True:
        account, credentials = generate_account(profile)
        if profile != "orderly" or not credentials.secret.removeprefix("ed25519:").startswith("1"):
            return account, credentials


def ws_url(seawall: Seawall, path: str) -> str:
    return "ws" + seawall.proxy_url.removeprefix("http") + path


def sample(seawall: Seawall, name: str, **labels: str) -> float:
    return seawall.metrics.registry.get_sample_value(name, labels) or 0.0


def stream(sim: Simulator) -> dict[str, Any]:
    counters: dict[str, Any] = sim.snapshot()["stream"]
    return counters


async def receive(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> dict[str, Any]:
    message = await asyncio.wait_for(ws.receive(), timeout)
    assert message.type == aiohttp.WSMsgType.TEXT, message
    value: dict[str, Any] = orjson.loads(message.data)
    return value


async def receive_until(ws: aiohttp.ClientWebSocketResponse, condition: Any) -> dict[str, Any]:
    """The first message that satisfies `condition` (pings and other pushes skipped), within 5 s."""

    async def next_match() -> dict[str, Any] | None:
        message = await receive(ws)
        return message if condition(message) else None

    return await wait_until_async(next_match, 5.0, interval=0)  # type: ignore[no-any-return]


@pytest.fixture(params=sorted(CASES))
async def pro(
    request: pytest.FixtureRequest, sim_factory: SimFactory, start_seawall: StartSeawall
) -> AsyncIterator[tuple[Any, Simulator, Seawall]]:
    account, credentials = ccxt_account(request.param)
    sim = await sim_factory(request.param, accounts=[account], stream=FAST)
    seawall = await start_seawall(request.param, sim.base_url)
    # REST and both streams at Seawall: the config a bot uses, with Seawall's URL for the exchange's.
    config = credentials.ccxt_config(seawall.proxy_url)
    assert config["urls"]["api"]["ws"]["public"] == ws_url(seawall, "/ws/stream")
    client = getattr(ccxtpro, CASES[request.param][0])(config)
    try:
        await client.load_markets()
        yield client, sim, seawall
    finally:
        await client.close()


async def test_ccxt_pro_watches_book_ticker_and_trades_through_seawall(
    pro: tuple[Any, Simulator, Seawall],
) -> None:
    client, sim, seawall = pro
    _, symbol, market_id, below = CASES[sim.profile]
    book = await asyncio.wait_for(client.watch_order_book(symbol), 5)
    assert book["bids"][0][0] < sim.book.symbols[market_id].mid < book["asks"][0][0]
    ticker = await asyncio.wait_for(client.watch_ticker(symbol), 5)
    assert ticker["close"] == float(sim.book.symbols[market_id].mid)

    trades = asyncio.ensure_future(client.watch_trades(symbol))
    await wait_until(lambda: stream(sim)["subscriptions_by_topic"].get(f"{market_id}@trade"))
    await client.create_order(symbol, "limit", "buy", 0.01, below)  # over REST, through Seawall
    await client.create_order(symbol, "market", "sell", 0.02)
    (trade,) = await asyncio.wait_for(trades, 5)
    assert (trade["side"], trade["amount"], trade["symbol"]) == ("sell", 0.02, symbol)

    async def book_with_order() -> Any:
        book = await asyncio.wait_for(client.watch_order_book(symbol), 5)
        return [below, 0.01] in book["bids"]

    await wait_until_async(book_with_order, 5.0, interval=0)
    # Seawall held the three topics on one upstream connection; the bot's connection was Seawall's.
    counters = stream(sim)
    assert counters["connections_total"] == counters["connections_open"] == 1
    assert counters["subscribes"] == {f"{market_id}@{kind}": 1 for kind in ("orderbook", "ticker", "trade")}
    assert sample(seawall, "seawall_ws_connections", side="bot", kind="public") == 1
    assert sample(seawall, "seawall_ws_subscriptions", kind="orderbook") == 1
    assert sample(seawall, "seawall_ws_upstream_connects_total", result="ok") == 1


async def test_ten_bots_on_one_book_cost_the_exchange_one_connection_and_one_subscription(
    sim_factory: SimFactory, start_seawall: StartSeawall, sim_http: aiohttp.ClientSession
) -> None:
    sim = await sim_factory("orderly", stream=FAST)
    seawall = await start_seawall("orderly", sim.base_url)
    bots = [await sim_http.ws_connect(ws_url(seawall, f"/ws/stream/acct-{n}")) for n in range(10)]
    for n, ws in enumerate(bots):
        await ws.send_json({"id": n, "event": "subscribe", "topic": BOOK})
    for n, ws in enumerate(bots):  # each its own answer, in the exchange's words, then the book at once
        answer = await receive(ws)
        assert (answer["id"], answer["event"], answer["success"]) == (n, "subscribe", True)
        assert (await receive(ws))["topic"] == BOOK
    # The same later push reaches all ten, byte for byte.
    first = await receive_until(bots[0], lambda m: m.get("topic") == BOOK)
    for ws in bots[1:]:
        assert await receive_until(ws, lambda m, ts=first["ts"]: m.get("ts") == ts) == first
    counters = stream(sim)
    assert counters["connections_total"] == 1 and counters["subscribes"] == {BOOK: 1}
    assert sample(seawall, "seawall_ws_connections", side="upstream", kind="public") == 1
    assert sample(seawall, "seawall_ws_connections", side="bot", kind="public") == 10
    assert seawall.status()["streams"]["public"]["topics"] == {BOOK: {"bots": 10, "held": True}}

    for ws in bots[:9]:
        await ws.close()
    await wait_until(lambda: sample(seawall, "seawall_ws_connections", side="bot", kind="public") == 1)
    assert stream(sim)["unsubscribes"] == {}  # one bot still reads it
    await bots[9].close()
    await wait_until(lambda: stream(sim)["unsubscribes"] == {BOOK: 1})  # the last one out unsubscribes
    assert stream(sim)["subscriptions_open"] == 0
    assert sample(seawall, "seawall_ws_subscriptions", kind="orderbook") == 0
    assert sample(seawall, "seawall_ws_disconnects_total", reason="bot_closed") == 10


async def test_a_bot_joining_a_snapshot_topic_gets_the_latest_push_at_once(
    sim_factory: SimFactory, start_seawall: StartSeawall, sim_http: aiohttp.ClientSession
) -> None:
    # No periodic pushes within the test: only a subscribe makes the simulator push a book or ticker.
    quiet = StreamSettings(orderbook_interval=60, ticker_interval=60)
    sim = await sim_factory("orderly", stream=quiet)
    seawall = await start_seawall("orderly", sim.base_url)
    first = await sim_http.ws_connect(ws_url(seawall, "/ws/stream/a"))
    await first.send_json({"id": "f", "event": "subscribe", "topic": BOOK})
    assert (await receive(first))["success"] is True
    book = await receive(first)
    assert book["topic"] == BOOK
    await first.send_json({"id": "t", "event": "subscribe", "topic": "PERP_ETH_USDC@trade"})
    assert (await receive(first))["success"] is True

    late = await sim_http.ws_connect(ws_url(seawall, "/ws/stream/b"))
    await late.send_json({"id": 7, "event": "subscribe", "topic": BOOK})
    answer = await receive(late)
    assert (answer["id"], answer["success"]) == (7, True)
    assert await receive(late) == book  # Seawall's copy of the last push: the exchange was not asked
    await late.send_json({"id": 8, "event": "subscribe", "topic": "PERP_ETH_USDC@trade"})
    assert (await receive(late))["id"] == 8
    await late.send_json({"event": "ping"})
    assert (await receive(late))["event"] == "pong"  # nothing replayed for a trade topic
    assert stream(sim)["subscribes"] == {BOOK: 1, "PERP_ETH_USDC@trade": 1}


async def test_errors_and_unknown_commands_are_answered_in_the_exchanges_words(
    sim_factory: SimFactory, start_seawall: StartSeawall, sim_http: aiohttp.ClientSession
) -> None:
    sim = await sim_factory("woox", stream=FAST)
    seawall = await start_seawall("woox", sim.base_url)
    bots = [await sim_http.ws_connect(ws_url(seawall, f"/ws/stream/app{n}")) for n in range(2)]
    for n, ws in enumerate(bots):  # both ask before the exchange answers: both get its refusal
        await ws.send_json({"id": f"bad{n}", "event": "subscribe", "topic": "SPOT_NOPE_USDT@trade"})
    for n, ws in enumerate(bots):
        refused = await receive(ws)
        assert refused["id"] == f"bad{n}" and refused["success"] is False
        assert refused["errorMsg"] == "invalid symbol SPOT_NOPE_USDT"
    assert stream(sim)["subscribes"] == {}  # refused topics are not held
    assert seawall.status()["streams"]["public"]["topics"] == {}

    ws = bots[0]
    await ws.send_json({"id": "a", "event": "auth", "params": {}})  # relayed: the exchange answers it
    relayed = await receive(ws)
    assert (relayed["id"], relayed["event"], relayed["success"]) == ("a", "auth", False)
    await ws.send_str("not json")
    assert (await receive(ws))["success"] is False
    await ws.send_json({"id": "u", "event": "unsubscribe", "topic": "SPOT_BTC_USDT@trade"})
    gone = await receive(ws)
    assert (gone["id"], gone["success"], gone["data"]) == ("u", True, "SPOT_BTC_USDT@trade")
    await ws.send_json({"event": "ping"})
    pong = await receive(ws)
    assert pong["event"] == "pong" and pong["ts"] > 0


async def test_seawall_pings_bots_and_closes_one_that_stays_silent(
    sim_factory: SimFactory, start_seawall: StartSeawall, sim_http: aiohttp.ClientSession
) -> None:
    sim = await sim_factory("orderly", stream=FAST)
    streams = {"ping_interval": 0.1, "max_missed_pings": 10}  # silent for 1 s: closed
    seawall = await start_seawall("orderly", sim.base_url, streams=streams)
    mute = await sim_http.ws_connect(ws_url(seawall, "/ws/stream/mute"))
    polite = await sim_http.ws_connect(ws_url(seawall, "/ws/stream/polite"))
    answered = 0

    async def answer_pings() -> None:
        nonlocal answered
        async for message in polite:
            assert orjson.loads(message.data)["event"] == "ping"
            await polite.send_json({"event": "pong"})
            answered += 1

    answering = asyncio.ensure_future(answer_pings())
    pings = 0
    while (message := await asyncio.wait_for(mute.receive(), 5)).type == aiohttp.WSMsgType.TEXT:
        assert orjson.loads(message.data)["event"] == "ping"
        pings += 1
    assert message.type == aiohttp.WSMsgType.CLOSE and mute.close_code == 1000 and pings >= 5
    assert answered >= 5 and not polite.closed and not answering.done()
    await wait_until(lambda: sample(seawall, "seawall_ws_disconnects_total", reason="unresponsive") == 1)
    answering.cancel()


async def test_pings_are_answered_on_both_sides_so_every_connection_stays(
    sim_factory: SimFactory, start_seawall: StartSeawall, sim_http: aiohttp.ClientSession
) -> None:
    # The exchange pings every 20 ms and drops a connection that leaves 3 pings in a row unanswered.
    sim = await sim_factory("orderly", stream=StreamSettings(ping_interval=0.02, max_missed_pongs=3))
    seawall = await start_seawall("orderly", sim.base_url)
    bot = await sim_http.ws_connect(ws_url(seawall, "/ws/stream/acct"))
    await bot.send_json({"id": 1, "event": "subscribe", "topic": "PERP_ETH_USDC@trade"})
    assert (await receive(bot))["success"] is True
    await wait_until(lambda: stream(sim)["pushed"].get("ping", 0) >= 15)  # five times the allowance
    assert stream(sim)["connections_open"] == 1 and stream(sim)["closed"] == {}  # Seawall ponged
    answers = stream(sim)["pushed"]["answer"]
    for _ in range(3):
        await bot.send_json({"event": "ping"})
        assert (await receive_until(bot, lambda m: m.get("event") == "pong"))["ts"] > 0
    assert stream(sim)["pushed"]["answer"] == answers  # the bot's pings never reached the exchange


async def test_topics_are_packed_onto_few_connections_capped_and_idle_connections_closed(
    sim_factory: SimFactory, start_seawall: StartSeawall, sim_http: aiohttp.ClientSession
) -> None:
    sim = await sim_factory("orderly", stream=FAST)
    streams = {"topics_per_connection": 2, "max_topics": 3, "idle_timeout": 0}
    seawall = await start_seawall("orderly", sim.base_url, streams=streams)
    bot = await sim_http.ws_connect(ws_url(seawall, "/ws/stream/acct"))
    topics = [f"PERP_ETH_USDC@{kind}" for kind in ("trade", "ticker", "orderbook", "orderbookupdate")]
    for n, topic in enumerate(topics):
        await bot.send_json({"id": n, "event": "subscribe", "topic": topic})
        answer = await receive_until(bot, lambda m, n=n: m.get("id") == n)
        assert answer["success"] is (n < 3)
    assert answer["errorMsg"] == "too many topics through seawall (streams.max_topics: 3)"
    counters = stream(sim)
    assert counters["connections_open"] == 2 and counters["subscriptions_open"] == 3  # 2 + 1
    for n, topic in enumerate(topics[:3]):
        await bot.send_json({"id": f"u{n}", "event": "unsubscribe", "topic": topic})
    await wait_until(lambda: stream(sim)["connections_open"] == 0)  # no topic left: closed at once
    assert seawall.status()["streams"]["public"]["upstream_connections"] == []
    assert not bot.closed
