"""Shared rate limits on Redis: three Seawall replicas, one budget (`state: redis`).

One `redis-server` (its own process, a private unix socket), the simulator (its own process, strict
sliding windows: Orderly placements 10 per 1 s per key) and three Seawall replicas (three `seawall run`
processes, the shipped orderly profile, `SEAWALL_REDIS_URL` set, `state.redis.replicas: 3`). 50 bots on
ONE key, spread round-robin over the replicas, place orders as fast as answers come back for ~12 s.
Reported: upstream -1003s (must be 0), the most placements the exchange saw attempted in any 1 s window,
goodput as a share of N (bar: >= 0.95). The same run with each replica on its own memory state shows
what sharing prevents. Then the latency a Redis decision adds: the acquire round trip of the Redis state
against the memory state, in one process, on the same redis-server (sequential and 50 at once).

    python benchmarks/replicas_redis.py [--seconds 12] [--clients 50] [--only redis|memory|latency]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from harness import free_port, start_seawall, start_simulator, stop_all, wait_ready  # noqa: E402
from ratelimit_goodput import LIMIT, WINDOW, get, metric  # noqa: E402

from proxy.runtime import run_event_loop  # noqa: E402
from proxy.simulator.signing import generate_orderly_keypair, orderly_headers  # noqa: E402
from proxy.simulator.symbols import resting_order  # noqa: E402

REPLICAS = 3
CONFIG = f"""
profile: orderly
logging: {{level: warning, request_level: off}}
state: {{redis: {{replicas: {REPLICAS}}}}}
"""


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    socket_path = directory / "redis.sock"
    process = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(socket_path), "--unixsocketperm", "700",
         "--save", "", "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while not socket_path.exists():
        if time.monotonic() > deadline:
            raise SystemExit("redis-server did not start")
        time.sleep(0.02)
    return process, f"unix://{socket_path}"


async def fleet(urls: list[str], account: str, secret: str, clients: int, seconds: float) -> dict[str, Any]:
    ids = itertools.count()
    accepted: list[float] = []
    answers: dict[str, int] = {}
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        # aiohttp resends some methods once after a dropped connection: never behind the limiter's back.
        session._retry_connection = False
        stop_at = time.monotonic() + seconds

        async def bot(url: str) -> None:
            while time.monotonic() < stop_at:
                body = orjson.dumps(resting_order(f"r{next(ids)}"))
                headers = orderly_headers(account, secret, "POST", "/v1/order", body)
                async with session.post(url + "/v1/order", data=body, headers=headers) as answer:
                    await answer.read()
                    kind = str(answer.status)
                    if answer.status != 200:  # who refused: a Seawall policy, or the exchange itself
                        kind += "/" + answer.headers.get("X-Seawall", "exchange")
                    answers[kind] = answers.get(kind, 0) + 1
                    if answer.status == 200:
                        accepted.append(time.monotonic())
                    else:
                        await asyncio.sleep(0.05)  # a bot told -1003 backs off a little

        await asyncio.gather(*(bot(urls[i % len(urls)]) for i in range(clients)))
    accepted.sort()  # one slot's consecutive uses are N placements apart: ideally one window
    gaps = [later - earlier for earlier, later in zip(accepted, accepted[LIMIT:], strict=False)]
    return {
        "accepted": len(accepted),
        "goodput": WINDOW / (sum(gaps) / len(gaps)) if gaps else 0.0,
        "answers": answers,
    }


def run_replicas(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp())
    pair = generate_orderly_keypair()
    account = "0x" + "cd" * 32
    sim_port = free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        redis, redis_url = start_redis(directory)
        processes.append(redis)
        processes.append(start_simulator(sim_port, account, pair.public_key))
        config = directory / "replica.yaml"
        config.write_text(CONFIG)
        proxies, admins = [], []
        for _ in range(REPLICAS):
            proxy_port, admin_port = free_port(), free_port()
            env = {"SEAWALL_REDIS_URL": redis_url} if backend == "redis" else {}
            processes.append(start_seawall(config, sim_url, proxy_port, admin_port, env=env))
            proxies.append(f"http://127.0.0.1:{proxy_port}")
            admins.append(f"http://127.0.0.1:{admin_port}")
        for admin in admins:
            wait_ready(admin + "/readyz")
        result: dict[str, Any] = {}

        async def drive() -> int:
            result.update(await fleet(proxies, account, pair.secret, args.clients, args.seconds))
            return 0

        run_event_loop(drive)
        counters = orjson.loads(get(sim_url + "/__sim/counters"))
        result["upstream_1003"] = counters["answers_by_code"].get("-1003", 0)
        result["max_attempted_in_window"] = counters["max_attempted_in_window"]["order_create"]
        result["forwarded"] = [
            metric(get(admin + "/metrics").decode(), "seawall_requests_total", outcome="forwarded")
            for admin in admins
        ]
        return result
    finally:
        stop_all(processes)
        shutil.rmtree(directory, ignore_errors=True)


# --- the latency of one decision ----------------------------------------------------------------------


def percentile(samples: list[float], share: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def decision_latency(rounds: int, concurrency: int) -> dict[str, dict[str, float]]:
    from proxy.config import RedisConfig
    from proxy.metrics import Metrics
    from proxy.state.ratelimit import Claim, MemoryRateLimitState, RateLimitState
    from proxy.state.ratelimit_redis import RedisRateLimitState
    from proxy.state.redis_link import RedisLink

    directory = Path(tempfile.mkdtemp())
    redis, url = start_redis(directory)
    link = RedisLink(RedisConfig(url=url), Metrics())
    await link.start()
    states: dict[str, RateLimitState] = {
        "memory": MemoryRateLimitState(),
        "redis": RedisRateLimitState(link, in_flight_expiry=11.0),
    }
    claims = (Claim("order.place", "key", "alias", 10**9, 1.01, 1),)  # always room: pure decision cost
    results: dict[str, dict[str, float]] = {}
    try:
        for name, state in states.items():
            for mode, width in (("sequential", 1), (f"{concurrency} at once", concurrency)):
                samples: list[float] = []

                async def decider(
                    state: RateLimitState = state, samples: list[float] = samples, width: int = width
                ) -> None:
                    for _ in range(rounds // width):
                        started = time.perf_counter()
                        verdict = await state.acquire(claims, (0,), time.monotonic())
                        samples.append(time.perf_counter() - started)
                        await state.release(claims, time.monotonic(), verdict.ticket)

                started = time.perf_counter()
                await asyncio.gather(*(decider() for _ in range(width)))
                results[f"{name}, {mode}"] = {
                    "p50_us": percentile(samples, 0.5) * 1e6,
                    "p99_us": percentile(samples, 0.99) * 1e6,
                    "per_second": len(samples) / (time.perf_counter() - started),
                }
        return results
    finally:
        await states["redis"].close()
        await link.close()
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5000, help="decisions per latency measurement")
    parser.add_argument("--only", choices=["redis", "memory", "latency"])
    args = parser.parse_args()
    if args.only in (None, "redis", "memory"):
        print(
            f"{args.clients} clients on one key over {REPLICAS} replicas for {args.seconds:.0f} s; "
            f"placements {LIMIT} per {WINDOW:.0f} s\n"
        )
        print("| state | upstream -1003 | most attempted in any 1 s window | goodput (share of N) "
              "| accepted | forwarded per replica | answers |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        for backend in [args.only] if args.only else ["redis", "memory"]:
            r = run_replicas(backend, args)
            label = "redis (shared)" if backend == "redis" else "memory (each replica alone)"
            forwarded = " / ".join(str(int(n)) for n in r["forwarded"])
            answers = ", ".join(f"{k}: {v}" for k, v in sorted(r["answers"].items()))
            print(
                f"| {label} | {r['upstream_1003']} | {r['max_attempted_in_window']} | {r['goodput']:.3f} "
                f"| {r['accepted']} | {forwarded} | {answers} |",
                flush=True,
            )
    if args.only in (None, "latency"):
        print(f"\nacquire round trip ({args.rounds} decisions each, one process, unix socket)\n")
        print("| state, callers | p50 µs | p99 µs | decisions + releases per s |")
        print("|---|---|---|---|")
        for name, numbers in asyncio.run(decision_latency(args.rounds, 50)).items():
            print(
                f"| {name} | {numbers['p50_us']:.1f} | {numbers['p99_us']:.1f} "
                f"| {numbers['per_second']:.0f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
