"""Rate-limit goodput over a real network: the exchange 15 ms away each way, 50 bots on one key.

Every part in its own process on loopback: the simulator (strict sliding windows, counted when a request
*arrives*: Orderly placements 10 per 1 s per key), a delaying relay in front of it (`tests/delay_relay.py`:
every byte 15 ms late each way, plus up to `--jitter` more, uniformly, so requests on different
connections overtake each other), and Seawall (the shipped orderly profile) whose upstream is the relay.
50 bots place orders for `--seconds` as fast as answers come back; a bot told -1003 retries after 50 ms.

Reported per variant: upstream -1003s (must be 0), the most placements the exchange admitted in any 1 s
window, and goodput — window / mean gap between the k-th and (k+N)-th accepted placement (one slot's
consecutive uses: a perfect limiter spaces them exactly one window apart, as the exchange sees them).
Variants: Seawall's network-aware release (the default), and the same Seawall holding every slot until
its answer plus one window (`ratelimit.network.enabled: false`, the release before this change), each
without and with jitter; `--exchange-time off` also leaves the answers' exchange timestamps unused.

    python benchmarks/ratelimit_network.py [--seconds 20] [--clients 50] [--delay 0.015] [--jitter 0.01]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.harness import free_port, start_seawall, start_simulator, stop_all, wait_ready  # noqa: E402
from benchmarks.ratelimit_goodput import fleet, get, metric  # noqa: E402
from proxy.runtime import run_event_loop  # noqa: E402
from proxy.simulator.signing import generate_orderly_keypair  # noqa: E402

BASE = """
profile: orderly
logging: {level: warning, request_level: off}
"""
VARIANTS = {
    "network": ("network-aware release (round trip + exchange time)", ""),
    "round-trip": (
        "network-aware release, round trip only",
        "ratelimit: {network: {exchange_time_field: null}}\n",
    ),
    "answer-window": (
        "slot held until answer + window (before)",
        "ratelimit: {network: {enabled: false}}\n",
    ),
}


def start_relay(port: int, target_port: int, delay: float, jitter: float) -> subprocess.Popen[bytes]:
    relay = HERE.parent / "tests" / "delay_relay.py"
    command = [sys.executable, str(relay), "--port", str(port), "--target", f"127.0.0.1:{target_port}"]
    command += ["--delay", str(delay), "--jitter", str(jitter)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL)


def run_one(variant: str, jitter: float, args: argparse.Namespace) -> dict[str, Any]:
    pair = generate_orderly_keypair()
    account = "0x" + "ef" * 32
    sim_port, relay_port, proxy_port, admin_port = free_port(), free_port(), free_port(), free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes.append(start_simulator(sim_port, account, pair.public_key))
        processes.append(start_relay(relay_port, sim_port, args.delay, jitter))
        wait_ready(f"http://127.0.0.1:{relay_port}/__sim/counters")
        config = Path(tempfile.mkdtemp()) / "network.yaml"
        config.write_text(BASE + VARIANTS[variant][1] + (args.config or ""))
        relay_url = f"http://127.0.0.1:{relay_port}"
        processes.append(start_seawall(config, relay_url, proxy_port, admin_port))
        wait_ready(f"http://127.0.0.1:{admin_port}/healthz")
        result: dict[str, Any] = {}

        async def drive() -> int:
            url = f"http://127.0.0.1:{proxy_port}"
            result.update(await fleet(url, account, pair.secret, args.clients, args.seconds, 0.05))
            return 0

        run_event_loop(drive)
        counters = orjson.loads(get(sim_url + "/__sim/counters"))
        metrics = get(f"http://127.0.0.1:{admin_port}/metrics").decode()
        status = orjson.loads(get(f"http://127.0.0.1:{admin_port}/status"))
        result["upstream_1003"] = counters["answers_by_code"].get("-1003", 0)
        result["max_in_window"] = counters["max_in_window"]["order_create"]
        result["local_rejected"] = metric(metrics, "seawall_ratelimit_rejected_total")
        result["network"] = status.get("ratelimit", {}).get("network")
        return result
    finally:
        stop_all(processes)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--delay", type=float, default=0.015, help="one-way delay to the exchange, seconds")
    parser.add_argument("--jitter", type=float, default=0.010, help="extra one-way delay, uniform 0..jitter")
    parser.add_argument("--only", choices=VARIANTS)
    parser.add_argument("--config", help="YAML appended to the config, e.g. 'ratelimit: {margin: 3ms}'")
    parser.add_argument("--no-jitter-only", action="store_true", help="skip the runs with jitter")
    args = parser.parse_args()
    print(
        f"{args.clients} bots on one key for {args.seconds:.0f} s; placements 10 per 1 s; exchange "
        f"{args.delay * 1000:.0f} ms away each way\n"
    )
    print("| release | jitter each way | upstream -1003 | most admitted in any 1 s | goodput | accepted |")
    print("|---|---|---|---|---|---|")
    jitters = [0.0] if args.no_jitter_only else [0.0, args.jitter]
    for variant in [args.only] if args.only else list(VARIANTS):
        for jitter in jitters:
            r = run_one(variant, jitter, args)
            shown = f"0-{jitter * 1000:.0f} ms" if jitter else "none"
            print(
                f"| {VARIANTS[variant][0]} | {shown} | {r['upstream_1003']} | {r['max_in_window']} "
                f"| {r['goodput']:.3f} | {r['accepted']} |",
                flush=True,
            )
            if r["network"]:
                print(f"<!-- {variant} {shown}: {orjson.dumps(r['network']).decode()} -->", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
