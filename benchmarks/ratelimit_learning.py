"""Learning from the exchange: a bot that bypasses Seawall on the same key, 50 bots through Seawall.

The simulator (its own process: Orderly placements 10 per 1 s per key, strict sliding windows) and
Seawall (its own process, the shipped orderly profile: learning on, its shipped bounds). One bot sends
placements straight to the exchange, with the same key: one, then a pause of 1/3 s, again (about 2.9 per
second: never more than 3 in any 1 s window). 50 bots place orders through Seawall as fast as answers come
back; one told -1003 retries after 50 ms. Reported: the exchange's own -1003s to requests sent through
Seawall, second by second (they must stop within a few windows), Seawall's effective limit at the end, and
the goodput of the shared budget — placements accepted by the exchange, from both: 1 s / the mean time
between the k-th and (k+10)-th — over the whole run and after the first 5 s. Then the same run with
learning off.

    python benchmarks/ratelimit_learning.py [--seconds 30] [--clients 50]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
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
from proxy.runtime import run_event_loop  # noqa: E402
from proxy.simulator.signing import generate_orderly_keypair, orderly_headers  # noqa: E402
from proxy.simulator.symbols import resting_order  # noqa: E402

BASE = """
profile: orderly
logging: {level: warning, request_level: off}
"""
LIMIT = 10
_ids = itertools.count()


async def drive(
    proxy_url: str, sim_url: str, account: str, secret: str, clients: int, seconds: float
) -> dict[str, Any]:
    started = time.monotonic()
    stop_at = started + seconds
    accepted: list[float] = []  # by the exchange, from both
    refused: list[float] = []  # the exchange's -1003 to requests through Seawall
    bypass = {"sent": 0, "refused": 0}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients + 5)) as session:
        session._retry_connection = False

        async def place(url: str) -> aiohttp.ClientResponse:
            body = orjson.dumps(resting_order(f"learn{next(_ids)}"))
            headers = orderly_headers(account, secret, "POST", "/v1/order", body)
            async with session.post(url + "/v1/order", data=body, headers=headers) as answer:
                await answer.read()
                return answer

        async def bypassing() -> None:
            while time.monotonic() < stop_at:
                answer = await place(sim_url)
                bypass["sent"] += 1
                if answer.status == 200:
                    accepted.append(time.monotonic() - started)
                else:
                    bypass["refused"] += 1
                await asyncio.sleep(1 / 3)

        async def bot() -> None:
            while time.monotonic() < stop_at:
                answer = await place(proxy_url)
                if answer.status == 200:
                    accepted.append(time.monotonic() - started)
                    continue
                if "X-Seawall" not in answer.headers:
                    refused.append(time.monotonic() - started)
                await asyncio.sleep(0.05)

        await asyncio.gather(bypassing(), *(bot() for _ in range(clients)))
    by_second = [0] * int(seconds + 1)
    for at in refused:
        by_second[int(at)] += 1
    accepted.sort()
    return {
        "refused_by_second": by_second,
        "refused": len(refused),
        "last_refused_s": max(refused, default=0.0),
        "goodput": goodput(accepted),
        "goodput_after_5s": goodput([at for at in accepted if at >= 5.0]),
        "bypass": bypass,
    }


def goodput(accepted: list[float]) -> float:
    """Window / mean time between the k-th and (k+N)-th accepted placement, from both bots: one slot's
    consecutive uses (a budget fully used spaces them exactly one window apart)."""
    gaps = [later - earlier for earlier, later in zip(accepted, accepted[LIMIT:], strict=False)]
    return 1.0 / (sum(gaps) / len(gaps)) if gaps else 0.0


def run(learning: bool, args: argparse.Namespace) -> dict[str, Any]:
    pair = generate_orderly_keypair()
    account = "0x" + "1e" * 32
    sim_port, proxy_port, admin_port = free_port(), free_port(), free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes.append(start_simulator(sim_port, account, pair.public_key))
        config = Path(tempfile.mkdtemp()) / "learning.yaml"
        config.write_text(BASE + f"ratelimit: {{learning: {{enabled: {str(learning).lower()}}}}}\n")
        processes.append(start_seawall(config, sim_url, proxy_port, admin_port))
        wait_ready(f"http://127.0.0.1:{admin_port}/healthz")
        result: dict[str, Any] = {}

        async def main() -> int:
            proxy_url = f"http://127.0.0.1:{proxy_port}"
            result.update(await drive(proxy_url, sim_url, account, pair.secret, args.clients, args.seconds))
            return 0

        run_event_loop(main)
        status = orjson.loads(get(f"http://127.0.0.1:{admin_port}/status"))
        lowered = status["ratelimit"]["lowered"]
        result["effective"] = lowered[0]["effective"] if lowered else LIMIT
        return result
    finally:
        stop_all(processes)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=50)
    args = parser.parse_args()
    print(f"{args.clients} bots through Seawall + 1 bot straight to the exchange (~2.9/s), one key, ")
    print(f"placements {LIMIT} per 1 s, {args.seconds:.0f} s\n")
    print(
        "| learning | exchange -1003 to Seawall, per second (first 10 s) | total | last at | effective limit "
        "| goodput of the shared budget | after 5 s | bypass refused |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for learning in (True, False):
        r = run(learning, args)
        seconds = " ".join(str(n) for n in r["refused_by_second"][:10])
        print(
            f"| {'on' if learning else 'off'} | {seconds} | {r['refused']} | {r['last_refused_s']:.1f} s "
            f"| {r['effective']} | {r['goodput']:.3f} | {r['goodput_after_5s']:.3f} "
            f"| {r['bypass']['refused']} of {r['bypass']['sent']} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
