"""Overhead benchmark (issue 2; bars in BENCHMARKS.md): Seawall vs a bare aiohttp pass-through vs direct.

Same run, loopback, fixed-JSON upstream. Throughput with 32 connections and latency with 1 connection,
measured by wrk (Debian package `wrk`). Seawall runs with every policy on: the request's route is
guarded by a breaker, a rate-limit rule (with a budget too large to throttle) and dedup.
Bars: Seawall >= 0.85x the bare proxy's throughput and <= 1.2x its single-connection latency.
A fourth target, the bare proxy forwarding with Seawall's own upstream client, shows what Seawall's
routing, policies and metrics cost on top of the same transport.

    python benchmarks/overhead.py [--seconds 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import free_port, start_seawall, stop_all, wait_ready

HERE = Path(__file__).resolve().parent
PATH = "/v1/orders?symbol=PERP_ETH_USDC&status=INCOMPLETE"
HEADERS = [
    "orderly-account-id: 0xbench",
    "orderly-key: ed25519:BenchKey111111111111111111111111111111111111",
    "orderly-timestamp: 1700000000000",
    "orderly-signature: c2lnbmF0dXJl",
]

SEAWALL_CONFIG = """
profile: orderly
logging: {level: warning, request_level: off}
ratelimit:
  rules:
    - {name: orders.list, routes: [orders.list], limit: 100000000, window: 1s, scope: [key]}
breakers:
  rules:
    - {name: reads, routes: [orders.list], failure_threshold: 5, reset_timeout: 5s}
dedup:
  rules:
    - {routes: [order.place], identity: client_order_id}
"""


def wrk(url: str, connections: int, seconds: int) -> tuple[float, float, float]:
    """(requests/s, mean latency ms, p99 latency ms) from one wrk run."""
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for header in HEADERS:
        args += ["-H", header]
    out = subprocess.run([*args, url + PATH], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    mean = _ms(re.search(r"Latency\s+([\d.]+\w+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1))  # type: ignore[union-attr]
    if "Non-2xx" in out:
        raise SystemExit(f"non-2xx answers from {url}:\n{out}")
    return rps, mean, p99


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    processes: list[subprocess.Popen[bytes]] = []
    try:
        up, bare, lean, sw, admin = free_port(), free_port(), free_port(), free_port(), free_port()
        upstream = f"http://127.0.0.1:{up}"
        processes.append(subprocess.Popen([sys.executable, HERE / "fixed_upstream.py", str(up)]))
        wait_ready(upstream + "/")
        processes.append(subprocess.Popen([sys.executable, HERE / "bare_proxy.py", str(bare), upstream]))
        processes.append(
            subprocess.Popen(
                [sys.executable, HERE / "bare_proxy.py", str(lean), upstream, "--client", "seawall"],
                cwd=HERE.parent,
            )
        )
        config = Path(tempfile.mkdtemp()) / "bench.yaml"
        config.write_text(SEAWALL_CONFIG)
        processes.append(start_seawall(config, upstream, sw, admin))
        wait_ready(f"http://127.0.0.1:{bare}/")
        wait_ready(f"http://127.0.0.1:{lean}/")
        wait_ready(f"http://127.0.0.1:{admin}/healthz")
        targets = {
            "direct": upstream,
            "bare aiohttp proxy": f"http://127.0.0.1:{bare}",
            "bare proxy, Seawall's client": f"http://127.0.0.1:{lean}",
            "seawall": f"http://127.0.0.1:{sw}",
        }
        results: dict[str, list[tuple[float, float, float, float, float, float]]] = {t: [] for t in targets}
        for _ in range(args.rounds):  # interleaved rounds spread the machine's noise over all targets
            for name, url in targets.items():
                rps32, _, p99_32 = wrk(url, 32, args.seconds)
                rps1, mean1, p99_1 = wrk(url, 1, args.seconds)
                results[name].append((rps32, p99_32, rps1, mean1, p99_1, 0.0))
        print(f"\nmedian of {args.rounds} rounds, {args.seconds}s each, wrk -t1, loopback\n")
        print("| target | req/s @32 conns | p99 ms @32 | req/s @1 conn | mean ms @1 | p99 ms @1 |")
        print("|---|---|---|---|---|---|")
        med = {
            name: [statistics.median(col) for col in zip(*rows, strict=True)]
            for name, rows in results.items()
        }
        for name, row in med.items():
            print(f"| {name} | {row[0]:.0f} | {row[1]:.2f} | {row[2]:.0f} | {row[3]:.3f} | {row[4]:.3f} |")
        bare_row, sw_row = med["bare aiohttp proxy"], med["seawall"]
        print(
            f"\nseawall / bare: throughput {sw_row[0] / bare_row[0]:.2f}x (bar >= 0.85), "
            f"single-connection mean latency {sw_row[3] / bare_row[3]:.2f}x (bar <= 1.2)"
        )
    finally:
        stop_all(processes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
