"""Injected faults behave like exchange incidents, and the control API drives them over HTTP too."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from fixtures_proxy import wait_until
from fixtures_simulator import ManualClock, SignedClient, SimFactory, client_for

from proxy.simulator import Simulator
from proxy.simulator.symbols import resting_order

ETH = "PERP_ETH_USDC"


def order(cid: str | None = None) -> dict[str, object]:
    return resting_order(cid or None, ETH)


async def test_storm_for_n_requests_answers_the_code_without_touching_the_book(
    orderly_client: SignedClient, orderly_sim: Simulator
) -> None:
    orderly_sim.add_fault({"kind": "error", "code": -1011, "routes": ["order.*"], "count": 3})
    for i in range(3):
        answer = await orderly_client.orderly("POST", "/v1/order", order(f"s{i}"))
        assert (answer.status, answer.code) == (400, -1011)
    assert (await orderly_client.send("GET", "/v1/public/info")).status == 200  # other routes unaffected
    assert orderly_sim.orders() == []
    assert (await orderly_client.orderly("POST", "/v1/order", order("s3"))).status == 200
    assert orderly_sim.snapshot()["answers_by_code"]["-1011"] == 3


async def test_storm_for_t_seconds_with_code_as_string(
    orderly_client: SignedClient, orderly_sim: Simulator, sim_clock: ManualClock
) -> None:
    orderly_sim.add_fault(
        {"kind": "error", "code": -1012, "paths": ["/v1/order"], "duration": 5, "code_as_string": True}
    )
    for _ in range(4):
        answer = await orderly_client.orderly("POST", "/v1/order", order())
        assert answer.json["code"] == "-1012" and answer.status == 400
        sim_clock.advance(1.0)
    sim_clock.advance(1.0)  # 5 s after installation: over
    assert (await orderly_client.orderly("POST", "/v1/order", order())).status == 200


async def test_latency_delays_the_answer(orderly_client: SignedClient, orderly_sim: Simulator) -> None:
    orderly_sim.add_fault({"kind": "latency", "delay": 0.2, "routes": ["public.*"], "count": 1})
    started = time.monotonic()
    assert (await orderly_client.send("GET", "/v1/public/info")).status == 200
    assert time.monotonic() - started >= 0.2
    started = time.monotonic()
    assert (await orderly_client.send("GET", "/v1/public/info")).status == 200
    assert time.monotonic() - started < 0.2


async def test_reset_drops_the_connection_before_anything_happens(
    orderly_client: SignedClient, orderly_sim: Simulator
) -> None:
    orderly_sim.add_fault({"kind": "reset", "routes": ["order.place"], "count": 1})
    with pytest.raises(aiohttp.ClientError):
        await orderly_client.orderly("POST", "/v1/order", order("r1"))
    assert orderly_sim.orders() == []
    assert orderly_sim.snapshot()["dropped"] == {"reset": 1}


async def test_garbage_is_not_json(orderly_client: SignedClient, orderly_sim: Simulator) -> None:
    orderly_sim.add_fault({"kind": "garbage", "count": 1})
    answer = await orderly_client.orderly("GET", "/v1/client/holding")
    assert answer.status == 502 and answer.headers["content-type"].startswith("text/html")
    with pytest.raises(ValueError):
        _ = answer.json
    orderly_sim.add_fault({"kind": "garbage", "count": 1, "status": 200, "body": "not json"})
    answer = await orderly_client.orderly("GET", "/v1/client/holding")
    assert (answer.status, answer.body) == (200, b"not json")


async def test_hang_never_answers_and_stop_still_returns(
    sim_factory: SimFactory, sim_http: aiohttp.ClientSession
) -> None:
    sim = await sim_factory("orderly")
    client = client_for(sim_http, sim)
    sim.add_fault({"kind": "hang", "routes": ["public.info"]})
    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        await client.send("GET", "/v1/public/info", wait=0.3)
    assert 0.3 <= time.monotonic() - started < 2.0
    pending = asyncio.ensure_future(client.send("GET", "/v1/public/info", wait=5.0))
    await wait_until(lambda: sim.counters.dropped["hang"] >= 2, timeout=2.0)  # the second one is held
    started = time.monotonic()
    await sim.stop()
    assert time.monotonic() - started < 2.0
    with pytest.raises(aiohttp.ClientError):
        await pending


@pytest.mark.parametrize("mode", ["reset", "504"])
async def test_lost_answer_still_creates_the_order(
    orderly_client: SignedClient, orderly_sim: Simulator, mode: str
) -> None:
    orderly_sim.add_fault({"kind": "lose_answer", "routes": ["order.place"], "count": 1, "lose_mode": mode})
    if mode == "reset":
        with pytest.raises(aiohttp.ClientError):
            await orderly_client.orderly("POST", "/v1/order", order("lost-1"))
    else:
        answer = await orderly_client.orderly("POST", "/v1/order", order("lost-1"))
        assert (answer.status, answer.body) == (504, b"")
    assert [o.client_order_id for o in orderly_sim.orders()] == ["lost-1"]
    found = await orderly_client.orderly("GET", "/v1/client/order/lost-1")
    assert found.json["data"]["status"] == "NEW"
    retry = await orderly_client.orderly("POST", "/v1/order", order("lost-1"))  # the blind retry
    assert retry.code == -1007


async def test_control_api_over_http(orderly_client: SignedClient, orderly_sim: Simulator) -> None:
    added = await orderly_client.control(
        "POST", "faults", {"kind": "error", "code": -1011, "routes": "order.*"}
    )
    assert added.status == 200
    fault_id = added.json["id"]
    listed = await orderly_client.control("GET", "faults")
    assert [f["id"] for f in listed.json["faults"]] == [fault_id]
    assert (await orderly_client.orderly("POST", "/v1/order", order())).code == -1011
    assert (await orderly_client.control("DELETE", f"faults/{fault_id}")).status == 200
    assert (await orderly_client.control("DELETE", f"faults/{fault_id}")).status == 404
    assert (await orderly_client.control("POST", "faults", {"kind": "flood"})).status == 400
    assert (await orderly_client.control("POST", "faults", {"kind": "error", "when": 1})).status == 400
    placed = await orderly_client.orderly("POST", "/v1/order", order("ctl"))
    assert placed.status == 200
    orders = await orderly_client.control("GET", f"orders?account_id={orderly_client.creds.account_id}")
    assert [o["client_order_id"] for o in orders.json["orders"]] == ["ctl"]
    filled = await orderly_client.control(
        "POST", "orders/fill", {"order_id": placed.json["data"]["order_id"]}
    )
    assert filled.json["order"]["status"] == "FILLED"
    assert (await orderly_client.control("POST", "orders/fill", {"order_id": 1})).status == 404
    assert (await orderly_client.control("POST", "mid", {"symbol": ETH, "price": 2000})).status == 200
    assert (await orderly_client.orderly("POST", "/v1/order", order())).code == -1105  # 2900 vs mid 2000
    counters = (await orderly_client.control("GET", "counters")).json
    assert counters["answers_by_code"]["-1011"] == 1 and counters["orders_accepted_total"] == 1
    assert (await orderly_client.control("POST", "reset")).status == 200
    after = (await orderly_client.control("GET", "counters")).json
    assert after["orders_accepted_total"] == 0 and after["answers_by_code"] == {}
    assert (await orderly_client.orderly("POST", "/v1/order", order())).status == 200  # mid restored
    info = (await orderly_client.control("GET", "info")).json
    assert info["profile"] == "orderly" and {r["name"] for r in info["rules"]} >= {"order_create", "public"}
    assert (await orderly_client.control("GET", "nothing")).status == 404
