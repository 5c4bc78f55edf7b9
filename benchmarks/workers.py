"""Several workers per host (issue 16): `seawall run --workers 2` vs one process, both on Redis state.

Same run, loopback, fixed-JSON upstream (benchmarks/fixed_upstream.py), one local redis-server on a
unix socket. Seawall runs with every policy on (as in benchmarks/overhead.py: a breaker, a rate-limit
rule whose budget never throttles, dedup), its state in Redis. wrk (Debian package `wrk`, one thread)
drives 32 connections; the two targets are measured in interleaved rounds, and the table shows the
median of each column. On a 2-core machine wrk, the upstream, redis-server and the workers share the two
cores: the second worker can only take what the others leave.

    python benchmarks/workers.py [--seconds 10] [--rounds 3] [--connections 32]
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import free_port, start_seawall, stop_all, wait_ready
from overhead import HEADERS, PATH, SEAWALL_CONFIG

HERE = Path(__file__).resolve().parent


def wrk(url: str, connections: int, seconds: int) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) from one wrk run."""
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for header in HEADERS:
        args += ["-H", header]
    out = subprocess.run([*args, url + PATH], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise SystemExit(f"non-2xx answers from {url}:\n{out}")
    rps = float(_find(r"Requests/sec:\s+([\d.]+)", out))
    return rps, _ms(_find(r"50%\s+([\d.]+\w+)", out)), _ms(_find(r"99%\s+([\d.]+\w+)", out))


def _find(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    if match is None:
        raise SystemExit(f"wrk printed no {pattern!r}:\n{text}")
    return match.group(1)


def _ms(text: str) -> float:
    match = re.match(r"([\d.]+)(\w+)", text)
    assert match is not None
    return float(match.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    sock = directory / "redis.sock"
    process = subprocess.Popen(
        ["redis-server", "--port", "0", "--unixsocket", str(sock), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        cwd=directory,
    )
    deadline = time.monotonic() + 10
    while not sock.exists():
        if time.monotonic() > deadline or process.poll() is not None:
            raise SystemExit("redis-server did not start")
        time.sleep(0.05)
    return process, f"unix://{sock}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    for tool in ("wrk", "redis-server"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is needed: apt-get install {tool}")
    processes: list[subprocess.Popen[bytes]] = []
    directory = Path(tempfile.mkdtemp())
    try:
        up = free_port()
        upstream = f"http://127.0.0.1:{up}"
        processes.append(subprocess.Popen([sys.executable, HERE / "fixed_upstream.py", str(up)]))
        wait_ready(upstream + "/")
        redis, redis_url = start_redis(directory)
        processes.append(redis)
        config = directory / "bench.yaml"
        config.write_text(SEAWALL_CONFIG)
        targets = {}
        for workers in (1, 2):
            port, admin = free_port(), free_port()
            env = {"SEAWALL_REDIS_URL": redis_url, "SEAWALL_WORKERS": str(workers)}
            processes.append(start_seawall(config, upstream, port, admin, env))
            wait_ready(f"http://127.0.0.1:{admin}/readyz")
            targets[f"seawall, {workers} worker{'s' if workers > 1 else ''}"] = f"http://127.0.0.1:{port}"
        results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in targets}
        for _ in range(args.rounds):  # interleaved rounds spread the machine's noise over both targets
            for name, url in targets.items():
                results[name].append(wrk(url, args.connections, args.seconds))
                rps, p50, p99 = results[name][-1]
                shown = f"{rps:.0f} req/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms"
                print(f"round {len(results[name])}, {name}: {shown}", flush=True)
        run = f"{args.seconds}s each, wrk -t1 -c{args.connections}, loopback"
        print(f"\nmedian of {args.rounds} rounds, {run}\n")
        print(f"| target | req/s @{args.connections} | p50 ms | p99 ms |")
        print("|---|---|---|---|")
        medians = {
            name: [statistics.median(column) for column in zip(*rows, strict=True)]
            for name, rows in results.items()
        }
        for name, (rps, p50, p99) in medians.items():
            print(f"| {name} | {rps:.0f} | {p50:.2f} | {p99:.2f} |")
        one, two = medians.values()
        print(f"\n2 workers / 1: throughput {two[0] / one[0]:.2f}x, p50 {two[1] / one[1]:.2f}x")
    finally:
        stop_all(processes)
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
