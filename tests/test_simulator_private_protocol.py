"""The simulator's private WebSocket on a raw socket: auth (body and Orderly's URL query), topics and
the symbol filter, exact payloads, account isolation, pings. What ccxt.pro sees of it:
test_simulator_private_stream.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import yarl
from fixtures_proxy import wait_until
from fixtures_simulator import SimFactory, client_for

from proxy.simulator import Credentials, Simulator, StreamSettings, generate_account
from proxy.simulator.signing import now_ms, orderly_signature, woox_v1_signature
from proxy.simulator.symbols import resting_order


def private_url(sim: Simulator, stream_id: str) -> str:
    return f"ws://127.0.0.1:{sim.port}/v2/ws/private/stream/{stream_id}"


def auth_params(creds: Credentials, ts: int | None = None) -> dict[str, Any]:
    """What ccxt.pro sends: Orderly ed25519 over the timestamp (standard base64), WOO X HMAC over "|ts"."""
    stamp = now_ms() if ts is None else ts
    if creds.profile == "orderly":
        sign = orderly_signature(creds.secret, str(stamp).encode(), standard_base64=True)
        return {"orderly_key": creds.api_key, "sign": sign, "timestamp": stamp}
    return {
        "apikey": creds.api_key,
        "sign": woox_v1_signature(creds.secret, "", stamp),
        "timestamp": stamp,
    }


def counters(sim: Simulator) -> dict[str, Any]:
    private: dict[str, Any] = sim.snapshot()["private_stream"]
    return private


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


async def test_orderly_protocol_on_a_raw_socket(
    sim_factory: SimFactory, sim_http: aiohttp.ClientSession
) -> None:
    sim = await sim_factory("orderly")
    creds = sim.demo_credentials
    assert creds is not None
    assert sim.info()["private_stream"] == {
        "path": "/v2/ws/private/stream/{id}",
        "topics": ["executionreport", "balance", "position", "algoexecutionreport"],
    }
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
    # A refused URL auth is answered the same way, unasked, and disconnected.
    stale_url = yarl.URL(private_url(sim, alice.account_id)).with_query({k: str(v) for k, v in stale.items()})
    async with sim_http.ws_connect(stale_url) as ws:
        refusal = await asyncio.wait_for(ws.receive_json(), 5)
        assert (refusal["event"], refusal["success"], refusal["errorMsg"]) == ("auth", False, "auth failed")
        assert await closed(ws)
    assert counters(sim)["auth_failures_by_reason"] == {"other_account": 1, "stale_timestamp": 2}


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
