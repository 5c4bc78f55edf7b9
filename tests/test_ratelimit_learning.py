"""Learning from the exchange: when something else spends the key, the limit comes down, then back.

A bot that talks to the exchange directly, on the same key, makes it answer -1003 although Seawall's own
window was within the limit. Seawall then lowers that scope's effective limit (multiplicatively, never
below `min_share` of the configured one), restores it additively over time (and the level that was refused
only after `probe_after`), logs it and shows it in /status and `seawall_ratelimit_effective_limit{rule}`;
the exchange's X-RateLimit-* headers are followed. The arithmetic on a manual clock; the convergence
through Seawall to the simulator with a real bypassing bot; the headers against a recording upstream.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

import aiohttp
import pytest
from aiohttp import web
from fixtures_proxy import RecordingUpstream, StartSeawall, wait_until
from fixtures_simulator import ManualClock, SignedClient, SimFactory

from proxy.app import Seawall
from proxy.simulator.symbols import resting_order
from proxy.state.ratelimit_learning import LearnedLimits

_ids = itertools.count()


def sample(seawall: Seawall, name: str, **labels: str) -> float:
    return seawall.metrics.registry.get_sample_value(name, labels) or 0.0


# --- the arithmetic ---------------------------------------------------------------------------------------


def test_lowered_multiplicatively_and_bounded_restored_additively() -> None:
    clock = ManualClock(0.0)
    learned = LearnedLimits(decrease=0.8, min_share=0.5, restore_every=10.0, probe_after=100.0, clock=clock)
    assert learned.limit("r", "k", 10, 0.0) == 10
    assert learned.lower("r", "k", "alias", 10, admitted_at=0.0, now=1.0)
    assert learned.limit("r", "k", 10, 1.0) == 8  # 10 x 0.8
    # A refusal of a request admitted before the lowering went out under the old limit: nothing new.
    assert not learned.lower("r", "k", "alias", 10, admitted_at=0.5, now=1.1)
    assert learned.lower("r", "k", "alias", 10, admitted_at=2.0, now=3.0)
    assert learned.limit("r", "k", 10, 3.0) == 7  # ceil(8 x 0.8)
    for at in (4.0, 5.0, 6.0):
        learned.lower("r", "k", "alias", 10, admitted_at=at, now=at)
    assert learned.limit("r", "k", 10, 6.0) == 5  # never below half of the configured 10
    clock.now = 6.0
    assert learned.lowest("r", 10) == 5
    # One slot back per 10 s, up to one below the level refused last (5): stays at 5 until the probe...
    assert learned.limit("r", "k", 10, 26.0) == 5
    # ...after 100 s without a refusal, then up, one slot per 10 s, to the configured limit.
    assert learned.limit("r", "k", 10, 106.0) == 10
    clock.now = 106.0
    assert learned.lowest("r", 10) == 10 and len(learned) == 0


def test_restoring_stops_one_below_the_refused_level() -> None:
    learned = LearnedLimits(decrease=0.5, min_share=0.1, restore_every=1.0, probe_after=60.0)
    learned.lower("r", "k", "alias", 10, admitted_at=0.0, now=0.0)  # refused at 10: down to 5
    assert [learned.limit("r", "k", 10, t) for t in (0.0, 1.0, 3.0, 20.0)] == [5, 6, 8, 9]


def test_the_exchange_announced_limit_caps_the_configured_one() -> None:
    learned = LearnedLimits()
    assert not learned.cap("r", "k", "alias", 10, 12, now=0.0)  # never above the configured limit
    assert learned.cap("r", "k", "alias", 10, 4, now=0.0)
    assert learned.limit("r", "k", 10, 1.0) == 4


# --- a bot that bypasses Seawall, on the same key ---------------------------------------------------------

LIMIT, WINDOW = 5, 0.5


@pytest.mark.slow
async def test_a_bypassing_bot_lowers_the_limit_until_the_exchange_stops_refusing(
    sim_factory: SimFactory,
    sim_http: aiohttp.ClientSession,
    start_seawall: StartSeawall,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sim = await sim_factory("orderly", limits={"order_create": (LIMIT, WINDOW)})
    rule = {"name": "order.place", "routes": ["order.place"], "limit": LIMIT, "window": WINDOW,
            "max_wait": 2.0}  # fmt: skip
    seawall = await start_seawall("orderly", sim.base_url, ratelimit={"rules": [rule]})
    assert sim.demo_credentials is not None
    direct = SignedClient(sim_http, sim.base_url, sim.demo_credentials)
    through = SignedClient(sim_http, seawall.proxy_url, sim.demo_credentials)
    refused_at: list[float] = []  # the exchange's own -1003s to requests sent through Seawall
    placed = 0
    stop_at = time.monotonic() + 5.0

    async def bypassing() -> None:  # 2 per window, straight to the exchange: 4/s on a 10/s budget
        while time.monotonic() < stop_at:
            await direct.orderly("POST", "/v1/order", resting_order(f"d{next(_ids)}"))
            await asyncio.sleep(WINDOW / 2)

    async def bot() -> None:
        nonlocal placed
        while time.monotonic() < stop_at:
            answer = await through.orderly("POST", "/v1/order", resting_order(f"l{next(_ids)}"))
            if answer.status == 200:
                placed += 1
            elif "X-Seawall" not in answer.headers:
                refused_at.append(time.monotonic())
                await asyncio.sleep(0.05)
            else:
                await asyncio.sleep(0.05)

    with caplog.at_level(logging.WARNING, logger="seawall"):
        await asyncio.gather(bypassing(), *(bot() for _ in range(8)))
    # 5 -> 4 (-> 3): with the bypass's 2 per window, 3 always fit; at 4 the exchange refuses whichever
    # request comes 6th in a window, often the bypass's own. Either way, Seawall's refusals stop.
    assert refused_at, "the bypassing bot never made the exchange refuse"
    assert not [at for at in refused_at if at > stop_at - 2.5], refused_at
    (lowered,) = seawall.status()["ratelimit"]["lowered"]
    assert (lowered["rule"], lowered["limit"]) == ("order.place", LIMIT) and lowered["effective"] in (3, 4)
    assert sample(seawall, "seawall_ratelimit_effective_limit", rule="order.place") == lowered["effective"]
    assert any("rate limit lowered" in record.message for record in caplog.records)
    assert placed >= 3 * (5.0 / WINDOW) * 0.6  # the lowered budget is still used


# --- the exchange's rate-limit headers ----------------------------------------------------------------


async def get_orders(session: aiohttp.ClientSession, url: str) -> aiohttp.ClientResponse:
    async with session.get(url + "/v1/orders?symbol=X", headers={"orderly-key": "ed25519:k"}) as answer:
        await answer.read()
        return answer


async def test_the_exchange_rate_limit_headers_are_followed(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    headers: dict[str, str] = {"X-RateLimit-Limit": "2"}

    async def respond(request: web.BaseRequest, body: bytes) -> web.StreamResponse:
        return web.json_response({"success": True, "data": {}}, headers=headers)

    upstream.responder = respond
    rule = {"name": "orders.list", "routes": ["orders.list"], "limit": 10, "window": 1.0, "max_wait": 0.2}
    seawall = await start_seawall("orderly", upstream.url, ratelimit={"rules": [rule]})
    async with aiohttp.ClientSession() as session:
        assert (await get_orders(session, seawall.proxy_url)).status == 200
        # The exchange says its limit is 2 (ours: 10): the third request in the window waits, in vain.
        answers = [await get_orders(session, seawall.proxy_url) for _ in range(2)]
        assert [a.status for a in answers] == [200, 429]
        assert sample(seawall, "seawall_ratelimit_effective_limit", rule="orders.list") == 2
    await wait_until(lambda: seawall.status()["ratelimit"]["busiest"][0]["used"] == 0, timeout=3)
    headers.update({"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "2"})
    async with aiohttp.ClientSession() as session:
        assert (await get_orders(session, seawall.proxy_url)).status == 200
        # Nothing left until the reset, 2 s away: the scope cools down, the next is answered locally.
        cooled = await get_orders(session, seawall.proxy_url)
    assert (cooled.status, cooled.headers["X-Seawall"]) == (429, "ratelimit")
    assert seawall.status()["ratelimit"]["busiest"][0]["cooling_for"] > 1.5
    assert len(upstream.seen) == 3
