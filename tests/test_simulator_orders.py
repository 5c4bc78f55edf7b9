"""Orders: client_order_id semantics, filters, fills, answer shapes, and every table code's cause."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from fixtures_simulator import Answer, SignedClient

from proxy.catalog import default_catalog
from proxy.simulator import Simulator
from proxy.simulator.signing import generate_orderly_keypair, orderly_headers
from proxy.simulator.symbols import resting_order

ETH = "PERP_ETH_USDC"


def order(**fields: Any) -> dict[str, Any]:
    return resting_order(symbol=ETH, **fields)


async def place(client: SignedClient, **fields: Any) -> Answer:
    return await client.orderly("POST", "/v1/order", order(**fields))


async def test_duplicate_open_client_id_is_409_until_the_order_completes(
    orderly_client: SignedClient, orderly_sim: Simulator
) -> None:
    first = await place(orderly_client, client_order_id="bot-1")
    assert first.status == 200 and first.json["data"]["client_order_id"] == "bot-1"
    duplicate = await place(orderly_client, client_order_id="bot-1")
    assert (duplicate.status, duplicate.code) == (409, -1007)
    filled = await orderly_client.control("POST", "orders/fill", {"client_order_id": "bot-1"})
    assert filled.json["order"]["status"] == "FILLED"
    second = await place(orderly_client, client_order_id="bot-1")
    assert second.status == 200
    cancel = await orderly_client.orderly("DELETE", f"/v1/client/order?client_order_id=bot-1&symbol={ETH}")
    assert cancel.json["data"]["status"] == "CANCEL_SENT"
    assert (await place(orderly_client, client_order_id="bot-1")).status == 200
    latest = await orderly_client.orderly("GET", "/v1/client/order/bot-1")
    assert latest.json["data"]["order_id"] > second.json["data"]["order_id"]  # the latest one
    assert orderly_sim.orders_accepted(orderly_client.creds.account_id, "bot-1") == 3
    accepted = orderly_sim.snapshot()["orders_accepted"]
    assert accepted == [
        {"account_id": orderly_client.creds.account_id, "client_order_id": "bot-1", "count": 3}
    ]


async def test_cancelling_unknown_or_completed_orders_is_1006(orderly_client: SignedClient) -> None:
    unknown = await orderly_client.orderly("DELETE", f"/v1/order?order_id=424242&symbol={ETH}")
    assert (unknown.status, unknown.code) == (400, -1006)
    oid = (await place(orderly_client)).json["data"]["order_id"]
    wrong_symbol = await orderly_client.orderly("DELETE", f"/v1/order?order_id={oid}&symbol=PERP_BTC_USDC")
    assert wrong_symbol.code == -1006
    assert (await orderly_client.orderly("DELETE", f"/v1/order?order_id={oid}&symbol={ETH}")).status == 200
    again = await orderly_client.orderly("DELETE", f"/v1/order?order_id={oid}&symbol={ETH}")
    assert again.code == -1006
    crossed = await place(orderly_client, order_price=3010)  # crosses the 3000 mid: filled
    fetched = await orderly_client.orderly("GET", f"/v1/order/{crossed.json['data']['order_id']}")
    assert fetched.json["data"]["status"] == "FILLED"
    done = await orderly_client.orderly(
        "DELETE", f"/v1/order?order_id={crossed.json['data']['order_id']}&symbol={ETH}"
    )
    assert done.code == -1006


@pytest.mark.parametrize(
    ("order_type", "price", "status"),
    [
        ("LIMIT", 2900, "NEW"),
        ("LIMIT", 3050, "FILLED"),
        ("MARKET", None, "FILLED"),
        ("IOC", 3050, "FILLED"),
        ("IOC", 2900, "CANCELLED"),
        ("FOK", 2900, "CANCELLED"),
        ("POST_ONLY", 3050, "CANCELLED"),
        ("POST_ONLY", 2900, "NEW"),
    ],
)
async def test_fill_rules(
    orderly_client: SignedClient, order_type: str, price: int | None, status: str
) -> None:
    placed = await place(orderly_client, order_type=order_type, order_price=price)
    assert placed.status == 200, placed
    fetched = await orderly_client.orderly("GET", f"/v1/order/{placed.json['data']['order_id']}")
    assert fetched.json["data"]["status"] == status


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"order_quantity": 0.002, "order_price": 2900}, -1102),  # 5.8 USDC < 10 min notional
        ({"order_price": 2900.005}, -1103),  # off the 0.01 tick
        ({"order_price": 150000}, -1103),  # above quote_max
        ({"order_quantity": 0.0105}, -1104),  # off the 0.001 step
        ({"order_quantity": 5000}, -1104),  # above base_max
        ({"order_price": 3200}, -1105),  # BUY more than 3% over the mid
        ({"side": "SELL", "order_price": 2800}, -1105),  # SELL more than 3% under the mid
        ({"order_price": 1500}, -1105),  # further than price_scope (40%) from the mid
        ({"order_quantity": 1000}, -1101),  # 3M notional at 10x > 100k collateral
    ],
)
async def test_symbol_filters_and_risk(
    orderly_client: SignedClient, fields: dict[str, Any], code: int
) -> None:
    answer = await place(orderly_client, **fields)
    assert (answer.status, answer.code) == (400, code), answer


async def test_orderly_shapes(orderly_client: SignedClient) -> None:
    placed = await place(orderly_client, client_order_id="shape")
    assert set(placed.json) == {"success", "data", "timestamp"} and isinstance(placed.json["timestamp"], int)
    listed = await orderly_client.orderly("GET", f"/v1/orders?symbol={ETH}&status=INCOMPLETE")
    data = listed.json["data"]
    assert data["meta"]["total"] == 1 and data["rows"][0]["client_order_id"] == "shape"
    holding = await orderly_client.orderly("GET", "/v1/client/holding")
    usdc = holding.json["data"]["holding"][0]
    assert usdc["token"] == "USDC" and usdc["holding"] == 100000 and usdc["frozen"] == pytest.approx(2.9)


async def test_woox_v1_answers_are_flat_with_seconds_strings(woox_client: SignedClient) -> None:
    params = {
        "symbol": "SPOT_BTC_USDT",
        "order_type": "LIMIT",
        "side": "BUY",
        "order_price": 59000,
        "order_quantity": 0.001,
        "client_order_id": 77,
        "broker_id": "tolerated",
    }
    placed = await woox_client.v1("POST", "/v1/order", params)
    assert placed.status == 200, placed
    assert placed.json["client_order_id"] == 77 and "data" not in placed.json
    seconds, _, millis = placed.json["timestamp"].partition(".")
    assert seconds.isdigit() and len(millis) == 3
    by_client = await woox_client.v1("GET", "/v1/client/order/77")
    assert by_client.json["order_id"] == placed.json["order_id"] and by_client.json["status"] == "NEW"
    assert (await woox_client.v1("POST", "/v1/order", params)).code == -1007
    cancel = await woox_client.v1(
        "DELETE", "/v1/client/order", {"client_order_id": 77, "symbol": "SPOT_BTC_USDT"}
    )
    assert cancel.json == {"success": True, "status": "CANCEL_SENT"}
    assert (await woox_client.v1("POST", "/v1/order", {**params, "client_order_id": "abc"})).code == -1005
    assert (await woox_client.v1("POST", "/v1/order", {**params, "bogus": 1})).code == -1004
    holding = await woox_client.v1("GET", "/v1/client/holding")
    assert holding.json["holding"]["USDT"] == 100000


async def test_woox_v3_envelope_and_client_id_zero_means_none(woox_client: SignedClient) -> None:
    body = {
        "symbol": "SPOT_ETH_USDT",
        "type": "LIMIT",
        "side": "SELL",
        "price": 3010,
        "quantity": 0.01,
        "clientOrderId": 0,
        "brokerId": "x",
    }
    for _ in range(2):  # 0 is "no id": never a duplicate
        placed = await woox_client.v3("POST", "/v3/trade/order", body)
        assert placed.status == 200 and set(placed.json) == {"success", "data", "timestamp"}
    got = await woox_client.v3("GET", f"/v3/trade/order?orderId={placed.json['data']['orderId']}")
    assert got.json["data"]["status"] == "NEW" and got.json["data"]["clientOrderId"] == 0


# --- every code of the seed table has a realistic cause --------------------------------------------

Trigger = Callable[[SignedClient, Simulator], Awaitable[Answer]]


async def _bad_signature(c: SignedClient, sim: Simulator) -> Answer:
    headers = orderly_headers(c.creds.account_id, c.creds.secret, "GET", "/v1/client/info", b"")
    return await c.send("GET", "/v1/client/holding", b"", headers)


async def _unknown_key(c: SignedClient, sim: Simulator) -> Answer:
    other = generate_orderly_keypair()
    return await c.send(
        "GET",
        "/v1/client/info",
        b"",
        orderly_headers(c.creds.account_id, other.secret, "GET", "/v1/client/info", b""),
    )


async def _rate_limit(c: SignedClient, sim: Simulator) -> Answer:
    for _ in range(10):
        await c.orderly("GET", "/v1/client/holding")
    return await c.orderly("GET", "/v1/client/holding")


async def _duplicate(c: SignedClient, sim: Simulator) -> Answer:
    await place(c, client_order_id="dup")
    return await place(c, client_order_id="dup")


async def _arrears(c: SignedClient, sim: Simulator) -> Answer:
    sim.set_balance(c.creds.account_id, "USDC", -5)
    return await c.orderly("POST", "/v1/settle_pnl", {})


def _storm(code: int) -> Trigger:
    # -1011 has no cause but an exchange incident: injected, as the proxy will meet it.
    async def trigger(c: SignedClient, sim: Simulator) -> Answer:
        sim.add_fault({"kind": "error", "code": code, "routes": ["order.place"], "count": 1})
        return await place(c)

    return trigger


async def _liquidation(c: SignedClient, sim: Simulator, liquidation_id: int, ratio: float) -> Answer:
    return await c.orderly(
        "POST", "/v1/liquidation", {"liquidation_id": liquidation_id, "ratio_qty_request": ratio}
    )


async def _liquidation_in_process(c: SignedClient, sim: Simulator) -> Answer:
    assert (await _liquidation(c, sim, 2, 0.5)).status == 200
    return await _liquidation(c, sim, 2, 0.5)


TRIGGERS: dict[int, Callable[[SignedClient, Simulator], Awaitable[Answer]]] = {
    -1000: lambda c, s: c.orderly("GET", f"/v1/position/{ETH}"),  # "The data does not exist"
    -1001: _bad_signature,
    -1002: _unknown_key,
    -1003: _rate_limit,
    -1004: lambda c, s: place(c, leverage=20),
    -1005: lambda c, s: place(c, side="LONG"),
    -1006: lambda c, s: c.orderly("DELETE", f"/v1/client/order?client_order_id=nope&symbol={ETH}"),
    -1007: _duplicate,
    -1008: lambda c, s: c.orderly("POST", "/v1/withdraw_request", {"token": "USDC", "amount": 1_000_000}),
    -1009: _arrears,
    -1011: _storm(-1011),
    -1012: _liquidation_in_process,
    -1101: lambda c, s: place(c, order_quantity=1000),
    -1102: lambda c, s: place(c, order_quantity=0.001),
    -1103: lambda c, s: place(c, order_price=2900.001),
    -1104: lambda c, s: place(c, order_quantity=0.0101),
    -1105: lambda c, s: place(c, order_price=3500),
    -1201: lambda c, s: _liquidation(c, s, 1, 0.5),
    -1202: lambda c, s: _liquidation(c, s, 99, 1),
}


@pytest.mark.parametrize("code", default_catalog().codes())
async def test_every_table_code_is_reachable(
    orderly_client: SignedClient, orderly_sim: Simulator, code: int
) -> None:
    trigger = TRIGGERS[code]  # a code added to the table needs a cause here
    answer = await trigger(orderly_client, orderly_sim)
    entry = default_catalog()[code]
    assert (answer.status, answer.code) == (entry.status, code), answer


async def test_another_liquidation_in_process_is_1012(
    orderly_client: SignedClient, orderly_sim: Simulator
) -> None:
    answer = await _liquidation_in_process(orderly_client, orderly_sim)
    assert (answer.status, answer.code) == (400, -1012)
    assert answer.json["message"] == "Another liquidation is in process"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"ratio_qty_request": 1.5}, "ratio_qty_request should be in range 0-1."),
        (
            {"ratio_qty_request": 1, "extra_liquidation_ratio": 2},
            "extra_liquidation_ratio should be in range 0-1.",
        ),
        (
            {"ratio_qty_request": 0.5, "extra_liquidation_ratio": 0.1},
            "if you set extra_liquidation_ratio > 0, ratio_qty_request must be 1.",
        ),
    ],
)
async def test_liquidation_parameter_texts(
    orderly_client: SignedClient, fields: dict[str, Any], message: str
) -> None:
    answer = await orderly_client.orderly("POST", "/v1/liquidation", {"liquidation_id": 2, **fields})
    assert (answer.code, answer.json["message"]) == (-1005, message)


async def test_a_path_the_exchange_does_not_serve_is_a_plain_404(
    orderly_client: SignedClient, orderly_sim: Simulator
) -> None:
    answer = await orderly_client.orderly("GET", "/v1/not/simulated")
    assert answer.status == 404 and "code" not in answer.json
    snapshot = orderly_sim.snapshot()
    assert snapshot["answers_by_status"] == {"404": 1} and snapshot["answers_by_code"] == {}
