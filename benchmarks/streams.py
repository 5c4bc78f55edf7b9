"""Streams for a fleet: bots on the same public topics, straight to the exchange and through Seawall.

1. Upstream connections and subscriptions vs bots (1, 10, 100), both profiles: every bot subscribes to
   one order book (`@orderbook`) and one trade topic (`@trade`) of the simulator (`seawall simulate`, its
   own process), straight and through Seawall (`seawall run`, its own process, the shipped profile); the
   simulator's stream counters say what the exchange carried. Every bot must get its first book.
2. The latency a fan-out adds: a minimal exchange stream (this file with --exchange, its own process)
   pushes a ~1 KB frame stamped with the monotonic clock to every subscribed connection, --rate a second
   for --seconds; each bot (in this process, on uvloop) takes the frame's age on arrival. p50 / p99 of
   that age for 1, 10 and 100 bots straight and through Seawall; the difference is what Seawall adds.
   The clock is CLOCK_MONOTONIC, shared by the processes of one host.

    python benchmarks/streams.py [--seconds 10] [--rate 50]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.harness import ROOT, free_port, start_seawall, wait_ready  # noqa: E402
from proxy.runtime import run_event_loop  # noqa: E402

BOOKS = {"orderly": "PERP_ETH_USDC", "woox": "SPOT_BTC_USDT"}
BENCH_TOPIC = "BENCH@orderbookupdate"
BOT_COUNTS = (1, 10, 100)


# -- the minimal exchange (part 2) -----------------------------------------------------------------


async def serve_exchange(port: int, rate: float) -> None:
    from aiohttp import web

    subscribed: set[web.WebSocketResponse] = set()
    levels = [[60000.0 + i, 1.0 + i / 10] for i in range(25)]

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        try:
            async for message in ws:
                command = orjson.loads(message.data)
                event, request_id = command.get("event"), command.get("id")
                if event == "subscribe":
                    subscribed.add(ws)
                    answer = {"id": request_id, "event": "subscribe", "success": True, "ts": 1}
                    await ws.send_str(orjson.dumps(answer).decode())
                elif event == "ping":
                    await ws.send_str('{"event":"pong","ts":1}')
        finally:
            subscribed.discard(ws)
        return ws

    async def push() -> None:
        interval = 1 / rate
        while True:
            await asyncio.sleep(interval)
            frame = {
                "topic": BENCH_TOPIC,
                "ts": time.monotonic_ns(),
                "data": {"symbol": "BENCH", "bids": levels, "asks": levels},
            }
            text = orjson.dumps(frame).decode()
            for ws in list(subscribed):
                if not ws.closed:
                    await ws.send_str(text)

    app = web.Application()
    app.router.add_get("/ws/stream/{id}", handle)
    app.router.add_get("/ready", lambda request: web.Response(text="ok"))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await push()


# -- bots -----------------------------------------------------------------------------------------


async def bots_on_topics(base: str, bots: int, topics: list[str], counters_url: str) -> tuple[int, int, int]:
    """Connect `bots` bots and subscribe each to `topics`. Returns how many got a push of the first
    topic, and the exchange's open stream connections and subscriptions while they were all connected."""
    async with aiohttp.ClientSession() as session:
        sockets = [await session.ws_connect(f"{base}/ws/stream/bot{n}") for n in range(bots)]
        for ws in sockets:
            for index, topic in enumerate(topics):
                await ws.send_json({"id": index, "event": "subscribe", "topic": topic})

        async def first_push(ws: aiohttp.ClientWebSocketResponse) -> bool:
            while True:
                message = orjson.loads((await ws.receive()).data)
                if message.get("topic") == topics[0]:
                    return True

        results = await asyncio.wait_for(
            asyncio.gather(*(first_push(ws) for ws in sockets), return_exceptions=True), 30
        )
        counters = http("GET", counters_url)["stream"]
        for ws in sockets:
            await ws.close()
    got = sum(1 for result in results if result is True)
    return got, counters["connections_open"], counters["subscriptions_open"]


async def frame_ages(base: str, bots: int, seconds: float, warmup: float = 1.0) -> list[float]:
    """Ages (ms) of every frame every bot got after the warm-up."""
    ages: list[float] = []
    async with aiohttp.ClientSession() as session:
        sockets = [await session.ws_connect(f"{base}/ws/stream/bot{n}") for n in range(bots)]
        for ws in sockets:
            await ws.send_json({"id": 1, "event": "subscribe", "topic": BENCH_TOPIC})
        start = time.monotonic()
        stop_at = start + warmup + seconds

        async def read(ws: aiohttp.ClientWebSocketResponse) -> None:
            while time.monotonic() < stop_at:
                try:
                    message = await ws.receive(timeout=max(0.01, stop_at - time.monotonic()))
                except TimeoutError:
                    return
                arrived = time.monotonic_ns()
                if message.type != aiohttp.WSMsgType.TEXT:
                    return
                frame = orjson.loads(message.data)
                if frame.get("topic") == BENCH_TOPIC and time.monotonic() > start + warmup:
                    ages.append((arrived - frame["ts"]) / 1e6)

        await asyncio.gather(*(read(ws) for ws in sockets))
        for ws in sockets:
            await ws.close()
    return ages


# -- harness --------------------------------------------------------------------------------------


def http(method: str, url: str) -> Any:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(request, timeout=5) as answer:
        return orjson.loads(answer.read())


class Seawall:
    def __init__(self, profile: str, upstream: str, config_dir: Path, streams: str = "") -> None:
        self.config = config_dir / f"{profile}-streams.yaml"
        text = f"profile: {profile}\nlogging: {{level: warning, request_level: off}}\n"
        self.config.write_text(text + (f"streams: {{{streams}}}\n" if streams else ""))
        self.upstream = upstream

    def __enter__(self) -> str:
        proxy_port, admin_port = free_port(), free_port()
        self.process = start_seawall(self.config, self.upstream, proxy_port, admin_port)
        wait_ready(f"http://127.0.0.1:{admin_port}/healthz")
        return f"ws://127.0.0.1:{proxy_port}"

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)


def start_process(command: list[str], ready: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, cwd=ROOT)
    wait_ready(ready)
    return process


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def connections(profiles: list[str], config_dir: Path) -> list[str]:
    rows = []
    for profile in profiles:
        port = free_port()
        sim = start_process(
            [sys.executable, "-m", "proxy", "simulate", "--profile", profile, "--port", str(port)],
            f"http://127.0.0.1:{port}/__sim/counters",
        )
        sim_url = f"http://127.0.0.1:{port}"
        counters_url = sim_url + "/__sim/counters"
        topics = [f"{BOOKS[profile]}@orderbook", f"{BOOKS[profile]}@trade"]
        try:
            for bots in BOT_COUNTS:
                http("POST", sim_url + "/__sim/reset")
                direct = f"ws://127.0.0.1:{port}"
                straight = run_event_loop(partial(bots_on_topics, direct, bots, topics, counters_url))
                http("POST", sim_url + "/__sim/reset")
                with Seawall(profile, sim_url, config_dir) as seawall_url:
                    through = run_event_loop(partial(bots_on_topics, seawall_url, bots, topics, counters_url))
                for label, (got, opened, subscriptions) in (("straight", straight), ("Seawall", through)):
                    rows.append(
                        f"| {profile} | {bots} | {label} | {opened} | {subscriptions} | {got}/{bots} |"
                    )
                    print(rows[-1], flush=True)
        finally:
            sim.terminate()
            sim.wait(timeout=20)
    return rows


def latency(seconds: float, rate: float, config_dir: Path) -> list[str]:
    rows = []
    port = free_port()
    exchange = start_process(
        [sys.executable, str(Path(__file__).resolve()), "--exchange", str(port), "--rate", str(rate)],
        f"http://127.0.0.1:{port}/ready",
    )
    try:
        streams = f"public_url: 'ws://127.0.0.1:{port}'"
        with Seawall("orderly", "http://127.0.0.1:9", config_dir, streams) as seawall_url:
            for bots in BOT_COUNTS:
                straight = run_event_loop(partial(frame_ages, f"ws://127.0.0.1:{port}", bots, seconds))
                through = run_event_loop(partial(frame_ages, seawall_url, bots, seconds))
                cells = []
                for ages in (straight, through):
                    cells += [statistics.median(ages), percentile(ages, 0.99)]
                added = (cells[2] - cells[0], cells[3] - cells[1])
                rows.append(
                    f"| {bots} | {len(straight)} | {cells[0]:.2f} | {cells[1]:.2f} | {len(through)} "
                    f"| {cells[2]:.2f} | {cells[3]:.2f} | {added[0]:+.2f} | {added[1]:+.2f} |"
                )
                print(rows[-1], flush=True)
    finally:
        exchange.terminate()
        exchange.wait(timeout=20)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=50.0, help="pushes per second (part 2)")
    parser.add_argument("--profiles", nargs="+", default=["orderly", "woox"])
    parser.add_argument("--exchange", type=int, help=argparse.SUPPRESS)  # run as the minimal exchange
    args = parser.parse_args()
    if args.exchange:
        run_event_loop(lambda: serve_exchange(args.exchange, args.rate))
        return 0
    with tempfile.TemporaryDirectory() as config_dir:
        table = connections(args.profiles, Path(config_dir))
        ages = latency(args.seconds, args.rate, Path(config_dir))
    print("\nUpstream connections and subscriptions vs bots (each bot: one book and one trade topic)")
    print("| profile | bots | to | exchange connections | exchange subscriptions | bots that got the book |")
    print("|---|---|---|---|---|---|")
    print("\n".join(table))
    print(f"\nAge of a pushed frame on arrival, ms ({args.rate:g} pushes/s for {args.seconds:g} s)")
    print(
        "| bots | frames straight | p50 | p99 | frames through Seawall | p50 | p99 | added p50 | added p99 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(ages))
    return 0


if __name__ == "__main__":
    sys.exit(main())
