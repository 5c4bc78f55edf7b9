"""How a stream handshake on the proxy listener becomes aiohttp's WebSocket, on raw sockets: requests
before it on the connection are answered first, bytes sent right behind the head are not lost, refusals
are the exchange's payload, nothing is left behind by a client that hangs up, and a shutdown closes
streams with 1001.
"""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest
import rawws
import uvloop
from fixtures_proxy import StartSeawall, seawall_config, wait_until
from fixtures_simulator import SimFactory
from rawhttp import split_answer
from stream_exchange import StreamExchange
from test_streams import FAST, receive, sample, ws_url

from proxy.app import Seawall

UNUSED_REST = "http://127.0.0.1:9"

# Every test here runs on both loops: `seawall run` uses uvloop, whose transports differ from asyncio's
# (the handover moves a live transport to aiohttp's protocol). pytest-asyncio deprecates this fixture in
# favour of a suite-wide hook; `test_the_loop_is_the_one_asked_for` fails the day it stops working.
pytestmark = pytest.mark.filterwarnings("ignore:.*event_loop_policy.*:DeprecationWarning")


@pytest.fixture(params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    return uvloop.EventLoopPolicy() if request.param == "uvloop" else asyncio.DefaultEventLoopPolicy()


async def test_the_loop_is_the_one_asked_for(event_loop_policy: asyncio.AbstractEventLoopPolicy) -> None:
    on_uvloop = isinstance(asyncio.get_running_loop(), uvloop.Loop)
    assert on_uvloop == isinstance(event_loop_policy, uvloop.EventLoopPolicy)


async def test_a_handshake_behind_a_pipelined_request_with_its_first_frame_right_behind_it(
    sim_factory: SimFactory, start_seawall: StartSeawall
) -> None:
    sim = await sim_factory("orderly", stream=FAST)
    seawall = await start_seawall("orderly", sim.base_url)
    reader, writer = await rawws.connect(seawall.proxy_url)
    plain = b"GET /v1/public/system_info HTTP/1.1\r\nHost: seawall\r\n\r\n"
    ping = rawws.client_frame(b'{"event": "ping"}')
    writer.write(plain + rawws.handshake_request("/ws/stream/acct") + ping)  # one write, no waiting
    status, headers, _ = split_answer(await rawws.read_head(reader))
    assert status == 200
    await reader.readexactly(int(headers["content-length"]))  # the first request's answer comes first
    assert (await rawws.read_head(reader)).startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    opcode, payload = await asyncio.wait_for(rawws.read_frame(reader), 5)
    assert opcode == 0x1 and orjson.loads(payload)["event"] == "pong"  # the early frame was not lost
    writer.write(rawws.client_frame(b'{"id": 3, "event": "subscribe", "topic": "PERP_ETH_USDC@trade"}'))
    opcode, payload = await asyncio.wait_for(rawws.read_frame(reader), 5)
    assert orjson.loads(payload)["id"] == 3
    assert seawall.proxy_server is not None and seawall.proxy_server.open_connections == 0  # let go of
    writer.close()


async def test_a_malformed_stream_handshake_is_refused_in_the_exchanges_format(
    sim_factory: SimFactory, start_seawall: StartSeawall
) -> None:
    sim = await sim_factory("orderly")
    seawall = await start_seawall("orderly", sim.base_url)
    reader, writer = await rawws.connect(seawall.proxy_url)
    no_key = b"GET /ws/stream/acct HTTP/1.1\r\nHost: s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    writer.write(no_key)
    status, headers, _ = split_answer(await rawws.read_head(reader))
    body = await reader.readexactly(int(headers["content-length"]))
    assert (status, headers["x-seawall"], orjson.loads(body)["code"]) == (400, "bad-request", -1005)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # and the connection closes
    labels = {"route": "default", "method": "GET", "status": "400", "outcome": "rejected"}
    assert sample(seawall, "seawall_requests_total", **labels) == 1
    writer.close()


async def test_an_oversized_frame_closes_only_that_bot(
    sim_factory: SimFactory, start_seawall: StartSeawall, sim_http: aiohttp.ClientSession
) -> None:
    sim = await sim_factory("woox", stream=FAST)
    seawall = await start_seawall("woox", sim.base_url, streams={"max_message_bytes": 1024})
    other = await sim_http.ws_connect(ws_url(seawall, "/ws/stream/b"))
    bot = await sim_http.ws_connect(ws_url(seawall, "/ws/stream/a"))
    await bot.send_str('{"event": "ping", "pad": "' + "x" * 2000 + '"}')
    closed = await asyncio.wait_for(bot.receive(), 5)
    assert (closed.type, closed.data) == (aiohttp.WSMsgType.CLOSE, 1009)  # "message too big"
    await other.send_json({"event": "ping"})
    assert (await receive(other))["event"] == "pong"
    await wait_until(lambda: sample(seawall, "seawall_ws_disconnects_total", reason="error") == 1)


async def test_a_client_that_hangs_up_mid_handshake_leaves_nothing_behind(
    start_seawall: StartSeawall, sim_http: aiohttp.ClientSession
) -> None:
    exchange = StreamExchange()
    await exchange.start()
    try:
        streams = {"private_url": exchange.url, "max_private_per_id": 1}
        seawall = await start_seawall("orderly", UNUSED_REST, streams=streams)
        for attempt in range(3):  # each one would hold the id's only place if it leaked
            _, writer = await rawws.connect(seawall.proxy_url)
            writer.write(rawws.handshake_request("/v2/ws/private/stream/acct"))
            writer.close()
            await wait_until(lambda n=attempt: len(exchange.sessions) == n + 1)  # Seawall dialled it
            await asyncio.wait_for(exchange.sessions[attempt].closed.wait(), 5)  # and hung up too
            await wait_until(lambda: seawall.status()["streams"]["private"]["ids"] == 0)
        ws = await sim_http.ws_connect(ws_url(seawall, "/v2/ws/private/stream/acct"))
        assert not ws.closed
        await ws.close()
        await wait_until(
            lambda: sample(seawall, "seawall_ws_connections", side="upstream", kind="private") == 0
        )
        assert sample(seawall, "seawall_ws_connections", side="bot", kind="private") == 0
    finally:
        await exchange.stop()


async def test_shutdown_closes_every_stream_with_going_away(
    sim_factory: SimFactory, sim_http: aiohttp.ClientSession
) -> None:
    sim = await sim_factory("orderly", stream=FAST)
    seawall = Seawall(seawall_config("orderly", sim.base_url))
    await seawall.start()
    assert sim.demo_credentials is not None
    public = await sim_http.ws_connect(ws_url(seawall, "/ws/stream/acct"))
    await public.send_json({"id": 1, "event": "subscribe", "topic": "PERP_ETH_USDC@trade"})
    assert (await receive(public))["success"] is True
    account = sim.demo_credentials.account_id
    private = await sim_http.ws_connect(ws_url(seawall, f"/v2/ws/private/stream/{account}"))
    stopping = asyncio.ensure_future(seawall.stop())  # the bots keep reading meanwhile, as bots do
    for ws in (private, public):
        while (message := await asyncio.wait_for(ws.receive(), 5)).type == aiohttp.WSMsgType.TEXT:
            pass
        assert (message.type, message.data) == (aiohttp.WSMsgType.CLOSE, 1001)
    await asyncio.wait_for(stopping, 10)
    await wait_until(lambda: sim.snapshot()["stream"]["connections_open"] == 0)
    await wait_until(lambda: sim.snapshot()["private_stream"]["connections_open"] == 0)
