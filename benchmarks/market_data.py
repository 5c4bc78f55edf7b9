"""Market data for a fleet: bots polling the same public endpoint, straight to the exchange and through
Seawall (coalescing and micro-cache, the shipped profile's cache rules).

The simulator (`seawall simulate`, its own process, the exchange's per-IP public budget: 10 per 1 s)
sits behind Seawall (`seawall run`, its own process, the shipped profile). Bots are clients on their own
keep-alive connections in this process, each asking again as soon as its answer comes.

1. The bar: --bots bots poll the instrument list (`GET /v1/public/info`, kept 30 s) for --seconds, both
   profiles, straight and through Seawall: share of requests answered 200 with data (bar: >= 99 %),
   -1003 answers from the exchange (bar: 0), the most the exchange saw in one 1 s window (bar: <= 10).
2. Upstream calls per bot request vs bots (1, 10, 100) for --sweep-seconds each, through Seawall, for a
   kept route (the instrument list) and a route that is only coalesced (Orderly: the tickers,
   `/v1/public/futures`; WOO X: the order book, `/v3/public/orderbook`). Straight, that ratio is 1.

A fresh Seawall and a reset simulator for every measurement, so none starts with a warm cache.

    python benchmarks/market_data.py [--seconds 8] [--bots 20] [--sweep-seconds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.harness import ROOT, free_port, start_seawall, wait_ready  # noqa: E402
from proxy.runtime import run_event_loop  # noqa: E402

INFO = "/v1/public/info"
COALESCED_ONLY = {
    "orderly": ("market.ticker", "/v1/public/futures"),
    "woox": ("market.orderbook", "/v3/public/orderbook?symbol=SPOT_BTC_USDT"),
}
PUBLIC_LIMIT = 10  # per IP per 1 s, both exchanges (the simulator's `public` rule)


@dataclass
class Run:
    requests: int = 0
    with_data: int = 0
    upstream_calls: int = 0
    upstream_1003: int = 0
    max_in_window: int = 0
    seconds: float = 0.0

    @property
    def data_share(self) -> float:
        return self.with_data / self.requests if self.requests else 0.0

    @property
    def calls_per_request(self) -> float:
        return self.upstream_calls / self.requests if self.requests else 0.0


def http(method: str, url: str) -> Any:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(request, timeout=5) as answer:
        return orjson.loads(answer.read())


async def poll(url: str, bots: int, seconds: float, run: Run) -> int:
    """Fill `run` with what `bots` bots got from `url` in `seconds`."""
    stop_at = time.monotonic() + seconds

    async def bot(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < stop_at:
            try:
                async with session.get(url) as answer:
                    body = await answer.read()
                    status = answer.status
            except (aiohttp.ClientError, TimeoutError):
                run.requests += 1
                continue
            run.requests += 1
            if status == 200 and orjson.loads(body).get("success") is True:
                run.with_data += 1

    started = time.monotonic()
    sessions = [
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1), timeout=aiohttp.ClientTimeout(total=10)
        )
        for _ in range(bots)
    ]
    try:
        await asyncio.gather(*(bot(session) for session in sessions))
    finally:
        for session in sessions:
            await session.close()
    run.seconds = time.monotonic() - started
    return 0


def measure(sim_url: str, target_url: str, path: str, bots: int, seconds: float) -> Run:
    http("POST", sim_url + "/__sim/reset")
    run = Run()
    run_event_loop(lambda: poll(target_url + path, bots, seconds, run))
    counters = http("GET", sim_url + "/__sim/counters")
    run.upstream_calls = int(counters["requests_by_path"].get(path.split("?")[0], 0))
    run.upstream_1003 = int(counters["answers_by_code"].get("-1003", 0))
    run.max_in_window = int(counters["max_in_window"].get("public", 0))
    return run


class Seawall:
    """`seawall run` with the shipped profile in front of the simulator, started fresh for each use."""

    def __init__(self, profile: str, sim_url: str, config_dir: Path, cache: bool = True) -> None:
        self.config = config_dir / f"{profile}-{'cache' if cache else 'nocache'}.yaml"
        self.config.write_text(
            f"profile: {profile}\nlogging: {{level: warning, request_level: off}}\n"
            f"cache: {{enabled: {'true' if cache else 'false'}}}\n"
        )
        self.sim_url = sim_url

    def __enter__(self) -> str:
        proxy_port, admin_port = free_port(), free_port()
        self.process = start_seawall(self.config, self.sim_url, proxy_port, admin_port)
        wait_ready(f"http://127.0.0.1:{admin_port}/healthz")
        return f"http://127.0.0.1:{proxy_port}"

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)


def start_simulator(profile: str, port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy", "simulate", "--profile", profile, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        cwd=ROOT,
    )
    wait_ready(f"http://127.0.0.1:{port}/__sim/counters")
    return process


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--bots", type=int, default=20)
    parser.add_argument("--sweep-seconds", type=float, default=4.0)
    parser.add_argument("--profiles", nargs="+", default=["orderly", "woox"])
    args = parser.parse_args()

    bar: list[str] = []
    sweep: list[str] = []
    with tempfile.TemporaryDirectory() as config_dir:
        for profile in args.profiles:
            port = free_port()
            sim = start_simulator(profile, port)
            sim_url = f"http://127.0.0.1:{port}"
            try:
                straight = measure(sim_url, sim_url, INFO, args.bots, args.seconds)
                with Seawall(profile, sim_url, Path(config_dir), cache=False) as seawall_url:
                    uncached = measure(sim_url, seawall_url, INFO, args.bots, args.seconds)
                with Seawall(profile, sim_url, Path(config_dir)) as seawall_url:
                    through = measure(sim_url, seawall_url, INFO, args.bots, args.seconds)
                runs = (("straight", straight), ("Seawall, cache off", uncached), ("Seawall", through))
                for label, run in runs:
                    met = run.data_share >= 0.99 and run.upstream_1003 == 0
                    met = met and run.max_in_window <= PUBLIC_LIMIT
                    bar.append(
                        f"| {profile} | {label} | {run.requests} | {run.data_share:.2%} "
                        f"| {run.upstream_calls} | {run.upstream_1003} | {run.max_in_window} "
                        f"| {'met' if met else 'not met'} |"
                    )
                    print(bar[-1], flush=True)
                route, book = COALESCED_ONLY[profile]
                for name, path in (("public.info (kept 30 s)", INFO), (f"{route} (coalesced only)", book)):
                    for bots in (1, 10, 100):
                        with Seawall(profile, sim_url, Path(config_dir)) as seawall_url:
                            run = measure(sim_url, seawall_url, path, bots, args.sweep_seconds)
                        sweep.append(
                            f"| {profile} | {name} | {bots} | {run.requests} | {run.upstream_calls} "
                            f"| {run.calls_per_request:.5f} | {run.data_share:.2%} | {run.upstream_1003} "
                            f"| {run.max_in_window} |"
                        )
                        print(sweep[-1], flush=True)
            finally:
                sim.terminate()
                sim.wait(timeout=20)

    print(f"\nThe bar: {args.bots} bots polling {INFO} for {args.seconds:g} s")
    print(
        "| profile | to | bot requests | answered with data | upstream calls | upstream -1003 "
        "| most in a 1 s window | bar |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(bar))
    print(f"\nUpstream calls per bot request, through Seawall, {args.sweep_seconds:g} s each")
    print(
        "| profile | route | bots | bot requests | upstream calls | calls per request | answered with data "
        "| upstream -1003 | most in a 1 s window |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(sweep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
