"""The simulator's private WebSocket: real ccxt.pro `woo` / `woofipro` watching orders, trades, balance
and positions while ccxt places over REST; the protocol's edges (auth, topics, isolation) on a raw socket.

ccxt.pro hands a push only to a watch already waiting, so each watch is started (`ensure_future`) before
the action that causes its push: the watch's first step registers it and runs before anything the action
sends can come back. Every other wait is a poll with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import ccxt
import ccxt.pro as ccxtpro
import orjson
import pytest
import yarl
from fixtures_proxy import wait_until, wait_until_async
from fixtures_simulator import SimFactory, client_for

from proxy.simulator import Credentials, Simulator, StreamSettings, generate_account
from proxy.simulator.cli import build_parser, main
from proxy.simulator.cli_stream import stream_settings
from proxy.simulator.signing import (
    generate_orderly_keypair,
    now_ms,
    orderly_signature,
    woox_v1_signature,
)
from proxy.simulator.symbols import resting_order

# profile -> (ccxt.pro class, spot-or-perp symbol, its id, a resting BUY price, client id, quote, perp)
CASES = {
    "orderly": ("woofipro", "ETH/USDC:USDC", "PERP_ETH_USDC", 2900.0, "cid-7", "USDC", "ETH/USDC:USDC"),
    "woox": ("woo", "BTC/USDT", "SPOT_BTC_USDT", 59000.0, "4242", "USDT", "BTC/USDT:USDT"),
}
PERP_IDS = {"ETH/USDC:USDC": "PERP_ETH_USDC", "BTC/USDT:USDT": "PERP_BTC_USDT"}


def private_url(sim: Simulator, stream_id: str) -> str:
    return f"ws://127.0.0.1:{sim.port}/v2/ws/private/stream/{stream_id}"


def auth_params(creds: Credentials, ts: int | None = None, secret: str | None = None) -> dict[str, Any]:
    """What ccxt.pro sends: Orderly ed25519 over the timestamp (standard base64), WOO X HMAC over "|ts"."""
    stamp = now_ms() if ts is None else ts
    if creds.profile == "orderly":
        sign = orderly_signature(secret or creds.secret, str(stamp).encode(), standard_base64=True)
        return {"orderly_key": creds.api_key, "sign": sign, "timestamp": stamp}
    return {
        "apikey": creds.api_key,
        "sign": woox_v1_signature(secret or creds.secret, "", stamp),
        "timestamp": stamp,
    }


def counters(sim: Simulator) -> dict[str, Any]:
    private: dict[str, Any] = sim.snapshot()["private_stream"]
    return private


async def subscribed(sim: Simulator, *topics: str) -> None:
    await wait_until(lambda: all(counters(sim)["subscriptions_by_topic"].get(t) for t in topics))


def ccxt_order(client: Any, order_id: str) -> dict[str, Any] | None:
    """The order as ccxt.pro parsed it from the stream (its cache holds each order's latest push)."""
    return next((o for o in (client.orders or []) if o["id"] == order_id), None)


async def ask(ws: aiohttp.ClientWebSocketResponse, message: Any) -> dict[str, Any]:
    await (ws.send_str(message) if isinstance(message, str) else ws.send_json(message))
    reply = await asyncio.wait_for(ws.receive_json(), 5)
    assert isinstance(reply, dict)
    return reply


async def closed(ws: aiohttp.ClientWebSocketResponse) -> bool:
    return (await asyncio.wait_for(ws.receive(), 5)).type in (
        aiohttp.WSMsgType.CLOSE,
        aiohttp.WSMsgType.CLOSED,
    )


@pytest.fixture(params=sorted(CASES))
async def pro(
    request: pytest.FixtureRequest, sim_factory: SimFactory
) -> AsyncIterator[tuple[Any, Simulator]]:
    sim = await sim_factory(request.param)
    assert sim.demo_credentials is not None
    # The config the banner prints: REST and both streams pointed at the simulator.
    client = getattr(ccxtpro, CASES[request.param][0])(sim.demo_credentials.ccxt_config(sim.base_url))
    try:
        await client.load_markets()
        yield client, sim
    finally:
        await client.close()


async def test_ccxt_pro_watch_orders_follows_placement_cancel_and_fills(pro: tuple[Any, Simulator]) -> None:
    client, sim = pro
    _, symbol, _, below, cid, _, _ = CASES[sim.profile]
    watching = asyncio.ensure_future(client.watch_orders(symbol))
    await subscribed(sim, "executionreport")
    placed = await client.create_order(symbol, "limit", "buy", 0.01, below, {"clientOrderId": cid})
    (seen,) = await asyncio.wait_for(watching, 5)
    assert (seen["id"], seen["status"], seen["clientOrderId"], seen["side"], seen["type"]) == (
        placed["id"],
        "open",
        cid,
        "buy",
        "limit",
    )
    assert (seen["price"], seen["amount"], seen["filled"], seen["symbol"]) == (below, 0.01, 0, symbol)

    watching = asyncio.ensure_future(client.watch_orders(symbol))
    await client.cancel_order(placed["id"], symbol)
    (cancelled,) = await asyncio.wait_for(watching, 5)
    assert (cancelled["id"], cancelled["status"]) == (placed["id"], "canceled")

    resting = await client.create_order(symbol, "limit", "buy", 0.02, below)
    await wait_until(lambda: ccxt_order(client, resting["id"]))
    watching = asyncio.ensure_future(client.watch_orders(symbol))
    sim.fill_order(order_id=int(resting["id"]))  # the control API's fill: the resting order is the maker
    (filled,) = await asyncio.wait_for(watching, 5)
    assert (filled["id"], filled["status"], filled["filled"]) == (resting["id"], "closed", 0.02)

    taken = await client.create_order(symbol, "market", "sell", 0.03)  # NEW, then FILLED at once
    done = await wait_until(lambda: (o := ccxt_order(client, taken["id"])) and o["status"] == "closed" and o)
    assert (done["side"], done["filled"]) == ("sell", 0.03)
    assert counters(sim)["pushed"]["executionreport"] == 6  # open, cancelled, open, filled, open, filled


async def test_ccxt_pro_watches_my_trades_balance_and_positions(pro: tuple[Any, Simulator]) -> None:
    client, sim = pro
    _, symbol, _, below, _, quote, perp = CASES[sim.profile]
    mid = float(sim.book.symbols[PERP_IDS[perp]].mid)
    assert await asyncio.wait_for(client.watch_positions(), 5) == []  # ccxt's REST snapshot comes first
    trades = asyncio.ensure_future(client.watch_my_trades(perp))
    positions = asyncio.ensure_future(client.watch_positions())
    await subscribed(sim, "executionreport", "position")
    sold = await client.create_order(perp, "market", "sell", 0.01)
    (trade,) = await asyncio.wait_for(trades, 5)
    assert (trade["order"], trade["side"], trade["amount"], trade["price"]) == (sold["id"], "sell", 0.01, mid)
    assert trade["takerOrMaker"] == "taker" and trade["id"]
    (position,) = await asyncio.wait_for(positions, 5)
    assert (position["symbol"], position["side"], position["contracts"], position["entryPrice"]) == (
        perp,
        "short",
        0.01,
        mid,
    )

    balance = asyncio.ensure_future(client.watch_balance())
    await subscribed(sim, "balance")
    await client.create_order(symbol, "limit", "buy", 0.01, below)  # holds margin (perp) or cost (spot)
    seen = await asyncio.wait_for(balance, 5)
    held = below * 0.01 / (10 if sim.profile == "orderly" else 1)  # leverage 10 on perps
    assert (seen[quote]["total"], seen[quote]["used"]) == (100000, pytest.approx(held))
    assert seen[quote]["free"] == pytest.approx(100000 - held)


async def test_a_bad_signature_is_refused_in_the_exchanges_format(
    pro: tuple[Any, Simulator], sim_http: aiohttp.ClientSession
) -> None:
    _, sim = pro
    creds = sim.demo_credentials
    assert creds is not None
    wrong = generate_orderly_keypair().secret if sim.profile == "orderly" else "WRONGSECRET0000000000000000"
    impostor = getattr(ccxtpro, CASES[sim.profile][0])({**creds.ccxt_config(sim.base_url), "secret": wrong})
    try:
        await impostor.load_markets()
        with pytest.raises(ccxt.AuthenticationError, match="auth failed"):
            await asyncio.wait_for(impostor.watch_orders(), 5)
    finally:
        await impostor.close()

    async with sim_http.ws_connect(private_url(sim, creds.account_id)) as ws:
        refused = await ask(ws, {"id": "a1", "event": "auth", "params": auth_params(creds, secret=wrong)})
        assert refused == {
            "id": "a1",
            "event": "auth",
            "success": False,
            "ts": refused["ts"],
            "errorMsg": "auth failed",
        }
        assert await closed(ws)
    await wait_until(lambda: counters(sim)["connections_open"] == 0)
    stream = counters(sim)
    assert (stream["auth_failures"], stream["auth_failures_by_reason"], stream["auth_ok"]) == (
        2,
        {"bad_signature": 2},
        0,
    )
    assert stream["closed"] == {"auth_failed": 2}


async def test_orderly_protocol_on_a_raw_socket(
    sim_factory: SimFactory, sim_http: aiohttp.ClientSession
) -> None:
    sim = await sim_factory("orderly")
    creds = sim.demo_credentials
    assert creds is not None
    rest = client_for(sim_http, sim)
    async with sim_http.ws_connect(private_url(sim, creds.account_id)) as ws:
        early = await ask(ws, {"id": "s0", "event": "subscribe", "topic": "executionreport"})
        assert (early["id"], early["success"], early["errorMsg"]) == ("s0", False, "Auth is needed.")
        assert (await ask(ws, {"event": "ping"}))["event"] == "pong"  # pings need no auth
        ok = await ask(ws, {"id": "123r", "event": "auth", "params": auth_params(creds)})
        assert ok == {"id": "123r", "event": "auth", "success": True, "ts": ok["ts"]}
        bad_topic = await ask(ws, {"id": "s1", "event": "subscribe", "topic": "settle"})
        assert (bad_topic["success"], bad_topic["errorMsg"]) == (False, "invalid topic settle")
        btc_only = {"symbol": "PERP_BTC_USDC"}
        subscribe = {"id": "s2", "event": "subscribe", "topic": "executionreport", "params": btc_only}
        assert (await ask(ws, subscribe))["success"] is True
        unknown = {**subscribe, "params": {"symbol": "PERP_NOPE_USDC"}}
        assert (await ask(ws, unknown))["errorMsg"] == "invalid symbol PERP_NOPE_USDC"
        assert (await ask(ws, "not json"))["success"] is False

        assert (await rest.orderly("POST", "/v1/order", resting_order("eth-1"))).status == 200
        assert (await ask(ws, {"event": "ping"}))["event"] == "pong"  # the ETH order was not pushed
        btc = resting_order("btc-1", symbol="PERP_BTC_USDC", order_price=59000, order_quantity=0.001)
        placed = await rest.orderly("POST", "/v1/order", btc)
        push = await asyncio.wait_for(ws.receive_json(), 5)
        assert push["topic"] == "executionreport" and push["ts"] > 0
        assert push["data"] == {
            "symbol": "PERP_BTC_USDC",
            "clientOrderId": "btc-1",
            "orderId": placed.json["data"]["order_id"],
            "type": "LIMIT",
            "side": "BUY",
            "quantity": 0.001,
            "price": 59000.0,
            "tradeId": 0,
            "executedPrice": 0.0,
            "executedQuantity": 0.0,
            "fee": 0.0,
            "feeAsset": "USDC",
            "totalExecutedQuantity": 0.0,
            "avgPrice": 0.0,
            "status": "NEW",
            "reason": "",
            "totalFee": 0.0,
            "timestamp": push["data"]["timestamp"],
            "maker": False,
            "avgExecutedPrice": 0.0,
            "visibleQuantity": 0.001,
            "reduceOnly": False,
            "marginMode": "CROSS",
        }
        gone = await ask(ws, {"id": "u1", "event": "unsubscribe", "topic": "executionreport"})
        assert (gone["success"], gone["data"]) == (True, "executionreport")
    stream = counters(sim)
    assert stream["subscribes"] == {"executionreport": 1} and stream["unsubscribes"] == {"executionreport": 1}
    assert stream["pushed"]["executionreport"] == 1 and stream["auth_ok"] == 1


async def test_orderly_url_auth_and_accounts_never_see_each_others_orders(
    sim_factory: SimFactory, sim_http: aiohttp.ClientSession
) -> None:
    (alice, alice_creds), (bob, bob_creds) = generate_account("orderly"), generate_account("orderly")
    sim = await sim_factory("orderly", accounts=[alice, bob])
    in_url = {name: str(value) for name, value in auth_params(alice_creds).items()}
    async with (
        sim_http.ws_connect(yarl.URL(private_url(sim, alice.account_id)).with_query(in_url)) as alice_ws,
        sim_http.ws_connect(private_url(sim, bob.account_id)) as bob_ws,
    ):
        # Authenticated by the URL: no auth message, subscriptions served at once.
        assert (await ask(alice_ws, {"id": 1, "event": "subscribe", "topic": "executionreport"}))["success"]
        assert (await ask(bob_ws, {"id": 1, "event": "auth", "params": auth_params(bob_creds)}))["success"]
        assert (await ask(bob_ws, {"id": 2, "event": "subscribe", "topic": "executionreport"}))["success"]
        placed = await client_for(sim_http, sim, alice_creds).orderly(
            "POST", "/v1/order", resting_order("a-1")
        )
        push = await asyncio.wait_for(alice_ws.receive_json(), 5)
        assert push["data"]["orderId"] == placed.json["data"]["order_id"]
        assert (await ask(bob_ws, {"event": "ping"}))["event"] == "pong"  # bob heard nothing of it

    # Alice's valid signature on Bob's stream, and a stale one on her own, are refused.
    stale = auth_params(alice_creds, now_ms() - 301_000)
    for stream_id, params in ((bob.account_id, auth_params(alice_creds)), (alice.account_id, stale)):
        async with sim_http.ws_connect(private_url(sim, stream_id)) as ws:
            assert (await ask(ws, {"event": "auth", "params": params}))["errorMsg"] == "auth failed"
            assert await closed(ws)
    assert counters(sim)["auth_failures_by_reason"] == {"other_account": 1, "stale_timestamp": 1}


async def test_woox_accepts_upper_case_hex_and_refuses_an_unknown_key(
    sim_factory: SimFactory, sim_http: aiohttp.ClientSession
) -> None:
    sim = await sim_factory("woox")
    creds = sim.demo_credentials
    assert creds is not None
    async with sim_http.ws_connect(private_url(sim, creds.account_id)) as ws:
        params = auth_params(creds)
        upper = {
            **params,
            "sign": params["sign"].upper(),
            "timestamp": str(params["timestamp"]),
        }  # hummingbot
        assert (await ask(ws, {"event": "auth", "params": upper}))["success"] is True
        assert (await ask(ws, {"id": "x", "event": "subscribe", "topic": "balance"}))["success"] is True
        market_buy = {
            "symbol": "SPOT_BTC_USDT",
            "order_type": "MARKET",
            "side": "BUY",
            "order_quantity": 0.01,
        }
        assert (await client_for(sim_http, sim).v1("POST", "/v1/order", market_buy)).status == 200
        pushes = [await asyncio.wait_for(ws.receive_json(), 5) for _ in range(2)]  # NEW, then FILLED
        assert [p["topic"] for p in pushes] == ["balance", "balance"]
        assert pushes[-1]["data"]["balances"]["BTC"]["holding"] == 2.01
        assert (
            pushes[0]["data"]["balances"]["BTC"]["version"] < pushes[1]["data"]["balances"]["BTC"]["version"]
        )
    stranger = Credentials(
        "woox", creds.account_id, "c3RyYW5nZXIta2V5LTAwMQ==", "STRANGERSECRET0000000000000"
    )
    async with sim_http.ws_connect(private_url(sim, creds.account_id)) as ws:
        assert (await ask(ws, {"event": "auth", "params": auth_params(stranger)}))["success"] is False
        assert await closed(ws)
    assert counters(sim)["auth_failures_by_reason"] == {"unknown_key": 1}


async def test_private_stream_pings_and_drops_a_client_that_never_pongs(
    sim_factory: SimFactory, sim_http: aiohttp.ClientSession
) -> None:
    sim = await sim_factory("woox", stream=StreamSettings(ping_interval=0.02, max_missed_pongs=2))
    assert sim.demo_credentials is not None
    async with sim_http.ws_connect(private_url(sim, sim.demo_credentials.account_id)) as mute:
        pings = 0
        while (message := await asyncio.wait_for(mute.receive(), 5)).type == aiohttp.WSMsgType.TEXT:
            assert orjson.loads(message.data)["event"] == "ping"
            pings += 1
        assert message.type == aiohttp.WSMsgType.CLOSE and pings == 2
    await wait_until(lambda: counters(sim)["closed"] == {"missed_pongs": 1})


def test_help_documents_the_streams_and_their_options_reach_the_simulator(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for needle in ("/ws/stream/{id}", "/v2/ws/private/stream/{id}", "Auth is needed.", "auth failed"):
        assert needle in text
    assert "--stream-ping-interval" in text and "executionreport" in text
    args = build_parser().parse_args(["--stream-ping-interval", "0.5", "--stream-max-connections", "3"])
    assert stream_settings(args) == StreamSettings(ping_interval=0.5, max_connections_per_id=3)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--stream-queue-limit", "0"])
    assert "must be above 0" in capsys.readouterr().err


async def test_the_banner_config_drives_ccxt_pro_and_stream_options_apply() -> None:
    """`seawall simulate` as a process: the ccxt config it prints reaches both REST and the private
    stream, and --stream-* options land in the running simulator."""
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "proxy", "simulate", "--port", "0", "--profile", "woox"),
        *("--stream-max-connections", "3", "--stream-ping-interval", "7.5"),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        banner: list[str] = []
        while not banner or not banner[-1].startswith("Press Ctrl+C"):
            line = await asyncio.wait_for(process.stdout.readline(), timeout=15)
            assert line, "the simulator exited early"
            banner.append(line.decode().strip())
        base_url = banner[0].rsplit(" ", 1)[1]
        ws_base = base_url.replace("http://", "ws://")
        streams = next(line for line in banner if line.startswith("Streams:"))
        public, private = f"{ws_base}/ws/stream/{{id}}", f"{ws_base}/v2/ws/private/stream/{{id}}"
        assert streams == f"Streams: {public} (public), {private} (private)"
        config = json.loads(next(line for line in banner if line.startswith("ccxt:")).split("(", 1)[1][:-1])
        async with aiohttp.ClientSession() as session:
            async with session.get(base_url + "/__sim/info") as answer:
                stream = (await answer.json())["stream"]
            assert (stream["max_connections_per_id"], stream["ping_interval"]) == (3, 7.5)

            async def subscriptions() -> Any:
                async with session.get(base_url + "/__sim/counters") as answer:
                    return (await answer.json())["private_stream"]["subscriptions_by_topic"]

            client = ccxtpro.woo(config)
            try:
                await client.load_markets()
                watching = asyncio.ensure_future(client.watch_orders("BTC/USDT"))
                await wait_until_async(subscriptions)
                placed = await client.create_order("BTC/USDT", "limit", "sell", 0.01, 61000.0)
                (seen,) = await asyncio.wait_for(watching, 5)
                assert (seen["id"], seen["status"]) == (placed["id"], "open")
            finally:
                await client.close()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
