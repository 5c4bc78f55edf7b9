"""The documented limits are strict sliding windows, with the exchanges' scopes, and are measured."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest
from fixtures_proxy import wait_until_async
from fixtures_simulator import ManualClock, SignedClient, SimFactory, client_for

from proxy.simulator import Account, Credentials, Simulator
from proxy.simulator.limits import Charge, LimitRule, SlidingWindowLimiter, apply_overrides
from proxy.simulator.signing import generate_orderly_keypair
from proxy.simulator.symbols import resting_order


def order(cid: str | None = None, symbol: str = "PERP_ETH_USDC") -> dict[str, object]:
    return resting_order(cid or None, symbol)


def v3_order(symbol: str, price: int) -> dict[str, object]:
    return {"symbol": symbol, "type": "LIMIT", "side": "BUY", "price": price, "quantity": 0.01}


def test_window_admits_n_refuses_n_plus_1_and_frees_exactly_one_window_later() -> None:
    clock = ManualClock()
    limiter = SlidingWindowLimiter([LimitRule("r", 3, 1.0, "key")], clock)
    charge = [Charge("r", "k")]
    for _ in range(3):
        assert limiter.admit(charge) is None
        clock.advance(0.1)
    assert limiter.admit(charge) is not None  # 4th within the window of the 1st
    clock.advance(0.7 - 1e-6)  # the 1st is now 0.999999 s old: still inside
    assert limiter.admit(charge) is not None
    clock.advance(2e-6)  # the 1st has left the window; only one slot is free
    assert limiter.admit(charge) is None
    assert limiter.admit(charge) is not None
    assert limiter.max_in_window() == {"r": 3}
    assert limiter.rejected() == {"r": 3}


def test_a_bucket_would_allow_2n_but_the_window_never_does() -> None:
    clock = ManualClock()
    limiter = SlidingWindowLimiter([LimitRule("r", 10, 1.0, "key")], clock)
    admitted: list[float] = []
    step = 1 / 128  # exact in binary, so window edges are exact too
    for _ in range(512):  # hammer every ~8 ms for 4 s
        if limiter.admit([Charge("r", "k")]) is None:
            admitted.append(clock())
        clock.advance(step)
    assert all(sum(1 for t in admitted if start - 1.0 < t <= start) <= 10 for start in admitted)
    assert limiter.max_in_window()["r"] == 10
    assert limiter.max_attempted_in_window()["r"] == 128


def test_all_or_none_across_rules_with_cost() -> None:
    clock = ManualClock()
    limiter = SlidingWindowLimiter(
        [LimitRule("batch", 1, 1.0, "key"), LimitRule("create", 10, 1.0, "key")], clock
    )
    assert limiter.admit([Charge("batch", "k"), Charge("create", "k", 8)]) is None
    refused = limiter.admit([Charge("batch", "k"), Charge("create", "k", 1)])
    assert refused is not None and refused.name == "batch"
    assert limiter.in_window("create", "k") == 8  # the refused request took nothing
    assert limiter.admit([Charge("create", "k", 2)]) is None
    assert limiter.admit([Charge("create", "k", 1)]) is not None


def test_overrides_by_rule_name() -> None:
    rules = [LimitRule("a", 10, 1.0, "key"), LimitRule("b", 5, 1.0, "ip")]
    assert [(r.limit, r.window) for r in apply_overrides(rules, {"a": 3, "b": (2, 0.5)})] == [
        (3, 1.0),
        (2, 0.5),
    ]
    with pytest.raises(KeyError):
        apply_overrides(rules, {"nope": 1})


async def test_orderly_create_order_10_per_second(
    orderly_client: SignedClient, orderly_sim: Simulator, sim_clock: ManualClock
) -> None:
    for i in range(10):
        assert (await orderly_client.orderly("POST", "/v1/order", order(f"c{i}"))).status == 200
    refused = await orderly_client.orderly("POST", "/v1/order", order("c10"))
    assert (refused.status, refused.code) == (429, -1003)
    sim_clock.advance(1.0)
    assert (await orderly_client.orderly("POST", "/v1/order", order("c10"))).status == 200
    assert len(orderly_sim.orders()) == 11  # the refused one never reached the book
    counters = (await orderly_client.control("GET", "counters")).json
    assert counters["max_in_window"]["order_create"] == 10
    assert counters["answers_by_code"]["-1003"] == 1


async def test_orderly_cancels_share_one_bucket(orderly_client: SignedClient, sim_clock: ManualClock) -> None:
    ids = []
    for i in range(11):
        placed = await orderly_client.orderly("POST", "/v1/order", order(f"c{i}"))
        ids.append(placed.json["data"]["order_id"])
        sim_clock.advance(0.1)  # placements have their own 10/s bucket
    sim_clock.advance(1.0)
    for oid in ids[:5]:
        assert (
            await orderly_client.orderly("DELETE", f"/v1/order?order_id={oid}&symbol=PERP_ETH_USDC")
        ).status == 200
    for i in range(5, 10):
        answer = await orderly_client.orderly(
            "DELETE", f"/v1/client/order?client_order_id=c{i}&symbol=PERP_ETH_USDC"
        )
        assert answer.status == 200, answer
    refused = await orderly_client.orderly("DELETE", f"/v1/order?order_id={ids[10]}&symbol=PERP_ETH_USDC")
    assert (refused.status, refused.code) == (429, -1003)


async def test_orderly_limits_are_per_key_not_per_account(
    sim_factory: SimFactory, sim_http: aiohttp.ClientSession
) -> None:
    first, second = generate_orderly_keypair(), generate_orderly_keypair()
    account = Account("0xacc", {first.public_key: None, second.public_key: None})
    sim = await sim_factory("orderly", accounts=[account], clock=ManualClock(), limits={"order_create": 2})
    clients = [
        client_for(sim_http, sim, Credentials("orderly", "0xacc", k.public_key, k.secret))
        for k in (first, second)
    ]
    for client in clients:
        for i in range(2):
            assert (
                await client.orderly("POST", "/v1/order", order(f"{client.creds.api_key[-6:]}{i}"))
            ).status == 200
        assert (await client.orderly("POST", "/v1/order", order())).code == -1003


async def test_orderly_batch_counts_each_order_and_is_itself_1_per_second(
    orderly_client: SignedClient,
) -> None:
    batch = {"orders": [order(f"b{i}") for i in range(8)]}
    answer = await orderly_client.orderly("POST", "/v1/batch-order", batch)
    assert answer.status == 200 and len(answer.json["data"]["rows"]) == 8
    assert (await orderly_client.orderly("POST", "/v1/batch-order", {"orders": [order("x")]})).code == -1003
    assert (await orderly_client.orderly("POST", "/v1/order", order("s1"))).status == 200
    assert (await orderly_client.orderly("POST", "/v1/order", order("s2"))).status == 200
    assert (await orderly_client.orderly("POST", "/v1/order", order("s3"))).code == -1003


async def test_orderly_get_orders_and_positions_windows(
    orderly_client: SignedClient, sim_clock: ManualClock
) -> None:
    for _ in range(10):
        assert (await orderly_client.orderly("GET", "/v1/orders")).status == 200
    assert (await orderly_client.orderly("GET", "/v1/orders")).code == -1003
    for _ in range(30):
        assert (await orderly_client.orderly("GET", "/v1/positions")).status == 200
        sim_clock.advance(0.25)  # 30 spread over 7.5 s: still one 10 s window
    assert (await orderly_client.orderly("GET", "/v1/positions")).code == -1003
    sim_clock.advance(2.5)  # now the first is exactly 10 s old: out of the window
    assert (await orderly_client.orderly("GET", "/v1/positions")).status == 200


async def test_public_endpoints_are_limited_per_ip(orderly_client: SignedClient) -> None:
    for _ in range(10):
        assert (await orderly_client.send("GET", "/v1/public/info")).status == 200
    refused = await orderly_client.send("GET", "/v1/public/info")
    assert (refused.status, refused.code) == (429, -1003)


async def test_woox_v3_placement_is_5_per_second_per_symbol(
    woox_client: SignedClient, woox_sim: Simulator
) -> None:
    for _ in range(5):
        assert (
            await woox_client.v3("POST", "/v3/trade/order", v3_order("SPOT_BTC_USDT", 59000))
        ).status == 200
    assert (await woox_client.v3("POST", "/v3/trade/order", v3_order("SPOT_BTC_USDT", 59000))).code == -1003
    assert (await woox_client.v3("POST", "/v3/trade/order", v3_order("SPOT_ETH_USDT", 2950))).status == 200
    assert woox_sim.snapshot()["max_in_window"]["v3_order_create"] == 5


async def test_woox_v1_placement_is_10_per_second_per_symbol(woox_client: SignedClient) -> None:
    params = {
        "symbol": "SPOT_ETH_USDT",
        "order_type": "LIMIT",
        "side": "BUY",
        "order_price": 2950,
        "order_quantity": 0.01,
    }
    for _ in range(10):
        assert (await woox_client.v1("POST", "/v1/order", params)).status == 200
    assert (await woox_client.v1("POST", "/v1/order", params)).code == -1003


async def test_woox_keys_of_one_account_share_its_budget(
    sim_factory: SimFactory, sim_http: aiohttp.ClientSession
) -> None:
    account = Account("main", {"K1": "S1", "K2": "S2"})
    sim = await sim_factory("woox", accounts=[account], clock=ManualClock())
    one = client_for(sim_http, sim, Credentials("woox", "main", "K1", "S1"))
    two = client_for(sim_http, sim, Credentials("woox", "main", "K2", "S2"))
    for client in (one, two, one, two, one):
        assert (await client.v3("POST", "/v3/trade/order", v3_order("SPOT_BTC_USDT", 59000))).status == 200
    assert (await two.v3("POST", "/v3/trade/order", v3_order("SPOT_BTC_USDT", 59000))).code == -1003


async def test_woox_v1_cancels_share_a_bucket(woox_client: SignedClient) -> None:
    for i in range(6):
        answer = await woox_client.v1("DELETE", "/v1/order", {"order_id": 99 + i, "symbol": "SPOT_BTC_USDT"})
        assert answer.code == -1006  # unknown orders, but each still spends budget
    for i in range(4):
        answer = await woox_client.v1(
            "DELETE", "/v1/client/order", {"client_order_id": 7 + i, "symbol": "SPOT_BTC_USDT"}
        )
        assert answer.code == -1006
    refused = await woox_client.v1(
        "DELETE", "/v1/client/order", {"client_order_id": 1, "symbol": "SPOT_BTC_USDT"}
    )
    assert refused.code == -1003


async def test_real_time_window_frees_after_its_length(
    sim_factory: SimFactory, sim_http: aiohttp.ClientSession
) -> None:
    sim = await sim_factory("orderly", limits={"public": (3, 0.2)})
    client = client_for(sim_http, sim)
    started = time.monotonic()
    for _ in range(3):
        assert (await client.send("GET", "/v1/public/info")).status == 200
    assert (await client.send("GET", "/v1/public/info")).code == -1003

    async def served() -> Any:
        answer = await client.send("GET", "/v1/public/info")
        return answer if answer.status != 429 else None

    answer = await wait_until_async(served, timeout=2.0, interval=0.02)  # the window frees
    assert time.monotonic() - started >= 0.2
    assert sim.snapshot()["max_in_window"]["public"] == 3
    assert answer.status == 200
