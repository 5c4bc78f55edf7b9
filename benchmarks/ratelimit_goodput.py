"""Rate-limit goodput benchmark: 50 concurrent clients on one key.

The simulator (its own process, strict sliding windows: Orderly placements 10 per 1 s per key) sits
behind Seawall (its own process, the shipped orderly profile). 50 bots place orders as fast as answers
come back, for ~12 s. Reported per limiter: upstream -1003s (must be 0), the most placements the
exchange saw in any 1 s window, and goodput — placements accepted per window as a share of N.
The same traffic then goes through the same Seawall with an aiolimiter-based limiter instead (the
stack's default choice, a leaky bucket: `AsyncLimiter(N, window)` per rule and scope), for comparison.

A bot answered -1003 (locally or by the exchange) retries after --backoff seconds, like a bot whose
client library raised RateLimitExceeded.

    python benchmarks/ratelimit_goodput.py [--seconds 12] [--clients 50] [--backoff 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.harness import free_port, start_seawall, start_simulator, stop_all, wait_ready  # noqa: E402
from proxy.runtime import run_event_loop  # noqa: E402
from proxy.simulator.signing import generate_orderly_keypair, orderly_headers  # noqa: E402
from proxy.simulator.symbols import resting_order  # noqa: E402

CONFIG = """
profile: orderly
logging: {level: warning, request_level: off}
"""
NAMES = {
    "seawall": "Seawall (sliding-window log, slot held until answer + window)",
    "aiolimiter": "aiolimiter `AsyncLimiter(N, 1 s)`",
    "aiolimiter-spaced": "aiolimiter `AsyncLimiter(1, 1 s / N)`",
}
LIMIT, WINDOW = 10, 1.0  # the shipped order.place rule and the simulator's order_create rule


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return bytes(answer.read())


# --- the comparison limiter: aiolimiter inside the same Seawall ---------------------------------------


def serve_with_aiolimiter(config_path: str, spaced: bool) -> int:
    """Run Seawall with its rate-limit policy replaced by one built on aiolimiter (what the stack would
    use by default), everything else identical. `AsyncLimiter(N, W)` allows a burst of N; the spaced
    form `AsyncLimiter(1, W / N)` never exceeds N but allows no burst."""
    from aiolimiter import AsyncLimiter

    import proxy.app
    from proxy.config_loader import load_config
    from proxy.runtime import wait_for_stop_signal
    from proxy.types import Policy

    class AiolimiterPolicy(Policy):
        """The stack's default limiter in the rate limiter's place, for comparison."""

        name = "ratelimit"

        def __init__(self, config: Any) -> None:
            self._rules = config.rules
            self._limiters: dict[tuple[str, str], AsyncLimiter] = {}

        async def handle(self, ctx: Any, call_next: Any) -> Any:
            for rule in self._rules:
                if ctx.route.name in rule.routes or "*" in rule.routes:
                    scope = "|".join(ctx.scope_value(dim) for dim in rule.scope)
                    limiter = self._limiters.get((rule.name, scope))
                    if limiter is None:
                        limiter = self._limiters[(rule.name, scope)] = (
                            AsyncLimiter(1, rule.window / rule.limit)
                            if spaced
                            else AsyncLimiter(rule.limit, rule.window)
                        )
                    await limiter.acquire(ctx.units if rule.cost == "units" else 1)
            return await call_next(ctx)

    original = proxy.app.build_policies

    def build_policies(
        config: Any, metrics: Any, shared: Any = None, states: Any = None, keep: Any = None
    ) -> list[Any]:
        chain = original(config, metrics, shared, states, keep)
        kept = [policy for policy in chain if policy.name != "ratelimit"]
        return [*kept, AiolimiterPolicy(config.ratelimit)]

    proxy.app.build_policies = build_policies  # type: ignore[assignment]

    async def main() -> int:
        seawall = proxy.app.Seawall(load_config(config_path))
        await seawall.start()
        await wait_for_stop_signal()
        await seawall.stop()
        return 0

    return run_event_loop(main)


# --- the bots -------------------------------------------------------------------------------------------


async def fleet(
    proxy_url: str, account: str, secret: str, clients: int, seconds: float, backoff: float
) -> dict[str, Any]:
    ids = itertools.count()
    accepted: list[float] = []
    local_429 = upstream_429 = other = 0
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        # aiohttp resends some methods once after a dropped connection: never behind the limiter's back.
        session._retry_connection = False
        stop_at = time.monotonic() + seconds

        async def bot() -> None:
            nonlocal local_429, upstream_429, other
            while time.monotonic() < stop_at:
                body = orjson.dumps(resting_order(f"g{next(ids)}"))
                headers = orderly_headers(account, secret, "POST", "/v1/order", body)
                async with session.post(proxy_url + "/v1/order", data=body, headers=headers) as answer:
                    await answer.read()
                    if answer.status == 200:
                        accepted.append(time.monotonic())
                        continue
                    if answer.status == 429 and answer.headers.get("X-Seawall") == "ratelimit":
                        local_429 += 1
                    elif answer.status == 429:
                        upstream_429 += 1
                    else:
                        other += 1
                await asyncio.sleep(backoff)

        await asyncio.gather(*(bot() for _ in range(clients)))
    # The k-th and (k+N)-th accepted placements are one slot's consecutive uses: a perfect limiter
    # spaces them exactly one window apart (the exchange refuses anything closer), so the share of the
    # budget used is W / mean gap. Counting accepts per run length instead swings by a whole burst.
    accepted.sort()
    gaps = [later - earlier for earlier, later in zip(accepted, accepted[LIMIT:], strict=False)]
    return {
        "accepted": len(accepted),
        "goodput": WINDOW / (sum(gaps) / len(gaps)) if gaps else 0.0,
        "min_gap": min(gaps, default=0.0),
        "local_429": local_429,
        "upstream_429_seen_by_bots": upstream_429,
        "other": other,
    }


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def run_one(limiter: str, args: argparse.Namespace) -> dict[str, Any]:
    pair = generate_orderly_keypair()
    account = "0x" + "ab" * 32
    sim_port, proxy_port, admin_port = free_port(), free_port(), free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes.append(start_simulator(sim_port, account, pair.public_key))
        config = Path(tempfile.mkdtemp()) / "goodput.yaml"
        config.write_text(CONFIG)
        # The aiolimiter variants: this script serving the same config with another limiter.
        command = (
            None if limiter == "seawall" else [sys.executable, __file__, "--serve", limiter, str(config)]
        )
        processes.append(start_seawall(config, sim_url, proxy_port, admin_port, command=command))
        wait_ready(f"http://127.0.0.1:{admin_port}/healthz")
        result: dict[str, Any] = {}

        async def drive() -> int:
            url = f"http://127.0.0.1:{proxy_port}"
            result.update(await fleet(url, account, pair.secret, args.clients, args.seconds, args.backoff))
            return 0

        run_event_loop(drive)
        counters = orjson.loads(get(sim_url + "/__sim/counters"))
        metrics = get(f"http://127.0.0.1:{admin_port}/metrics").decode()
        result["upstream_1003"] = counters["answers_by_code"].get("-1003", 0)
        result["max_sent_in_window"] = counters["max_attempted_in_window"]["order_create"]
        result["local_rejected_metric"] = metric(metrics, "seawall_ratelimit_rejected_total")
        return result
    finally:
        stop_all(processes)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--backoff", type=float, default=0.05, help="pause after a -1003 before retrying")
    parser.add_argument("--only", choices=NAMES)
    parser.add_argument("--serve", nargs=2, metavar=("LIMITER", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve_with_aiolimiter(args.serve[1], spaced=args.serve[0] == "aiolimiter-spaced")
    print(
        f"{args.clients} clients on one key for {args.seconds:.0f} s; placements {LIMIT} per {WINDOW:.0f} s\n"
    )
    print(
        "| limiter | upstream -1003 | most sent in any 1 s window | goodput (share of N) | accepted "
        "| local -1003 |"
    )
    print("|---|---|---|---|---|---|")
    for limiter in [args.only] if args.only else list(NAMES):
        r = run_one(limiter, args)
        print(
            f"| {NAMES[limiter]} | {r['upstream_1003']} | {r['max_sent_in_window']} | {r['goodput']:.3f} "
            f"| {r['accepted']} | {r['local_429']} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
