"""Memory soak: many distinct dedup identities and rate-limit scopes; RSS must plateau (bounded memory).

Seawall (in-process, every policy on, memory backend) in front of a fixed-JSON upstream. Each request is an
order placement with a fresh client order id, from one of many API keys and symbols, so dedup stores a new
entry and the limiter sees new scopes all the time. The dedup cap and TTL and the limiter's idle-scope
sweep must keep memory flat: RSS is sampled every `--every` requests.

    python benchmarks/soak_memory.py [--requests 300000] [--keys 5000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import resource
import sys
import time
from pathlib import Path

import aiohttp
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fixtures_proxy import RecordingUpstream

from proxy.app import Seawall
from proxy.config_loader import build_config


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 2**20


async def soak(total: int, keys: int, concurrency: int, every: int, max_entries: int) -> None:
    upstream = RecordingUpstream()
    await upstream.start()
    upstream.seen = _Discard()  # type: ignore[assignment]  # keep nothing per request on the upstream side
    config = build_config(
        {
            "profile": "woox",
            "upstream": {"url": upstream.url},
            "listen": "127.0.0.1:0",
            "admin_listen": "127.0.0.1:0",
            "logging": {"level": "warning", "request_level": "off"},
            "dedup": {"max_entries": max_entries, "ttl": "60s"},
            "ratelimit": {
                "idle_scope_ttl": "2s",
                "rules": [
                    {
                        "name": "order.place",
                        "routes": ["order.place"],
                        "limit": 1_000_000,
                        "window": "1s",
                        "scope": ["account", "symbol"],
                    },
                ],
            },
        },
        env={},
    )
    seawall = Seawall(config)
    await seawall.start()
    counter = itertools.count()
    samples: list[tuple[int, float, int, int]] = []
    started = time.monotonic()

    async def worker(session: aiohttp.ClientSession) -> None:
        while (n := next(counter)) < total:
            key = f"soak-key-{n % keys}"
            body = f"symbol=SPOT_C{n % 97}_USDT&client_order_id={n + 1}&order_type=LIMIT&side=BUY"
            headers = {"x-api-key": key, "Content-Type": "application/x-www-form-urlencoded"}
            async with session.post(seawall.proxy_url + "/v1/order", data=body, headers=headers) as r:
                await r.read()
                assert r.status == 200, r.status
            if n % every == 0:
                gc.collect()
                status = seawall.status()
                entries = int(status["dedup"].get("entries", -1))
                scopes = int(status["ratelimit"]["scopes_in_use"])
                samples.append((n, rss_mib(), entries, scopes))
                print(
                    f"{n:>8} requests  rss {samples[-1][1]:7.1f} MiB  dedup entries {samples[-1][2]:>7}  "
                    f"limiter scopes {scopes:>6}",
                    flush=True,
                )

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    await seawall.stop()
    await upstream.stop()
    later = [rss for n, rss, _, _ in samples if n >= total // 3]
    print(
        f"\n{total} requests in {elapsed:.0f}s; RSS over the last two thirds: min {min(later):.1f}, "
        f"max {max(later):.1f} MiB (growth {max(later) - min(later):.1f} MiB)"
    )


class _Discard(list):  # type: ignore[type-arg]
    def append(self, item: object) -> None:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=300_000)
    parser.add_argument("--keys", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--every", type=int, default=25_000)
    parser.add_argument("--max-entries", type=int, default=50_000)
    args = parser.parse_args()
    uvloop.run(soak(args.requests, args.keys, args.concurrency, args.every, args.max_entries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
