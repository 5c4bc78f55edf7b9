"""Fair share within one key: bots that share a rule's budget take turns.

Bots are told apart by an `X-Seawall-Client` header (stripped before forwarding) or, without it, by their
address. A bot with many requests queued cannot make a bot with one wait behind them: the polite bot waits
for about one slot interval, whatever the greedy one queues; weights share the budget in proportion; a bot
alone still gets the whole budget. Against a recording upstream that answers at once, on both backends.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from fixtures_proxy import RecordingUpstream, StartSeawall, wait_until

from proxy.app import Seawall

LIMIT, WINDOW = 4, 0.4
SLOT = WINDOW / LIMIT  # 100 ms: with the budget in use, a slot comes free about this often


async def fair_seawall(
    start_seawall: StartSeawall, upstream: RecordingUpstream, backend: dict[str, Any], **fair: Any
) -> Seawall:
    rule = {"name": "orders.list", "routes": ["orders.list"], "limit": LIMIT, "window": WINDOW,
            "max_wait": 10.0}  # fmt: skip
    ratelimit = {"rules": [rule], "fair_share": fair}
    return await start_seawall("orderly", upstream.url, ratelimit=ratelimit, **backend)


async def get_orders(session: aiohttp.ClientSession, url: str, bot: str | None = None) -> float:
    """One request; its latency in seconds (it must be answered 200)."""
    headers = {"orderly-key": "ed25519:shared-key"}
    if bot is not None:
        headers["X-Seawall-Client"] = bot
    started = time.monotonic()
    async with session.get(url + "/v1/orders?symbol=PERP_ETH_USDC", headers=headers) as answer:
        await answer.read()
        assert answer.status == 200, await answer.text()
    return time.monotonic() - started


async def greedy(
    session: aiohttp.ClientSession,
    url: str,
    bot: str | None,
    clients: int,
    stop: asyncio.Event,
    count: asyncio.Event | None = None,
) -> int:
    """`clients` loops sending as fast as answers come back until `stop`; how many were answered after
    `count` was set (the first burst goes at once, before any turns) and before `stop` (those still
    queued then are served later)."""
    answered = 0

    async def loop() -> None:
        nonlocal answered
        while not stop.is_set():
            await get_orders(session, url, bot)
            answered += 1 if (count is None or count.is_set()) and not stop.is_set() else 0

    await asyncio.gather(*(loop() for _ in range(clients)))
    return answered


async def test_a_polite_bot_waits_about_one_slot_behind_a_greedy_one(
    upstream: RecordingUpstream, start_seawall: StartSeawall, backend: dict[str, Any]
) -> None:
    seawall = await fair_seawall(start_seawall, upstream, backend)
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        hog = asyncio.ensure_future(greedy(session, seawall.proxy_url, "greedy", 16, stop))
        await wait_until(lambda: seawall.status()["ratelimit"]["queued"] >= 10)  # its backlog is long
        waits = []
        for _ in range(6):
            waits.append(await get_orders(session, seawall.proxy_url, "polite"))
            await asyncio.sleep(SLOT * 1.5)  # a polite bot: one request now and then
        stop.set()
        await hog
    # First come, first served, it would queue behind ~12 of the greedy bot's requests: over a second.
    # Its first request finds the slots coming free together (the greedy bot took them in one burst) and
    # waits for the next of them; once two bots contend, slots come free one slot interval apart.
    assert waits[0] <= WINDOW + 0.15, waits
    assert max(waits[1:]) <= SLOT + 0.1, waits
    assert all("X-Seawall-Client" not in seen.headers for seen in upstream.seen)


async def test_weights_share_the_budget_in_proportion(
    upstream: RecordingUpstream, start_seawall: StartSeawall, backend: dict[str, Any]
) -> None:
    seawall = await fair_seawall(start_seawall, upstream, backend, weights={"big": 3, "small": 1})
    stop, count = asyncio.Event(), asyncio.Event()
    async with aiohttp.ClientSession() as session:
        big = asyncio.ensure_future(greedy(session, seawall.proxy_url, "big", 8, stop, count))
        small = asyncio.ensure_future(greedy(session, seawall.proxy_url, "small", 8, stop, count))
        await wait_until(lambda: len(upstream.seen) >= 2 * LIMIT, timeout=10)
        count.set()
        await wait_until(lambda: len(upstream.seen) >= 10 * LIMIT, timeout=10)  # 8 windows counted
        stop.set()
        counts = await asyncio.gather(big, small)
    # Equal concurrency: first come, first served would give each about half.
    assert 2.0 <= counts[0] / counts[1] <= 4.5, counts


async def test_bots_are_told_apart_by_their_address_without_the_header(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    seawall = await fair_seawall(start_seawall, upstream, {})
    stop, count = asyncio.Event(), asyncio.Event()
    many = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))  # two bots on two loopback addresses
    few = aiohttp.TCPConnector(local_addr=("127.0.0.3", 0))
    async with aiohttp.ClientSession(connector=many) as first, aiohttp.ClientSession(connector=few) as second:
        hog = asyncio.ensure_future(greedy(first, seawall.proxy_url, None, 12, stop, count))
        modest = asyncio.ensure_future(greedy(second, seawall.proxy_url, None, 3, stop, count))
        await wait_until(lambda: len(upstream.seen) >= 2 * LIMIT, timeout=10)
        count.set()
        await wait_until(lambda: len(upstream.seen) >= 10 * LIMIT, timeout=10)
        stop.set()
        counts = await asyncio.gather(hog, modest)
    # Four times the requests in flight, yet the same share (first come, first served: about 4 to 1).
    assert counts[0] / counts[1] <= 1.6, counts
    assert {seen.headers.get("X-Seawall-Client") for seen in upstream.seen} == {None}


async def test_a_bot_alone_still_gets_the_whole_budget(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    seawall = await fair_seawall(start_seawall, upstream, {})
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        hog = asyncio.ensure_future(greedy(session, seawall.proxy_url, "alone", 12, stop))
        await wait_until(lambda: len(upstream.seen) >= 6 * LIMIT, timeout=10)
        elapsed = time.monotonic() - started
        stop.set()
        await hog
    # 6 windows' worth in a little over 5 windows (the first burst goes at once): never paced alone.
    assert elapsed <= 5 * WINDOW + 0.3, elapsed
