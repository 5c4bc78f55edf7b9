"""`seawall demo`: the simulator, Seawall and a misbehaving bot fleet, on loopback, in about a minute.

The same fleet runs twice — straight to the simulated exchange, then through Seawall — in four acts:
1. re-quote bursts: four bot processes share one key and burst placements past the 10/s limit;
2. blind retries: the exchange accepts some orders but the answers are lost; the bot retries them;
3. an outage: the exchange answers -1011 for a few seconds while the bots hammer retries;
4. market data: twenty bots poll the same instruments and tickers, far past the per-IP public limit,
   while each holds the public WebSocket stream of the same order book and ticker.
Live progress is printed while it runs; a side-by-side table ends it. Nothing is left running.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from proxy.app import Seawall
from proxy.config_loader import build_config
from proxy.demo.bots import Bot, Tally, blind_retries, hammer_through_outage, requote_bursts, ticker
from proxy.demo.market import market_data
from proxy.demo.report import PhaseResult, render
from proxy.simulator.server import Simulator

PLACEMENT_LIMIT = 10  # Orderly: POST /v1/order 10 per second per key
MARKET_BOTS = 20


def _seawall_config(upstream: str) -> Any:
    return build_config(
        {
            "profile": "orderly",
            "upstream": {"url": upstream, "timeout": 2.0, "connect_timeout": 1.0},
            "listen": "127.0.0.1:0",
            "admin_listen": "127.0.0.1:0",
            "logging": {"level": "warning", "request_level": "off"},
            "breakers": {
                "rules": [
                    {
                        "name": "trading",
                        "routes": ["order.place", "order.cancel", "order.cancel_client"],
                        "failure_threshold": 5,
                        "reset_timeout": 1.0,
                    }
                ]
            },
        },
        env={},
    )


class Progress:
    """One status line a second, so the run is visibly alive."""

    def __init__(self, label: str, tally: Tally, out: Any) -> None:
        self.label, self.tally, self.out = label, tally, out
        self.act = ""
        self.started = time.monotonic()

    async def run(self) -> None:
        while True:
            t = self.tally
            print(
                f"  [{self.label:<8}] {time.monotonic() - self.started:5.1f}s {self.act:<16} "
                f"sent={t.sent:<5} ok={t.ok:<5} exchange-429={t.exchange_429:<4} "
                f"seawall-429={t.local_429:<4} failed={t.failures}",
                file=self.out,
                flush=True,
            )
            await asyncio.sleep(1.0)


async def _act(progress: Progress, name: str, jobs: list[Awaitable[None]]) -> None:
    progress.act = name
    await asyncio.gather(*jobs)


async def run_fleet(label: str, sim: Simulator, base_url: str, scale: float, out: Any) -> PhaseResult:
    creds = sim.demo_credentials
    assert creds is not None
    tally = Tally()
    make: Callable[[], Bot] = lambda: Bot(base_url, creds.account_id, creds.secret, tally)  # noqa: E731
    bots = [make() for _ in range(5)]
    progress = Progress(label, tally, out)
    reporter = asyncio.ensure_future(progress.run())
    try:
        # Act 1: four processes sharing one key re-quote in bursts, far past the placement limit.
        burst_seconds = 8 * scale
        before = sim.snapshot()
        start = time.monotonic()
        stop_at = start + burst_seconds
        await _act(progress, "re-quote bursts", [requote_bursts(bot, stop_at) for bot in bots[:4]])
        elapsed = time.monotonic() - start
        placed = _accepted(sim) - _accepted_from(before)
        # The most a strict sliding window lets through in `elapsed`: the limit in each started window.
        budget_used = placed / (PLACEMENT_LIMIT * math.ceil(elapsed))
        max_in_window = sim.snapshot()["max_in_window"].get("order_create", 0)

        # Act 2: the exchange takes some orders but the answers never arrive; the bot retries blindly.
        # A light public poller runs meanwhile: its latency shows what Seawall adds to a request.
        sim.add_fault({"kind": "lose_answer", "paths": ["/v1/order"], "methods": ["POST"], "count": 4})
        tally.latencies.clear()
        stop_at = time.monotonic() + 5 * scale
        await _act(progress, "blind retries", [blind_retries(bots[0], stop_at), ticker(bots[4], stop_at)])
        latency = tally.median_latency_ms()
        sim.clear_faults()
        duplicates = sum(max(0, row["count"] - 1) for row in sim.snapshot()["orders_accepted"])

        # Act 3: a -1011 storm; every bot hammers its placement every 50 ms without back-off.
        storm_seconds = 4 * scale
        reached_before = sim.counters.requests_by_route["order.place"]
        local_before = tally.local_answers.get("circuit-open", 0)
        sim.add_fault({"kind": "error", "code": -1011, "paths": ["/v1/order"], "duration": storm_seconds})
        await _act(
            progress,
            "-1011 outage",
            [hammer_through_outage(bot, time.monotonic() + storm_seconds) for bot in bots[:4]],
        )
        reached = sim.counters.requests_by_route["order.place"] - reached_before
        local = tally.local_answers.get("circuit-open", 0) - local_before
        sim.clear_faults()

        # Act 4: a fleet polls the same instruments and tickers as fast as answers come (own tally)
        # and streams the same book and ticker.
        progress.tally = market_tally = Tally()
        progress.act = "market data"
        market = await market_data(
            sim, base_url, creds.account_id, creds.secret, MARKET_BOTS, 4 * scale, market_tally
        )
        progress.tally = tally
    finally:
        reporter.cancel()
        for bot in bots:
            await bot.close()
    return PhaseResult(
        exchange_429=tally.exchange_429,
        local_429=tally.local_429,
        duplicate_orders=duplicates,
        outage_calls_reaching_exchange=reached,
        outage_calls_answered_locally=local,
        budget_used=budget_used,
        max_in_window=max_in_window,
        median_latency_ms=latency,
        market=market,
    )


def _accepted(sim: Simulator) -> int:
    return int(sim.snapshot()["orders_accepted_total"])


def _accepted_from(snapshot: dict[str, Any]) -> int:
    return int(snapshot["orders_accepted_total"])


async def demo(scale: float, out: Any) -> int:
    sim = Simulator("orderly")
    await sim.start()
    seawall: Seawall | None = None
    try:
        print(f"exchange simulator (orderly) on {sim.base_url}", file=out)
        print("\n1/2  the bot fleet straight to the exchange", file=out, flush=True)
        straight = await run_fleet("straight", sim, sim.base_url, scale, out)
        sim.reset()
        seawall = Seawall(_seawall_config(sim.base_url))
        await seawall.start()
        print(f"\n2/2  the same fleet through Seawall on {seawall.proxy_url}", file=out, flush=True)
        through = await run_fleet("seawall", sim, seawall.proxy_url, scale, out)
        built = {policy.name for policy in seawall.policies}
    finally:
        if seawall is not None:
            await seawall.stop()
        await sim.stop()
    print("\n" + render(straight, through, built, PLACEMENT_LIMIT, 8 * scale) + "\n", file=out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="seawall demo",
        description="Simulator + Seawall + a misbehaving bot fleet on loopback: straight vs through Seawall.",
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="stretch or shrink every act (1.0 = about a minute in all)"
    )
    args = parser.parse_args(argv)
    from proxy.logs import setup_logging
    from proxy.runtime import run_event_loop

    setup_logging("error")  # the table tells the story; policies' warnings would interleave with it

    return run_event_loop(lambda: demo(args.scale, sys.stdout))
