"""Private streams through Seawall: one to one, every frame untouched both ways, Seawall never signs.

Real ccxt.pro `woo` / `woofipro` watching their orders through Seawall while placing them over REST
through Seawall (the simulator checks the stream's auth as it checks REST signatures), and a scriptable
exchange stream (tests/stream_exchange.py) that records every frame byte for byte.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import ccxt
import ccxt.pro as ccxtpro
import orjson
import pytest
import rawws
from fixtures_proxy import StartSeawall, wait_until
from fixtures_simulator import SimFactory
from stream_exchange import StreamExchange
from test_streams import ccxt_account, sample, ws_url
from yarl import URL

from proxy.app import Seawall
from proxy.simulator import Simulator
from proxy.simulator.accounts import Credentials
from proxy.simulator.signing import b58encode

UNUSED_REST = "http://127.0.0.1:9"  # these tests never send a REST request
# profile -> (ccxt.pro class, symbol, a resting BUY price, a client order id)
CASES = {
    "orderly": ("woofipro", "ETH/USDC:USDC", 2900.0, "cid-7"),
    "woox": ("woo", "BTC/USDT", 59000.0, "4242"),
}


def private(sim: Simulator) -> dict[str, Any]:
    counters: dict[str, Any] = sim.snapshot()["private_stream"]
    return counters


@pytest.fixture
async def exchange() -> AsyncIterator[StreamExchange]:
    server = StreamExchange()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(params=sorted(CASES))
async def pro(
    request: pytest.FixtureRequest, sim_factory: SimFactory, start_seawall: StartSeawall
) -> AsyncIterator[tuple[Any, Simulator, Seawall, Credentials]]:
    account, credentials = ccxt_account(request.param)
    sim = await sim_factory(request.param, accounts=[account])
    seawall = await start_seawall(request.param, sim.base_url)
    client = getattr(ccxtpro, CASES[request.param][0])(credentials.ccxt_config(seawall.proxy_url))
    try:
        await client.load_markets()
        yield client, sim, seawall, credentials
    finally:
        await client.close()


async def test_ccxt_pro_watch_orders_through_seawall_while_placing_over_rest(
    pro: tuple[Any, Simulator, Seawall, Credentials],
) -> None:
    client, sim, seawall, _ = pro
    _, symbol, below, cid = CASES[sim.profile]
    watching = asyncio.ensure_future(client.watch_orders(symbol))
    await wait_until(lambda: private(sim)["subscriptions_by_topic"].get("executionreport"))
    placed = await client.create_order(symbol, "limit", "buy", 0.01, below, {"clientOrderId": cid})
    (seen,) = await asyncio.wait_for(watching, 5)
    assert (seen["id"], seen["status"], seen["clientOrderId"], seen["price"]) == (
        placed["id"],
        "open",
        cid,
        below,
    )

    watching = asyncio.ensure_future(client.watch_orders(symbol))
    await client.cancel_order(placed["id"], symbol)
    (cancelled,) = await asyncio.wait_for(watching, 5)
    assert (cancelled["id"], cancelled["status"]) == (placed["id"], "canceled")
    # The bot's own signed auth reached the exchange through Seawall, on one upstream connection.
    counters = private(sim)
    assert counters["auth_ok"] == 1 and counters["auth_failures"] == 0
    assert counters["connections_open"] == counters["connections_total"] == 1
    assert sample(seawall, "seawall_ws_connections", side="bot", kind="private") == 1
    assert sample(seawall, "seawall_ws_connections", side="upstream", kind="private") == 1
    assert sample(seawall, "seawall_ws_messages_total", direction="to_bot", kind="private") >= 4


async def test_a_bad_signature_is_refused_by_the_exchange_through_seawall(
    pro: tuple[Any, Simulator, Seawall, Credentials],
) -> None:
    _, sim, seawall, creds = pro
    # A fixed seed: a random one with a leading zero byte trips ccxt's base58 decoding, not the exchange.
    wrong = b58encode(bytes(range(1, 33))) if sim.profile == "orderly" else "WRONGSECRET0000000000000000"
    impostor = getattr(ccxtpro, CASES[sim.profile][0])(
        {**creds.ccxt_config(seawall.proxy_url), "secret": wrong}
    )
    try:
        await impostor.load_markets()
        with pytest.raises(ccxt.AuthenticationError):
            await asyncio.wait_for(impostor.watch_orders(), 5)
    finally:
        await impostor.close()
    assert private(sim)["auth_failures"] == 1  # the exchange judged it; Seawall only carried it
    await wait_until(lambda: sample(seawall, "seawall_ws_disconnects_total", reason="upstream_closed") == 1)


async def test_every_frame_passes_untouched_both_ways_with_pings_pongs_and_close_codes(
    exchange: StreamExchange, start_seawall: StartSeawall, sim_http: aiohttp.ClientSession
) -> None:
    seawall = await start_seawall("orderly", UNUSED_REST, streams={"private_url": exchange.url})
    target = "/v2/ws/private/stream/0xabc?orderly_key=ed25519%3AK&timestamp=1700000000000&sign=a%2Fb%3D"
    bot = await sim_http.ws_connect(URL(ws_url(seawall, target), encoded=True), autoping=False)
    await wait_until(lambda: exchange.sessions)
    session = exchange.sessions[0]
    assert session.path_qs == target  # Orderly's auth in the query, byte for byte

    auth = ' {"event" :"auth", "params":{"orderly_key":"K","sign":"\\u00e9=","timestamp":1} } '
    await bot.send_str(auth)
    await bot.send_bytes(b"\x00\x01\xfe\xff")
    await bot.ping(b"bot-ping")
    await wait_until(lambda: len(session.frames) == 3)
    assert session.frames == [
        (aiohttp.WSMsgType.TEXT, auth.encode()),
        (aiohttp.WSMsgType.BINARY, b"\x00\x01\xfe\xff"),
        (aiohttp.WSMsgType.PING, b"bot-ping"),
    ]

    pushed = '{"topic":"executionreport" ,"ts":1, "data":{"price":1.10,"note":"caf\\u00e9"}}'
    await session.ws.send_str(pushed)
    await session.ws.ping(b"exchange-ping")
    text = await asyncio.wait_for(bot.receive(), 5)
    assert (text.type, text.data) == (aiohttp.WSMsgType.TEXT, pushed)
    ping = await asyncio.wait_for(bot.receive(), 5)
    assert (ping.type, ping.data) == (aiohttp.WSMsgType.PING, b"exchange-ping")
    await bot.pong(b"exchange-ping")
    await wait_until(lambda: len(session.frames) == 4)
    assert session.frames[3] == (aiohttp.WSMsgType.PONG, b"exchange-ping")

    await session.ws.close(code=4001, message=b"session expired")  # the exchange ends it: so does the bot
    closed = await asyncio.wait_for(bot.receive(), 5)
    assert (closed.type, closed.data, closed.extra) == (aiohttp.WSMsgType.CLOSE, 4001, "session expired")
    await wait_until(lambda: sample(seawall, "seawall_ws_disconnects_total", reason="upstream_closed") == 1)
    assert sample(seawall, "seawall_ws_disconnects_total", reason="upstream_lost") == 1

    second = await sim_http.ws_connect(ws_url(seawall, "/v2/ws/private/stream/0xabc"))
    await wait_until(lambda: len(exchange.sessions) == 2)
    await second.close(code=4002, message=b"bye")  # the bot ends it: so does the exchange's side
    await asyncio.wait_for(exchange.sessions[1].closed.wait(), 5)
    assert exchange.sessions[1].ws.close_code == 4002
    await wait_until(lambda: sample(seawall, "seawall_ws_connections", side="upstream", kind="private") == 0)
    assert sample(seawall, "seawall_ws_disconnects_total", reason="bot_closed") == 1


async def test_private_streams_are_capped_per_id_before_anything_is_sent(
    exchange: StreamExchange, start_seawall: StartSeawall, sim_http: aiohttp.ClientSession
) -> None:
    streams = {"private_url": exchange.url, "max_private_per_id": 2}
    seawall = await start_seawall("woox", UNUSED_REST, streams=streams)
    path = "/v2/ws/private/stream/app-1"
    first = await sim_http.ws_connect(ws_url(seawall, path))
    second = await sim_http.ws_connect(ws_url(seawall, path))
    status, headers, body = await rawws.refused_handshake(seawall.proxy_url, path)
    assert (status, headers["x-seawall"], orjson.loads(body)["code"]) == (429, "stream-cap", -1003)
    assert len(exchange.handshakes) == 2  # the third never reached the exchange
    other = await sim_http.ws_connect(ws_url(seawall, "/v2/ws/private/stream/app-2"))  # per id
    await first.close()
    await wait_until(lambda: seawall.status()["streams"]["private"]["bots"] == 2)
    again = await sim_http.ws_connect(ws_url(seawall, path))  # a freed place is taken again
    assert len(exchange.handshakes) == 4
    for ws in (second, other, again):
        await ws.close()


async def test_a_refused_or_unreachable_exchange_answers_the_handshake_in_its_format(
    exchange: StreamExchange, start_seawall: StartSeawall
) -> None:
    exchange.limit = 0  # the exchange refuses every handshake with 429
    refusing = await start_seawall("orderly", UNUSED_REST, streams={"private_url": exchange.url})
    status, headers, body = await rawws.refused_handshake(refusing.proxy_url, "/v2/ws/private/stream/a")
    assert (status, headers["x-seawall"], orjson.loads(body)["code"]) == (429, "upstream-refused", -1003)
    assert sample(refusing, "seawall_ws_upstream_connects_total", result="refused") == 1

    gone = await start_seawall("orderly", UNUSED_REST, streams={"private_url": "ws://127.0.0.1:9"})
    status, headers, body = await rawws.refused_handshake(gone.proxy_url, "/v2/ws/private/stream/a")
    assert headers["x-seawall"] == "upstream-unavailable" and orjson.loads(body)["code"] == -1011
    assert sample(gone, "seawall_ws_upstream_connects_total", result="failed") == 1
    assert gone.status()["streams"]["private"] == {"upstream": "ws://127.0.0.1:9", "bots": 0, "ids": 0}
