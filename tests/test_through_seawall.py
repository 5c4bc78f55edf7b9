"""Real signed traffic through Seawall to the simulator, which verifies every signature on the raw bytes.

Orderly ed25519 (base64url and padded base64, query signed decoded and sent encoded), WOO X v1 form +
HMAC and v3 JSON + HMAC, and the real ccxt clients with only their base URL pointed at Seawall.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import ccxt.async_support as ccxt
import pytest
from fixtures_proxy import StartSeawall
from fixtures_simulator import SimFactory, client_for

from proxy.simulator.signing import orderly_headers


async def _through(start_seawall: StartSeawall, sim: Any, **overrides: Any) -> str:
    seawall = await start_seawall(sim.profile, sim.base_url, **overrides)
    return seawall.proxy_url


async def test_orderly_signatures_verify_after_the_hop(
    sim_factory: SimFactory, start_seawall: StartSeawall, sim_http: aiohttp.ClientSession
) -> None:
    sim = await sim_factory("orderly")
    client = client_for(sim_http, sim)
    client.base_url = await _through(start_seawall, sim)
    order = {
        "symbol": "PERP_ETH_USDC",
        "order_type": "LIMIT",
        "order_price": 2950,
        "order_quantity": 0.01,
        "side": "BUY",
        "client_order_id": "sig-1",
    }
    placed = await client.orderly("POST", "/v1/order", order)
    assert placed.status == 200, placed
    padded = await client.orderly(
        "GET", "/v1/orders?symbol=PERP_ETH_USDC&status=INCOMPLETE", standard_base64=True
    )
    assert padded.status == 200, padded
    assert [row["client_order_id"] for row in padded.json["data"]["rows"]] == ["sig-1"]
    # ccxt and Orderly's connector sign the query unencoded and send it percent-encoded.
    creds = sim.demo_credentials
    signed_target = "/v1/orders?symbol=PERP_ETH_USDC&status=INCOMPLETE&note=a b,c"
    sent_target = "/v1/orders?symbol=PERP_ETH_USDC&status=INCOMPLETE&note=a%20b%2Cc"
    headers = orderly_headers(creds.account_id, creds.secret, "GET", signed_target)
    encoded = await client.send("GET", sent_target, b"", headers)
    assert encoded.status != 401, encoded
    assert sim.snapshot()["answers_by_code"].get("-1001", 0) == 0


async def test_a_tampered_body_fails_verification_upstream(
    sim_factory: SimFactory, start_seawall: StartSeawall, sim_http: aiohttp.ClientSession
) -> None:
    """The exchange really checks the bytes: the same request with one byte changed is refused."""
    sim = await sim_factory("orderly")
    client = client_for(sim_http, sim)
    client.base_url = await _through(start_seawall, sim)
    body = b'{"symbol":"PERP_ETH_USDC","order_type":"MARKET","order_quantity":0.01,"side":"BUY"}'
    headers = orderly_headers(
        sim.demo_credentials.account_id, sim.demo_credentials.secret, "POST", "/v1/order", body
    )
    tampered = await client.send("POST", "/v1/order", body.replace(b"0.01", b"0.02"), headers)
    assert tampered.status == 401
    assert tampered.code in (-1001, -1002)


async def test_woox_v1_form_and_v3_json_verify_after_the_hop(
    sim_factory: SimFactory, start_seawall: StartSeawall, sim_http: aiohttp.ClientSession
) -> None:
    sim = await sim_factory("woox")
    client = client_for(sim_http, sim)
    client.base_url = await _through(start_seawall, sim)
    v1 = await client.v1(
        "POST",
        "/v1/order",
        {
            "symbol": "SPOT_BTC_USDT",
            "order_type": "LIMIT",
            "order_price": "59000",
            "order_quantity": "0.01",
            "side": "BUY",
            "client_order_id": "11",
        },
    )
    assert v1.status == 200, v1
    assert v1.json["client_order_id"] == 11
    # v3 signs the raw body: spacing a re-serialiser would change must survive the hop.
    body = (
        b'{"symbol": "SPOT_BTC_USDT",  "side": "BUY", "type": "LIMIT", '
        b'"price": "59000", "quantity": "0.01", "clientOrderId": 12}'
    )
    from proxy.simulator.signing import woox_v3_headers

    headers = woox_v3_headers(
        sim.demo_credentials.api_key, sim.demo_credentials.secret, "POST", "/v3/trade/order", body
    )
    v3 = await client.send("POST", "/v3/trade/order", body, headers)
    assert v3.status == 200, v3
    listed = await client.v1("GET", "/v1/orders", {"symbol": "SPOT_BTC_USDT", "status": "INCOMPLETE"})
    assert listed.status == 200, listed
    assert sorted(str(row["client_order_id"]) for row in listed.json["rows"]) == ["11", "12"]
    assert sim.snapshot()["answers_by_status"].get("401", 0) == 0


CASES = {
    "orderly": ("woofipro", "ETH/USDC:USDC", 2900, "via-seawall-1"),
    "woox": ("woo", "BTC/USDT", 59000, "4343"),
}


@pytest.mark.parametrize("profile", sorted(CASES))
async def test_ccxt_works_through_seawall_with_only_the_base_url_changed(
    profile: str, sim_factory: SimFactory, start_seawall: StartSeawall
) -> None:
    sim = await sim_factory(profile)
    proxy_url = await _through(start_seawall, sim)
    name, symbol, price, cid = CASES[profile]
    client = getattr(ccxt, name)(sim.demo_credentials.ccxt_config(proxy_url))
    try:
        markets = await client.load_markets()
        assert symbol in markets
        balance = await client.fetch_balance()
        assert balance["total"]
        created = await client.create_order(symbol, "limit", "buy", 0.01, price, {"clientOrderId": cid})
        # A blind retry of the same placement is answered from Seawall's memory: same order, not a second.
        retried = await client.create_order(symbol, "limit", "buy", 0.01, price, {"clientOrderId": cid})
        assert retried["id"] == created["id"]
        fetched = await client.fetch_order(created["id"], symbol)
        assert (fetched["status"], fetched["clientOrderId"]) == ("open", cid)
        assert [o["id"] for o in await client.fetch_open_orders(symbol)] == [created["id"]]
        cancelled = await client.cancel_order(created["id"], symbol)
        assert cancelled["status"] == "canceled"
        assert await client.fetch_open_orders(symbol) == []
    finally:
        await client.close()
    snapshot = sim.snapshot()
    assert [row["count"] for row in snapshot["orders_accepted"]] == [1]
    assert snapshot["answers_by_status"].get("401", 0) == 0
