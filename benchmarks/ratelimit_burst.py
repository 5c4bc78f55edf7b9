"""Burst benchmark (docs/design.md): 8 placements at once with a budget of 10/s go out without delay.

The simulator (its own process) and Seawall (its own process, the shipped orderly profile: placements
10 per 1 s per key) on loopback. Each round sends 8 concurrent placements on a fresh key (an empty
window), first through Seawall, then straight to the simulator for a baseline. Reported: Seawall's
queue wait (`seawall_ratelimit_wait_seconds{rule="order.place"}`: p99 bound from its buckets, and the
mean), and per round the spread between the first and the last answer — a limiter that spaced the 8
evenly over the window would spread them by ~700 ms.

    python benchmarks/ratelimit_burst.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.harness import free_port, start_seawall, stop_all, wait_ready  # noqa: E402
from benchmarks.ratelimit_goodput import get  # noqa: E402
from proxy.runtime import run_event_loop  # noqa: E402
from proxy.simulator.signing import OrderlyKeyPair, generate_orderly_keypair, orderly_headers  # noqa: E402
from proxy.simulator.symbols import resting_order  # noqa: E402

BURST = 8
CONFIG = """
profile: orderly
logging: {level: warning, request_level: off}
"""
_ids = itertools.count()


async def burst(session: aiohttp.ClientSession, url: str, account: str, key: OrderlyKeyPair) -> list[float]:
    """Send BURST placements at once; return each one's latency (s)."""

    async def place() -> float:
        body = orjson.dumps(resting_order(f"b{next(_ids)}"))
        headers = orderly_headers(account, key.secret, "POST", "/v1/order", body)
        started = time.monotonic()
        async with session.post(url + "/v1/order", data=body, headers=headers) as answer:
            await answer.read()
            if answer.status != 200:
                raise SystemExit(f"placement refused: {answer.status} {await answer.text()}")
        return time.monotonic() - started

    return list(await asyncio.gather(*(place() for _ in range(BURST))))


def wait_quantiles(metrics: str) -> tuple[float, float, str]:
    """(count, mean seconds, p99 bound) of the order.place queue-wait histogram."""
    buckets: list[tuple[float, float]] = []
    count = total = 0.0
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.labels.get("rule") != "order.place":
                continue
            if sample.name == "seawall_ratelimit_wait_seconds_bucket":
                buckets.append((float(sample.labels["le"]), sample.value))
            elif sample.name == "seawall_ratelimit_wait_seconds_count":
                count = sample.value
            elif sample.name == "seawall_ratelimit_wait_seconds_sum":
                total = sample.value
    bound = next(f"<= {le * 1000:g} ms" for le, cumulative in sorted(buckets) if cumulative >= 0.99 * count)
    return count, (total / count if count else 0.0), bound


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    account = "0x" + "cd" * 32
    keys = [generate_orderly_keypair() for _ in range(2 * args.rounds + 2)]  # + 2 to warm up
    sim_port, proxy_port, admin_port = free_port(), free_port(), free_port()
    sim_url, proxy_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{proxy_port}"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        sim_command = [sys.executable, "-m", "proxy", "simulate", "--port", str(sim_port)]
        for key in keys:
            sim_command += ["--account", f"{account}={key.public_key}"]
        processes.append(subprocess.Popen(sim_command, stdout=subprocess.DEVNULL, cwd=HERE.parent))
        wait_ready(sim_url + "/__sim/counters")
        config = Path(tempfile.mkdtemp()) / "burst.yaml"
        config.write_text(CONFIG)
        processes.append(start_seawall(config, sim_url, proxy_port, admin_port))
        wait_ready(f"http://127.0.0.1:{admin_port}/healthz")
        spreads: dict[str, list[float]] = {"seawall": [], "direct": []}
        latencies: dict[str, list[float]] = {"seawall": [], "direct": []}

        async def drive() -> int:
            async with aiohttp.ClientSession() as session:
                session._retry_connection = False
                await burst(session, sim_url, account, keys[0])  # warm the connection pools
                await burst(session, proxy_url, account, keys[1])
                for round_keys in zip(keys[2::2], keys[3::2], strict=False):
                    for target, url, key in (
                        ("seawall", proxy_url, round_keys[0]),
                        ("direct", sim_url, round_keys[1]),
                    ):
                        times = await burst(session, url, account, key)
                        spreads[target].append(max(times) - min(times))
                        latencies[target].extend(times)
            return 0

        run_event_loop(drive)
        counters = orjson.loads(get(sim_url + "/__sim/counters"))
        count, mean_wait, p99_wait = wait_quantiles(get(f"http://127.0.0.1:{admin_port}/metrics").decode())
    finally:
        stop_all(processes)
    rounds = len(spreads["seawall"])
    print(
        f"{rounds} rounds of {BURST} concurrent placements, budget 10 per 1 s per key, fresh key each round\n"
    )
    print(
        f"Seawall queue wait (order.place): {count:.0f} requests, p99 {p99_wait}, "
        f"mean {mean_wait * 1e6:.1f} µs"
    )
    print(f"upstream -1003: {counters['answers_by_code'].get('-1003', 0)}\n")
    print("| path | answer spread in a burst, median ms | max ms | placement latency p99 ms |")
    print("|---|---|---|---|")
    for target in ("seawall", "direct"):
        p99 = statistics.quantiles(latencies[target], n=100)[98] * 1000
        spread = spreads[target]
        print(f"| {target} | {statistics.median(spread) * 1000:.2f} | {max(spread) * 1000:.2f} | {p99:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
