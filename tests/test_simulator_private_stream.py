"""The simulator's private WebSocket through real ccxt.pro `woo` / `woofipro`: `watch_orders`,
`watch_my_trades`, `watch_balance`, `watch_positions` while ccxt places over REST, a refused signature,
and `seawall simulate`'s stream options and banner. The protocol's edges: test_simulator_private_protocol.py.

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
import pytest
from fixtures_proxy import wait_until, wait_until_async
from fixtures_simulator import SimFactory

from proxy.simulator import Simulator, StreamSettings
from proxy.simulator.cli import build_parser, main
from proxy.simulator.cli_stream import stream_settings
from proxy.simulator.signing import generate_orderly_keypair

# profile -> (ccxt.pro class, spot-or-perp symbol, its id, a resting BUY price, client id, quote, perp)
CASES = {
    "orderly": ("woofipro", "ETH/USDC:USDC", "PERP_ETH_USDC", 2900.0, "cid-7", "USDC", "ETH/USDC:USDC"),
    "woox": ("woo", "BTC/USDT", "SPOT_BTC_USDT", 59000.0, "4242", "USDT", "BTC/USDT:USDT"),
}
PERP_IDS = {"ETH/USDC:USDC": "PERP_ETH_USDC", "BTC/USDT:USDT": "PERP_BTC_USDT"}


def counters(sim: Simulator) -> dict[str, Any]:
    private: dict[str, Any] = sim.snapshot()["private_stream"]
    return private


async def subscribed(sim: Simulator, *topics: str) -> None:
    await wait_until(lambda: all(counters(sim)["subscriptions_by_topic"].get(t) for t in topics))


def ccxt_order(client: Any, order_id: str) -> dict[str, Any] | None:
    """The order as ccxt.pro parsed it from the stream (its cache holds each order's latest push)."""
    return next((o for o in (client.orders or []) if o["id"] == order_id), None)


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
    sim.fill_order(order_id=int(resting["id"]))  # as POST /__sim/orders/fill: the resting order is maker
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


async def test_a_bad_signature_is_refused_in_the_exchanges_format(pro: tuple[Any, Simulator]) -> None:
    _, sim = pro
    creds = sim.demo_credentials
    assert creds is not None
    wrong = generate_orderly_keypair().secret if sim.profile == "orderly" else "WRONGSECRET0000000000000000"
    impostor = getattr(ccxtpro, CASES[sim.profile][0])({**creds.ccxt_config(sim.base_url), "secret": wrong})
    try:
        await impostor.load_markets()
        with pytest.raises(ccxt.AuthenticationError) as refused:
            await asyncio.wait_for(impostor.watch_orders(), 5)
    finally:
        await impostor.close()
    answer = json.loads(str(refused.value))  # ccxt quotes the exchange's answer whole
    assert answer == {
        "id": None,
        "event": "auth",
        "success": False,
        "ts": answer["ts"],
        "errorMsg": "auth failed",
    }
    await wait_until(lambda: counters(sim)["connections_open"] == 0)  # refused, then disconnected
    stream = counters(sim)
    assert (stream["auth_failures"], stream["auth_failures_by_reason"], stream["auth_ok"]) == (
        1,
        {"bad_signature": 1},
        0,
    )
    assert stream["closed"] == {"auth_failed": 1} and stream["subscriptions_open"] == 0


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
