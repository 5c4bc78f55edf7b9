"""Shared decisions at memory speed (issue 16; bars in BENCHMARKS.md): Seawall on memory vs on Redis.

Same run, loopback, the fixed-JSON upstream of the overhead benchmark, every policy on, budgets that never
throttle. One `seawall run` per state — memory, one redis-server (TCP), and (`--cluster`) a three-master
Redis Cluster — measured by wrk (`-t1`) at 1, 10 and 50 connections in interleaved rounds, on two kinds
of request:
- **reads**: `GET /v1/orders` (a breaker, a rate-limit rule, the cache's bypass check: one shared
  rate-limit decision and its release per request);
- **placements**: `POST /v1/order`, each with a new `client_order_id` (also dedup: a shared claim and
  its settlement per request).

Bars (reads, the overhead benchmark's request): on Redis >= 0.8x the requests per second of memory at 50
connections, and <= +0.2 ms at p50 on one connection.

    python benchmarks/state_decisions.py [--seconds 8] [--rounds 3] [--cluster] [--only reads|placements]
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
from overhead import HEADERS, PATH, SEAWALL_CONFIG
from redis_cluster import Redis, start_node

HERE = Path(__file__).resolve().parent
CONNECTIONS = (1, 10, 50)

PLACE_SCRIPT = """
math.randomseed(os.time())
local run, counter = math.random(1, 1000000000), 0
local headers = {}
%s
headers["Content-Type"] = "application/json"
request = function()
  counter = counter + 1
  local body = '{"symbol":"PERP_ETH_USDC","order_type":"LIMIT","side":"BUY","order_price":1,' ..
    '"order_quantity":1,"client_order_id":"b' .. run .. 'n' .. counter .. '"}'
  return wrk.format("POST", "/v1/order", headers, body)
end
"""

CONFIG = SEAWALL_CONFIG.replace(
    "    - {name: orders.list, routes: [orders.list], limit: 100000000, window: 1s, scope: [key]}",
    "    - {name: orders.list, routes: [orders.list], limit: 100000000, window: 1s, scope: [key]}\n"
    "    - {name: order.place, routes: [order.place], limit: 100000000, window: 1s, scope: [key]}",
).replace("routes: [orders.list], failure_threshold", "routes: [orders.list, order.place], failure_threshold")


def wrk(url: str, connections: int, seconds: int, script: Path | None) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) from one wrk run."""
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script is None:
        for header in HEADERS:
            args += ["-H", header]
        args.append(url + PATH)
    else:
        args += ["-s", str(script), url + "/v1/order"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    refused = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if refused:
        print(f"{url}: {refused.group(1)} answers were not 2xx", file=sys.stderr)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1))  # type: ignore[union-attr]
    return rps, p50, p99


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cluster", action="store_true", help="also a three-master Redis Cluster")
    parser.add_argument("--only", choices=["reads", "placements"])
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    directory = Path(tempfile.mkdtemp())
    processes: list[subprocess.Popen[bytes]] = []
    cluster: Redis | None = None
    try:
        up = free_port()
        upstream = f"http://127.0.0.1:{up}"
        processes.append(subprocess.Popen([sys.executable, HERE / "fixed_upstream.py", str(up)]))
        wait_ready(upstream + "/")
        redis_port = free_port()
        processes.append(start_node(directory / "redis", redis_port))
        states = {
            "memory": {},
            "redis": {"SEAWALL_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"},
        }
        if args.cluster:
            cluster = Redis("cluster", directory)
            states["redis cluster"] = cluster.env()
        config = directory / "bench.yaml"
        config.write_text(CONFIG)
        script = directory / "place.lua"
        script.write_text(PLACE_SCRIPT % "\n".join(
            f'headers["{name}"] = "{value.strip()}"' for name, value in (h.split(":", 1) for h in HEADERS)
        ))  # fmt: skip
        targets: dict[str, str] = {}
        for name, env in states.items():
            port, admin = free_port(), free_port()
            processes.append(start_seawall(config, upstream, port, admin, env=env))
            wait_ready(f"http://127.0.0.1:{admin}/readyz")
            targets[name] = f"http://127.0.0.1:{port}"
        kinds = {"reads": None, "placements": script}
        if args.only:
            kinds = {args.only: kinds[args.only]}
        rows: dict[tuple[str, str, int], list[tuple[float, float, float]]] = {}
        for _ in range(args.rounds):  # interleaved: the machine's noise is spread over every target
            for kind, lua in kinds.items():
                for connections in CONNECTIONS:
                    for name, url in targets.items():
                        sample = wrk(url, connections, args.seconds, lua)
                        rows.setdefault((kind, name, connections), []).append(sample)
        print(f"\nmedian of {args.rounds} rounds, {args.seconds} s each, wrk -t1, loopback\n")
        print("| request | state | connections | req/s | p50 ms | p99 ms | req/s vs memory | p50 vs memory |")
        print("|---|---|---|---|---|---|---|---|")
        for (kind, name, connections), samples in rows.items():
            rps, p50, p99 = (statistics.median(column) for column in zip(*samples, strict=True))
            base = [statistics.median(c) for c in zip(*rows[(kind, "memory", connections)], strict=True)]
            print(
                f"| {kind} | {name} | {connections} | {rps:.0f} | {p50:.3f} | {p99:.3f} "
                f"| {rps / base[0]:.2f}x | {(p50 - base[1]) * 1000:+.0f} µs |"
            )
    finally:
        stop_all(processes)
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
