"""Fair share within one key: a greedy and a polite bot on one budget, and Jain's fairness index.

Every part in its own process on loopback: the simulator (Orderly placements 10 per 1 s per key, strict
sliding windows), a delaying relay in front of it (`tests/delay_relay.py`: 15 ms each way), and Seawall
(shipped orderly profile: placements 10 per 1 s per key, `max_wait` 1 s) whose upstream is the relay. Bots
name themselves with `X-Seawall-Client`. Each scenario runs with fair share on (the default) and off
(first come, first served, as before).

- greedy + polite: the greedy bot keeps 40 placements in flight; the polite one places one order every
  0.5 s. Reported: the polite bot's wait in Seawall's queue — its answer time less the fastest it ever
  got (one round trip through Seawall and the relay) — against the slot interval (window / limit = 100 ms).
- five bots with 1, 2, 5, 10 and 30 placements in flight: each one's share of the accepted placements,
  and Jain's fairness index (sum x)^2 / (n sum x^2): 1 when all get the same, 1/n when one gets all.

    python benchmarks/ratelimit_fairness.py [--seconds 30]
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
from typing import Any

import aiohttp
import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.harness import free_port, start_seawall, start_simulator, stop_all, wait_ready  # noqa: E402
from benchmarks.ratelimit_goodput import get  # noqa: E402
from benchmarks.ratelimit_network import start_relay  # noqa: E402
from proxy.runtime import run_event_loop  # noqa: E402
from proxy.simulator.signing import generate_orderly_keypair, orderly_headers  # noqa: E402
from proxy.simulator.symbols import resting_order  # noqa: E402

BASE = """
profile: orderly
logging: {level: warning, request_level: off}
"""
SLOT = 0.1  # window / limit of the shipped placement rule
_ids = itertools.count()


class Bots:
    """Signed placements through Seawall, each bot naming itself."""

    def __init__(self, session: aiohttp.ClientSession, url: str, account: str, secret: str) -> None:
        self.session, self.url, self.account, self.secret = session, url, account, secret

    async def place(self, bot: str) -> tuple[int, float]:
        body = orjson.dumps(resting_order(f"fair{next(_ids)}"))
        headers = orderly_headers(self.account, self.secret, "POST", "/v1/order", body)
        headers["X-Seawall-Client"] = bot
        started = time.monotonic()
        async with self.session.post(self.url + "/v1/order", data=body, headers=headers) as answer:
            await answer.read()
            return answer.status, time.monotonic() - started


async def greedy(bots: Bots, name: str, in_flight: int, stop_at: float, accepted: dict[str, int]) -> None:
    async def loop() -> None:
        while time.monotonic() < stop_at:
            status, _ = await bots.place(name)
            if status == 200:
                accepted[name] = accepted.get(name, 0) + 1
            else:
                await asyncio.sleep(0.05)  # a bot told -1003 backs off a little

    await asyncio.gather(*(loop() for _ in range(in_flight)))


async def greedy_and_polite(bots: Bots, seconds: float) -> dict[str, Any]:
    stop_at = time.monotonic() + seconds
    accepted: dict[str, int] = {}
    latencies: list[float] = []
    refused = 0

    async def polite() -> None:
        nonlocal refused
        await asyncio.sleep(2.0)  # the greedy bot's backlog builds up first
        while time.monotonic() < stop_at:
            status, latency = await bots.place("polite")
            if status == 200:
                latencies.append(latency)
            else:
                refused += 1
            await asyncio.sleep(0.5)

    await asyncio.gather(greedy(bots, "greedy", 40, stop_at, accepted), polite())
    result: dict[str, Any] = {
        "polite_sent": len(latencies) + refused,
        "polite_refused": refused,
        "greedy_accepted": accepted.get("greedy", 0),
    }
    if latencies:  # first come, first served may refuse every one of them (max_wait)
        fastest = min(latencies)
        waits = sorted(latency - fastest for latency in latencies)
        result |= {
            "wait_p50_ms": 1000 * statistics.median(waits),
            "wait_p90_ms": 1000 * waits[int(0.9 * (len(waits) - 1))],
            "wait_max_ms": 1000 * waits[-1],
            "within_slot": sum(1 for wait in waits if wait <= SLOT) / len(waits),
        }
    return result


async def five_bots(bots: Bots, seconds: float) -> dict[str, Any]:
    stop_at = time.monotonic() + seconds
    accepted: dict[str, int] = {}
    concurrency = {"b1": 1, "b2": 2, "b5": 5, "b10": 10, "b30": 30}
    await asyncio.gather(*(greedy(bots, name, n, stop_at, accepted) for name, n in concurrency.items()))
    shares = [accepted.get(name, 0) for name in concurrency]
    jain = sum(shares) ** 2 / (len(shares) * sum(x * x for x in shares))
    return {"accepted": dict(zip(concurrency, shares, strict=True)), "jain": jain}


def run(fair: bool, args: argparse.Namespace) -> dict[str, Any]:
    pair = generate_orderly_keypair()
    account = "0x" + "fa" * 32
    sim_port, relay_port, proxy_port, admin_port = free_port(), free_port(), free_port(), free_port()
    processes: list[subprocess.Popen[bytes]] = []
    result: dict[str, Any] = {}
    try:
        processes.append(start_simulator(sim_port, account, pair.public_key))
        processes.append(start_relay(relay_port, sim_port, 0.015, 0.0))
        wait_ready(f"http://127.0.0.1:{relay_port}/__sim/counters")
        config = Path(tempfile.mkdtemp()) / "fair.yaml"
        config.write_text(BASE + f"ratelimit: {{fair_share: {{enabled: {str(fair).lower()}}}}}\n")
        processes.append(start_seawall(config, f"http://127.0.0.1:{relay_port}", proxy_port, admin_port))
        wait_ready(f"http://127.0.0.1:{admin_port}/healthz")

        async def drive() -> int:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session:
                session._retry_connection = False
                bots = Bots(session, f"http://127.0.0.1:{proxy_port}", account, pair.secret)
                result["pair"] = await greedy_and_polite(bots, args.seconds)
                await asyncio.sleep(2.0)  # the windows empty between the scenarios
                result["five"] = await five_bots(bots, args.seconds)
            return 0

        run_event_loop(drive)
        counters = orjson.loads(get(f"http://127.0.0.1:{sim_port}/__sim/counters"))
        result["upstream_1003"] = counters["answers_by_code"].get("-1003", 0)
        return result
    finally:
        stop_all(processes)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    rows = {fair: run(fair, args) for fair in (True, False)}
    print(f"greedy (40 in flight) + polite (1 every 0.5 s), {args.seconds:.0f} s; slot interval 100 ms\n")
    print("| queue | polite wait p50 ms | p90 ms | max ms | within a slot | polite refused | greedy ok |")
    print("|---|---|---|---|---|---|---|")
    for fair, r in rows.items():
        p = r["pair"]
        waits = "- | - | - | -"
        if "wait_p50_ms" in p:
            waits = f"{p['wait_p50_ms']:.0f} | {p['wait_p90_ms']:.0f} | {p['wait_max_ms']:.0f} "
            waits += f"| {p['within_slot']:.0%}"
        print(
            f"| {'fair share' if fair else 'first come, first served'} | {waits} "
            f"| {p['polite_refused']} of {p['polite_sent']} | {p['greedy_accepted']} |"
        )
    print(f"\nfive bots, 1 / 2 / 5 / 10 / 30 placements in flight, {args.seconds:.0f} s\n")
    print("| queue | accepted per bot (1 / 2 / 5 / 10 / 30 in flight) | Jain's index | upstream -1003 |")
    print("|---|---|---|---|")
    for fair, r in rows.items():
        five = r["five"]
        shares = " / ".join(str(n) for n in five["accepted"].values())
        label = "fair share" if fair else "first come, first served"
        print(f"| {label} | {shares} | {five['jain']:.3f} | {r['upstream_1003']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
