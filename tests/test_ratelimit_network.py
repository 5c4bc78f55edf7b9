"""The whole budget over a real network: slots released as early as the measured network proves safe.

The estimator (`NetworkCredit`) is checked on exact numbers; the guarantee — no -1003 from the exchange,
more of the budget used than holding every slot until answer + window — through a running Seawall whose
exchange (the simulator) sits behind a delaying relay (`delay_relay.py`: every byte late by a fixed
one-way delay plus jitter, requests overtaking each other on different connections), including the edge
cases: the round trip grows suddenly, the exchange's clock jumps, the first requests come before any
measurement. The full bars (15 ms each way, 50 bots, 1 s windows) are BENCHMARKS.md's
(`benchmarks/ratelimit_network.py`).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from delay_relay import DelayRelay
from fixtures_proxy import StartSeawall, wait_until
from fixtures_simulator import SignedClient, SimFactory

from proxy.app import Seawall
from proxy.simulator import Simulator
from proxy.simulator.symbols import resting_order
from proxy.state.ratelimit_network import NetworkCredit, exchange_stamp, stamp_pattern

_ids = itertools.count()
MS = 0.001


# --- the estimator, on exact numbers -------------------------------------------------------------------


def test_no_credit_before_enough_round_trips_then_the_minimum_round_trip() -> None:
    network = NetworkCredit(min_samples=3, use_stamps=False)
    assert network.credit(0.0, 0.040) == 0.0  # the first requests: no measurement, the full hold
    assert network.credit(1.0, 1.030) == 0.0
    assert network.credit(2.0, 2.050) == pytest.approx(0.030)  # three measured: the fastest of them
    assert network.credit(3.0, 3.020) == pytest.approx(0.020)  # a faster path counts at once


def test_a_credit_is_never_more_than_the_request_own_round_trip() -> None:
    network = NetworkCredit(min_samples=1, use_stamps=False)
    network.credit(0.0, 0.030)
    assert network.credit(1.0, 1.031) == pytest.approx(0.030)
    network = NetworkCredit(min_samples=1, use_stamps=False)
    assert network.credit(5.0, 5.0 - 0.001) == 0.0  # a clock that went backwards proves nothing


def test_when_the_round_trip_grows_the_old_minimum_holds_until_it_ages_out() -> None:
    network = NetworkCredit(min_samples=1, period=6.0, use_stamps=False)
    for second in range(5):
        network.credit(second, second + 0.030)
    # The path is now 100 ms longer: the credit stays at the old, smaller minimum — the safe side.
    assert network.credit(5.0, 5.130) == pytest.approx(0.030)
    for second in range(6, 13):
        network.credit(second, second + 0.130)
    assert network.credit(13.0, 13.130) == pytest.approx(0.130)  # the old samples aged out


def stamped(network: NetworkCredit, sent: float, up: float, down: float, offset: float = 0.0) -> float:
    """A request sent at `sent` that reaches the exchange `up` later and whose answer comes back `down`
    after the exchange stamped it, its clock `offset` ahead of ours (whole milliseconds, as sent)."""
    stamp_ms = int((sent + up + offset) * 1000)
    return network.credit(sent, sent + up + down, stamp_ms)


def test_exchange_time_credits_a_slower_way_back() -> None:
    network = NetworkCredit(min_samples=1)
    for i in range(5):
        stamped(network, i * 0.1, 0.015, 0.015, offset=1000.0)
    # This answer came back 8 ms slower than the fastest: its slot may go 8 ms earlier (less 1 ms, the
    # stamps' resolution), on top of the 30 ms round trip.
    credit = stamped(network, 1.0, 0.015, 0.023, offset=1000.0)
    assert credit == pytest.approx(0.030 + 0.007, abs=0.0011)
    # A slower way *there* earns nothing: the exchange may have counted it as late as it stamped it.
    assert stamped(network, 2.0, 0.023, 0.015, offset=1000.0) == pytest.approx(0.030, abs=0.0011)


def test_an_exchange_clock_stepped_back_earns_no_credit_and_is_reported() -> None:
    network = NetworkCredit(min_samples=1)
    for i in range(5):
        stamped(network, i * 0.1, 0.015, 0.015, offset=1000.0)
    # The exchange's clock steps back 2 s: its stamps now look 2 s "earlier", as if every answer had
    # taken 2 s longer to come back. Not one credit beyond the round trip is given for that.
    credits = [stamped(network, 1.0 + i * 0.1, 0.015, 0.015, offset=998.0) for i in range(5)]
    assert max(credits) <= 0.030 + 0.0011
    assert network.steps == 1
    # After the step the stamps are read against the new clock: a slower way back is credited again.
    assert stamped(network, 2.0, 0.015, 0.025, offset=998.0) == pytest.approx(0.039, abs=0.0011)


def test_an_exchange_clock_stepped_forward_earns_no_credit() -> None:
    network = NetworkCredit(min_samples=1)
    for i in range(5):
        stamped(network, i * 0.1, 0.015, 0.015, offset=1000.0)
    credits = [stamped(network, 1.0 + i * 0.1, 0.015, 0.015, offset=1005.0) for i in range(5)]
    assert max(credits) <= 0.030 + 0.0011 and network.steps == 1


def test_the_exchange_time_is_read_only_from_the_end_of_the_envelope() -> None:
    pattern = stamp_pattern("timestamp")
    assert exchange_stamp(b'{"success":true,"data":{"a":1},"timestamp":1702989203989}', pattern) == (
        1702989203989
    )
    assert exchange_stamp(b'{"success": true, "timestamp": 1702989203989 }\n', pattern) == 1702989203989
    # A nested field, a seconds string (WOO X v1), or none: no stamp.
    assert exchange_stamp(b'{"data":{"timestamp":1702989203989}}', pattern) is None
    assert exchange_stamp(b'{"success":true,"timestamp":"1639980423.855"}', pattern) is None
    assert exchange_stamp(b'{"success":false,"code":-1003,"message":"x"}', pattern) is None


# --- through Seawall, the exchange far away ------------------------------------------------------------

LIMIT, WINDOW = 5, 0.3


@pytest.fixture
async def far_sim(sim_factory: SimFactory) -> AsyncIterator[tuple[Simulator, DelayRelay]]:
    """The simulator (placements LIMIT per WINDOW per key, counted on arrival) behind a relay 20 ms away."""
    sim = await sim_factory("orderly", limits={"order_create": (LIMIT, WINDOW)})
    relay = DelayRelay("127.0.0.1", sim.port or 0, delay=0.020, seed=7)
    await relay.start()
    yield sim, relay
    await relay.stop()


async def far_seawall(
    start_seawall: StartSeawall, relay: DelayRelay, backend: dict[str, Any], **network: Any
) -> Seawall:
    rule = {"name": "order.place", "routes": ["order.place"], "limit": LIMIT, "window": WINDOW,
            "max_wait": 3.0}  # fmt: skip
    ratelimit = {"rules": [rule], "network": {"min_samples": 5, **network}, "learning": {"enabled": False}}
    return await start_seawall("orderly", relay.url, ratelimit=ratelimit, **backend)


async def placing(bot: SignedClient, clients: int, seconds: float) -> list[float]:
    """`clients` bots placing orders as fast as answers come back; when each placement was accepted."""
    placed: list[float] = []
    stop_at = time.monotonic() + seconds

    async def client() -> None:
        while time.monotonic() < stop_at:
            answer = await bot.orderly("POST", "/v1/order", resting_order(f"n{next(_ids)}"))
            if answer.status == 200:
                placed.append(time.monotonic())

    await asyncio.gather(*(client() for _ in range(clients)))
    return sorted(placed)


def goodput(placed: list[float]) -> float:
    """Window / mean gap between the k-th and (k+N)-th placement: one slot's consecutive uses."""
    gaps = [later - earlier for earlier, later in zip(placed, placed[LIMIT:], strict=False)]
    return WINDOW / (sum(gaps) / len(gaps))


@pytest.mark.slow
async def test_far_away_exchange_no_1003_and_more_of_the_budget_than_holding_past_the_answer(
    far_sim: tuple[Simulator, DelayRelay],
    sim_http: aiohttp.ClientSession,
    start_seawall: StartSeawall,
    backend: dict[str, Any],
) -> None:
    sim, relay = far_sim
    relay.jitter = 0.005  # requests overtake each other
    seawall = await far_seawall(start_seawall, relay, backend)
    assert sim.demo_credentials is not None
    bot = SignedClient(sim_http, seawall.proxy_url, sim.demo_credentials)
    placed = await placing(bot, clients=15, seconds=3.0)
    snapshot = sim.snapshot()
    assert "-1003" not in snapshot["answers_by_code"]
    assert snapshot["max_in_window"]["order_create"] <= LIMIT
    network = seawall.status()["ratelimit"]["network"]
    assert network["min_round_trip_ms"] >= 40.0 and network["last_credit_ms"] >= 40.0
    # Holding every slot until its answer + window costs a round trip (>= 40 ms) per 300 ms window:
    # at most 0.3 / 0.345 = 0.87 of the budget. Released by what the network proves: close to all of it.
    assert goodput(placed[2 * LIMIT :]) >= 0.92


@pytest.mark.slow
async def test_first_requests_hold_the_full_window_later_ones_are_released_earlier(
    far_sim: tuple[Simulator, DelayRelay],
    sim_http: aiohttp.ClientSession,
    start_seawall: StartSeawall,
    backend: dict[str, Any],
) -> None:
    sim, relay = far_sim
    relay.delay = 0.040  # an 80 ms round trip: the difference is plain to see
    seawall = await far_seawall(start_seawall, relay, backend, min_samples=LIMIT + 1)
    assert sim.demo_credentials is not None
    bot = SignedClient(sim_http, seawall.proxy_url, sim.demo_credentials)

    async def burst_then_one() -> float:
        """LIMIT placements at once, then one more: how long after the burst's answers it was answered."""
        burst = [bot.orderly("POST", "/v1/order", resting_order(f"f{next(_ids)}")) for _ in range(LIMIT)]
        assert [a.status for a in await asyncio.gather(*burst)] == [200] * LIMIT
        answered = time.monotonic()
        assert (await bot.orderly("POST", "/v1/order", resting_order(f"f{next(_ids)}"))).status == 200
        return time.monotonic() - answered

    # Before enough measurements (6 are needed): the 6th goes a full window after the burst's answers,
    # then needs an 80 ms round trip itself.
    assert await burst_then_one() >= WINDOW + 0.065

    def used() -> int:
        return sum(scope["used"] for scope in seawall.status()["ratelimit"]["busiest"])

    await wait_until(lambda: used() == 0)  # the window is empty again
    # Measured now: the 6th is released a round trip earlier, and is answered about a window later.
    assert await burst_then_one() <= WINDOW + 0.050
    assert "-1003" not in sim.snapshot()["answers_by_code"]


@pytest.mark.slow
async def test_when_the_round_trip_grows_suddenly_no_1003(
    far_sim: tuple[Simulator, DelayRelay],
    sim_http: aiohttp.ClientSession,
    start_seawall: StartSeawall,
    backend: dict[str, Any],
) -> None:
    sim, relay = far_sim
    relay.delay = 0.005
    seawall = await far_seawall(start_seawall, relay, backend)
    assert sim.demo_credentials is not None
    bot = SignedClient(sim_http, seawall.proxy_url, sim.demo_credentials)
    traffic = asyncio.ensure_future(placing(bot, clients=15, seconds=3.0))
    await wait_until(lambda: seawall.status()["ratelimit"]["network"]["last_credit_ms"] > 0)
    relay.delay = 0.060  # the path grows 11-fold, mid-traffic, with requests in flight
    placed = await traffic
    snapshot = sim.snapshot()
    assert "-1003" not in snapshot["answers_by_code"] and len(placed) > 3 * LIMIT
    assert snapshot["max_in_window"]["order_create"] <= LIMIT
    # The credit stayed at the fastest round trip of the period (the short path): the safe side.
    assert seawall.status()["ratelimit"]["network"]["min_round_trip_ms"] < 20.0


@pytest.mark.slow
async def test_when_the_exchange_clock_jumps_no_1003(
    far_sim: tuple[Simulator, DelayRelay],
    sim_http: aiohttp.ClientSession,
    start_seawall: StartSeawall,
    backend: dict[str, Any],
) -> None:
    sim, relay = far_sim
    relay.jitter = 0.005
    seawall = await far_seawall(start_seawall, relay, backend)
    assert sim.demo_credentials is not None
    bot = SignedClient(sim_http, seawall.proxy_url, sim.demo_credentials)
    traffic = asyncio.ensure_future(placing(bot, clients=15, seconds=4.0))

    def network() -> dict[str, Any]:
        return dict(seawall.status()["ratelimit"]["network"])

    await wait_until(lambda: network()["exchange_time"]["stamps"] >= 10)
    relay.stamp_shift_ms = -2000  # its clock steps back 2 s: every answer looks 2 s slower coming back
    await wait_until(lambda: network()["exchange_time"]["clock_steps"] >= 1)
    relay.stamp_shift_ms = 3000  # then 5 s forward
    await wait_until(lambda: network()["exchange_time"]["clock_steps"] >= 2)
    await traffic
    snapshot = sim.snapshot()
    assert "-1003" not in snapshot["answers_by_code"]
    assert snapshot["max_in_window"]["order_create"] <= LIMIT
