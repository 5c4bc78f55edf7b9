"""Market data on the wire: answer shapes per dialect, the book's rules, limits, counters, bad queries.

Real signed HTTP against real simulators (tests/fixtures_simulator.py); the manual clock drives the
rate windows, the book's wall clock stays real.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fixtures_simulator import ManualClock, SignedClient

from proxy.simulator import Simulator
from proxy.simulator.candles import Interval
from proxy.simulator.symbols import resting_order


def _ms(*moment: int) -> int:
    return int(datetime(*moment, tzinfo=UTC).timestamp() * 1000)


async def test_orderly_book_and_kline_are_signed_with_their_own_per_key_limits(
    orderly_client: SignedClient, orderly_sim: Simulator, sim_clock: ManualClock
) -> None:
    unsigned = await orderly_client.send("GET", "/v1/orderbook/PERP_ETH_USDC")
    assert (unsigned.status, unsigned.code) == (401, -1002)
    for _ in range(10):
        assert (await orderly_client.orderly("GET", "/v1/orderbook/PERP_ETH_USDC?max_level=3")).status == 200
    refused = await orderly_client.orderly("GET", "/v1/orderbook/PERP_ETH_USDC")
    assert (refused.status, refused.code) == (429, -1003)
    kline = await orderly_client.orderly("GET", "/v1/kline?symbol=PERP_ETH_USDC&type=1m&limit=2")
    assert kline.status == 200 and len(kline.json["data"]["rows"]) == 2  # a budget of its own
    sim_clock.advance(1.0)
    assert (await orderly_client.orderly("GET", "/v1/orderbook/PERP_ETH_USDC")).status == 200
    snapshot = (await orderly_client.control("GET", "counters")).json
    assert snapshot["max_in_window"]["orderbook"] == 10 and snapshot["rejected_by_rule"]["orderbook"] == 1
    assert snapshot["requests_by_route"]["market.orderbook"] == 13
    assert snapshot["requests_by_route"]["market.kline"] == 1
    assert snapshot["requests_by_path"]["/v1/orderbook/PERP_ETH_USDC"] == 13


async def test_public_market_routes_draw_from_the_per_ip_public_budget(woox_client: SignedClient) -> None:
    paths = [
        "/v3/public/orderbook?symbol=SPOT_BTC_USDT",
        "/v3/public/marketTrades?symbol=SPOT_BTC_USDT",
        "/v3/public/klineHistory?symbol=SPOT_BTC_USDT&type=1m",
        "/v3/public/kline?symbol=SPOT_BTC_USDT&type=3m",
        "/v3/public/futures",
        "/v1/public/orderbook/SPOT_BTC_USDT",
        "/v1/orderbook/SPOT_BTC_USDT",
        "/v1/public/kline?symbol=SPOT_BTC_USDT&type=1m",
        "/v1/kline?symbol=SPOT_BTC_USDT&type=1m",
        "/v1/public/market_trades?symbol=SPOT_BTC_USDT",
    ]
    for path in paths:  # unsigned, as a public client sends them
        assert (await woox_client.send("GET", path)).status == 200, path
    refused = await woox_client.send("GET", "/v1/public/futures/PERP_BTC_USDT")
    assert (refused.status, refused.code) == (429, -1003)
    snapshot = (await woox_client.control("GET", "counters")).json
    assert snapshot["max_in_window"]["public"] == 10
    assert {name: n for name, n in snapshot["requests_by_route"].items() if name.startswith("market.")} == {
        "market.orderbook": 3,
        "market.trades": 2,
        "market.kline": 4,
        "market.futures": 2,
    }


async def test_woox_v1_answers_are_flat_with_v1_times(woox_client: SignedClient, woox_sim: Simulator) -> None:
    placed = await woox_client.v1(
        "POST",
        "/v1/order",
        {"symbol": "SPOT_BTC_USDT", "order_type": "MARKET", "side": "SELL", "order_quantity": "0.5"},
    )
    assert placed.status == 200
    (trade,) = (await woox_client.send("GET", "/v1/public/market_trades?symbol=SPOT_BTC_USDT")).json["rows"]
    (filled,) = woox_sim.orders()
    assert trade == {
        "symbol": "SPOT_BTC_USDT",
        "side": "SELL",
        "executed_price": 60000.0,
        "executed_quantity": 0.5,
        "executed_timestamp": f"{filled.updated_ms / 1000:.3f}",
        "source": 1,
    }
    book = (await woox_client.send("GET", "/v1/public/orderbook/SPOT_BTC_USDT?max_level=2")).json
    assert book["success"] is True and isinstance(book["timestamp"], int)
    assert book["bids"] == [{"price": 59994.0, "quantity": 0.0166}, {"price": 59988.0, "quantity": 0.0333}]
    assert book["asks"] == [{"price": 60006.0, "quantity": 0.0166}, {"price": 60012.0, "quantity": 0.0333}]
    alias = (await woox_client.send("GET", "/v1/orderbook/SPOT_BTC_USDT?max_level=2")).json
    assert (alias["bids"], alias["asks"]) == (book["bids"], book["asks"])

    rows = (await woox_client.send("GET", "/v1/public/kline?symbol=SPOT_BTC_USDT&type=1m&limit=2")).json[
        "rows"
    ]
    assert rows[0]["start_timestamp"] - rows[1]["start_timestamp"] == 60_000  # newest first
    assert rows[0]["end_timestamp"] == rows[0]["start_timestamp"] + 60_000
    assert sum(row["volume"] for row in rows) == 0.5 and rows[0]["type"] == "1m"

    futures = (await woox_client.send("GET", "/v1/public/futures")).json
    assert [row["symbol"] for row in futures["rows"]] == ["PERP_BTC_USDT"]  # futures only
    one = (await woox_client.send("GET", "/v1/public/futures/PERP_BTC_USDT")).json
    assert one["info"]["mark_price"] == 60000.0 and one["info"]["24h_volume"] == 0
    spot = await woox_client.send("GET", "/v1/public/futures/SPOT_BTC_USDT")
    assert (spot.status, spot.code) == (400, -1005)


async def test_v3_kline_history_pages_with_before_and_after(woox_client: SignedClient) -> None:
    base = "/v3/public/klineHistory?symbol=PERP_BTC_USDT&type=1m"
    latest = (await woox_client.send("GET", base + "&limit=3")).json["data"]["rows"]
    starts = [row["startTimestamp"] for row in latest]
    assert starts == [starts[0], starts[0] - 60_000, starts[0] - 120_000]
    assert latest[0]["open"] == latest[0]["close"] == "60000" and latest[0]["volume"] == "0"

    older = (await woox_client.send("GET", f"{base}&limit=2&before={starts[1]}")).json["data"]["rows"]
    assert [row["startTimestamp"] for row in older] == [starts[2], starts[2] - 60_000]
    after = starts[2] - 30_000  # mid-bucket: the next bucket start is the first one after it
    newer = (await woox_client.send("GET", f"{base}&limit=2&after={after}")).json["data"]["rows"]
    assert [row["startTimestamp"] for row in newer] == [starts[1], starts[2]]


async def test_hidden_orders_stay_off_the_book_and_a_moved_mid_never_crosses_it(
    orderly_client: SignedClient, orderly_sim: Simulator
) -> None:
    async def book() -> tuple[list[list[float]], list[list[float]]]:
        data = (await orderly_client.orderly("GET", "/v1/orderbook/PERP_ETH_USDC")).json["data"]
        return [[b["price"], b["quantity"]] for b in data["bids"]], [
            [a["price"], a["quantity"]] for a in data["asks"]
        ]

    for order in (
        resting_order("hidden", order_price=2950, visible_quantity=0),
        resting_order("iceberg", order_price=2940, order_quantity=0.05, visible_quantity=0.02),
    ):
        assert (await orderly_client.orderly("POST", "/v1/order", order)).status == 200
    bids, asks = await book()
    assert 2950 not in [price for price, _ in bids]
    assert [2940, 0.02] in bids

    orderly_sim.set_mid("PERP_ETH_USDC", 2900)  # the resting bids are now above the mid
    bids, asks = await book()
    assert bids[0] == [2940, 0.02] and asks[0][0] > 2940
    assert all(price < 2900 for price, _ in bids[1:]) and all(price > 2900 for price, _ in asks)


@pytest.mark.parametrize(
    ("target", "private"),
    [
        ("/v1/kline?symbol=PERP_DOGE_USDC&type=1m", True),
        ("/v1/kline?type=1m", True),
        ("/v1/kline?symbol=PERP_ETH_USDC&type=2m", True),
        ("/v1/kline?symbol=PERP_ETH_USDC&type=1m&limit=0", True),
        ("/v1/orderbook/PERP_ETH_USDC?max_level=abc", True),
        ("/v1/public/market_trades?symbol=", False),
        ("/v1/public/futures/PERP_DOGE_USDC", False),
    ],
)
async def test_bad_market_queries_get_the_exchanges_error(
    orderly_client: SignedClient, target: str, private: bool
) -> None:
    answer = await (orderly_client.orderly("GET", target) if private else orderly_client.send("GET", target))
    assert (answer.status, answer.code) == (400, -1005)
    assert answer.json["success"] is False and answer.json["message"]


async def test_v3_kline_cursors_must_be_times(woox_client: SignedClient) -> None:
    for cursor in ("before=-5", "after=99999999999999999", "before=soon"):
        answer = await woox_client.send(
            "GET", f"/v3/public/klineHistory?symbol=SPOT_BTC_USDT&type=1m&{cursor}"
        )
        assert (answer.status, answer.code) == (400, -1005), cursor


def test_intervals_follow_the_calendar() -> None:
    thursday = _ms(2026, 11, 26, 15, 21)
    assert Interval("1w").start(thursday) == _ms(2026, 11, 23)  # weeks start on Monday
    assert Interval("4h").start(thursday) == _ms(2026, 11, 26, 12)
    month = Interval("1mon")
    assert month.start(thursday) == _ms(2026, 11, 1)
    assert month.shift(_ms(2026, 1, 1), -1) == _ms(2025, 12, 1)
    assert month.shift(_ms(2026, 11, 1), 2) == _ms(2027, 1, 1)
    assert Interval("1y").start(thursday) == _ms(2026, 1, 1)
    assert Interval("1y").shift(_ms(2026, 1, 1), 1) == _ms(2027, 1, 1)
