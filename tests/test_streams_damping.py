"""What an exchange blip, a fleet restart and a slow bot do to streams through Seawall: upstream
reconnects with jittered backoff and re-subscribes while bots stay connected (or, as the profile says,
bots are closed with 1012), handshakes paced so the exchange never refuses one, and one bot that stops
reading cut off without slowing the others.

Against the simulator where it can play the part (dropping every stream connection) and a scriptable
exchange stream (tests/stream_exchange.py) where it cannot (a strict handshake limit, bursts of large
pushes). Timing is asserted only as lower bounds (a loaded machine can only make gaps longer).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
import rawws
from fixtures_proxy import StartSeawall, wait_until
from fixtures_simulator import SimFactory, client_for
from stream_exchange import StreamExchange
from test_streams import FAST, receive, receive_until, sample, stream, ws_url

from proxy.simulator.symbols import resting_order

TRADES = "PERP_ETH_USDC@trade"
UNUSED_REST = "http://127.0.0.1:9"  # these tests never send a REST request


@pytest.fixture
async def exchange() -> AsyncIterator[StreamExchange]:
    server = StreamExchange()
    await server.start()
    yield server
    await server.stop()


async def test_an_upstream_drop_is_reconnected_and_resubscribed_while_bots_stay_connected(
    sim_factory: SimFactory, start_seawall: StartSeawall, sim_http: aiohttp.ClientSession
) -> None:
    sim = await sim_factory("orderly", stream=FAST)
    seawall = await start_seawall(
        "orderly", sim.base_url, streams={"reconnect_min": 0.05, "reconnect_max": 0.2}
    )
    bot = await sim_http.ws_connect(ws_url(seawall, "/ws/stream/acct"))
    await bot.send_json({"id": 1, "event": "subscribe", "topic": TRADES})
    assert (await receive(bot))["success"] is True

    await sim.stream.close_all()  # the exchange drops every public stream connection
    await wait_until(lambda: stream(sim)["connections_total"] == 2 and stream(sim)["connections_open"] == 1)
    await wait_until(lambda: stream(sim)["subscribes"] == {TRADES: 2})  # re-subscribed on its own
    market_buy = resting_order(None, order_type="MARKET", order_price=None)
    placed = await client_for(sim_http, sim).orderly("POST", "/v1/order", market_buy)
    assert placed.status == 200
    trade = await receive_until(bot, lambda m: m.get("topic") == TRADES)  # over the new connection
    assert trade["data"]["side"] == "BUY" and not bot.closed
    assert sample(seawall, "seawall_ws_disconnects_total", reason="upstream_lost") == 1
    assert sample(seawall, "seawall_ws_upstream_connects_total", result="ok") == 2
    assert sample(seawall, "seawall_ws_connections", side="upstream", kind="public") == 1
    assert sample(seawall, "seawall_ws_connections", side="bot", kind="public") == 1


async def test_the_profile_can_make_bots_restart_their_streams_when_the_upstream_drops(
    sim_factory: SimFactory, start_seawall: StartSeawall, sim_http: aiohttp.ClientSession
) -> None:
    sim = await sim_factory("woox", stream=FAST)
    seawall = await start_seawall("woox", sim.base_url, streams={"on_upstream_loss": "close"})
    bot = await sim_http.ws_connect(ws_url(seawall, "/ws/stream/app"))
    await bot.send_json({"id": 1, "event": "subscribe", "topic": "SPOT_BTC_USDT@trade"})
    assert (await receive(bot))["success"] is True
    await sim.stream.close_all()
    while (message := await asyncio.wait_for(bot.receive(), 5)).type == aiohttp.WSMsgType.TEXT:
        pass
    assert message.type == aiohttp.WSMsgType.CLOSE and bot.close_code == 1012  # "service restart"
    await wait_until(lambda: seawall.status()["streams"]["public"]["upstream_connections"] == [])
    assert stream(sim)["connections_total"] == 1  # no topic left: nothing to reconnect for
    await wait_until(lambda: sample(seawall, "seawall_ws_disconnects_total", reason="upstream_closed") == 1)


async def test_reconnects_back_off_with_jitter_while_the_exchange_refuses(
    exchange: StreamExchange, start_seawall: StartSeawall, sim_http: aiohttp.ClientSession
) -> None:
    exchange.limit = 0  # every handshake refused (429) until the test lifts it
    streams = {
        "public_url": exchange.url,
        "reconnect_min": 0.05,
        "reconnect_max": 0.2,
        "subscribe_timeout": 30,
    }
    seawall = await start_seawall("orderly", UNUSED_REST, streams=streams)
    bot = await sim_http.ws_connect(ws_url(seawall, "/ws/stream/acct"))
    await bot.send_json({"id": "s", "event": "subscribe", "topic": "PERP_ETH_USDC@trade"})
    await wait_until(lambda: len(exchange.handshakes) >= 6)
    starts = [handshake.at for handshake in exchange.handshakes[:6]]
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    # Jittered: between half and all of min * 2^(attempt-1), capped at max; never a tight loop.
    floors = [0.025, 0.05, 0.1, 0.1, 0.1]
    # (10 ms of slack for when each handshake is seen; a tight loop would be ~1 ms apart)
    assert all(gap >= floor - 0.01 for gap, floor in zip(gaps, floors, strict=True)), gaps
    await wait_until(lambda: sample(seawall, "seawall_ws_upstream_connects_total", result="refused") >= 6)
    exchange.limit = None
    answer = await receive(bot)  # the bot waited, connected, and got its answer once the link came up
    assert (answer["id"], answer["success"]) == ("s", True) and not bot.closed


async def test_a_fleet_reconnecting_at_once_never_earns_a_handshake_refusal(
    exchange: StreamExchange, start_seawall: StartSeawall, sim_http: aiohttp.ClientSession
) -> None:
    exchange.limit = 2  # the exchange refuses a third handshake within any second
    connects = {"limit": 2, "window": 1.25, "max_wait": 10}  # a margin over the exchange's window
    seawall = await start_seawall(
        "orderly", UNUSED_REST, streams={"private_url": exchange.url, "connects": connects}
    )
    fleet = await asyncio.gather(
        *(sim_http.ws_connect(ws_url(seawall, f"/v2/ws/private/stream/acct{n}")) for n in range(4))
    )
    assert all(not ws.closed for ws in fleet)
    assert exchange.refused == 0 and len(exchange.handshakes) == 4
    starts = [handshake.at for handshake in exchange.handshakes]
    assert starts[2] - starts[0] >= 1.0  # paced: the third waited for the window
    assert sample(seawall, "seawall_ws_upstream_connects_total", result="ok") == 4
    for ws in fleet:
        await ws.close()

    # The same fleet straight at the exchange: refused.
    direct = await asyncio.gather(
        *(sim_http.ws_connect(f"{exchange.url}/v2/ws/private/stream/d{n}") for n in range(4)),
        return_exceptions=True,
    )
    assert sum(isinstance(result, aiohttp.WSServerHandshakeError) for result in direct) >= 2
    for result in direct:
        if isinstance(result, aiohttp.ClientWebSocketResponse):
            await result.close()


async def test_a_handshake_with_no_turn_in_time_is_refused_locally_and_never_sent(
    exchange: StreamExchange, start_seawall: StartSeawall, sim_http: aiohttp.ClientSession
) -> None:
    connects = {"limit": 1, "window": 60, "max_wait": 0.2}
    seawall = await start_seawall(
        "woox", UNUSED_REST, streams={"private_url": exchange.url, "connects": connects}
    )
    first = await sim_http.ws_connect(ws_url(seawall, "/v2/ws/private/stream/app"))
    status, headers, body = await rawws.refused_handshake(seawall.proxy_url, "/v2/ws/private/stream/app")
    assert status == 429 and headers["x-seawall"] == "congested" and int(headers["retry-after"]) >= 59
    assert orjson.loads(body)["code"] == -1003
    assert len(exchange.handshakes) == 1  # the refused one never reached the exchange
    assert sample(seawall, "seawall_ws_upstream_connects_total", result="throttled") == 1
    await first.close()


async def test_a_bot_that_stops_reading_is_cut_off_without_slowing_the_others(
    exchange: StreamExchange, start_seawall: StartSeawall, sim_http: aiohttp.ClientSession
) -> None:
    streams = {"public_url": exchange.url, "bot_buffer_bytes": 256 * 1024}
    seawall = await start_seawall("orderly", UNUSED_REST, streams=streams)
    fast = await sim_http.ws_connect(ws_url(seawall, "/ws/stream/fast"), max_msg_size=0)
    await fast.send_json({"id": 1, "event": "subscribe", "topic": "X@trade"})
    assert (await receive(fast))["success"] is True
    # The slow bot: a small receive buffer, subscribed, then never reads again.
    reader, writer = await rawws.connect(seawall.proxy_url, receive_buffer=4096)
    writer.write(rawws.handshake_request("/ws/stream/slow"))
    assert (await rawws.read_head(reader)).startswith(b"HTTP/1.1 101")
    writer.write(rawws.client_frame(b'{"id": 2, "event": "subscribe", "topic": "X@trade"}'))
    assert orjson.loads((await rawws.read_frame(reader))[1])["success"] is True
    await wait_until(lambda: seawall.status()["streams"]["public"]["topics"]["X@trade"]["bots"] == 2)

    # 200 pushes of 64 KiB (12.8 MB to each bot), each one sent once the fast bot read the last: the
    # fast bot is served at its own pace while the slow one's backlog grows past its buffer.
    for n in range(200):
        await exchange.push("X@trade", count=1, size=64 * 1024, first=n)
        assert (await receive(fast, timeout=10))["data"]["n"] == n
    await wait_until(lambda: sample(seawall, "seawall_ws_disconnects_total", reason="slow") == 1)
    assert seawall.status()["streams"]["public"]["topics"]["X@trade"]["bots"] == 1
    assert not fast.closed
    writer.close()
