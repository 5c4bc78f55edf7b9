"""The rate-limit wait formula, in its two forms, checked against one table of cases.

A refused request is told a lower bound on its wait: the policy uses it to answer -1003 at once when the
wait is known to exceed the max wait (with it as Retry-After), or to sleep until then. The formula lives
twice: in Python (`slot_wait`, used by `MemoryRateLimitState` and by each replica's local share) and in
Lua (the ACQUIRE script of `RedisRateLimitState`). Each case below builds the same scope in both — slots
in flight, slots held after their answer until known release times, a cool-down — through the states'
own interface, on the same manual clock (Redis with `server_clock=False`), and asks for the same claim.
Both must give the table's wait: should one form drift from the other, a bot would be told one Retry-After
on one backend and another on the other, or be refused where it would have fit.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from fixtures_redis import RedisServer

from proxy.config import RedisConfig
from proxy.metrics import Metrics
from proxy.state.ratelimit import Claim, MemoryRateLimitState, RateLimitState
from proxy.state.ratelimit_redis import RedisRateLimitState
from proxy.state.redis_link import RedisLink

NOW = 1000.0
SET_UP_AT = NOW - 5.0  # every set-up admission, before any release in the table (holds are <= 2 s)
TAKEN_UNDER = 1000  # set-up admissions always fit: they may hold more than the case's (lowered) limit


@dataclass(frozen=True)
class Case:
    name: str
    limit: int
    wait: float  # expected: 0.0 means admitted now
    in_flight: int = 0  # slots whose request still waits for its answer
    releases: tuple[tuple[float, int], ...] = ()  # (seconds from now, slots) held after their answer
    ahead: int = 0  # slots reserved for requests queued in front
    cost: int = 1
    hold: float = 1.0
    cooling: float = 0.0  # seconds of cool-down left


# fmt: off
CASES = [
    Case("a free slot: admitted", limit=2, in_flight=1, wait=0.0),
    Case("full: the next known release", limit=2, in_flight=1, releases=((0.3, 1),), wait=0.3),
    Case("full, all in flight: one hold from now", limit=2, in_flight=2, wait=1.0),
    Case("behind one queued request", limit=2, in_flight=1, releases=((0.3, 1),), ahead=1, wait=1.0),
    Case("free slots are taken before releases", limit=3, releases=((0.2, 1), (0.6, 1)), ahead=1, wait=0.2),
    Case("a second round: one hold after the first", limit=2, in_flight=1, releases=((0.3, 1),), ahead=2,
         wait=1.3),
    Case("rounds > 1 with a long hold", limit=1, in_flight=1, ahead=2, hold=2.0, wait=6.0),
    Case("a cost of several slots", limit=4, in_flight=1, releases=((0.1, 1), (0.4, 2)), cost=2, wait=0.4),
    Case("released slots no longer count", limit=2, in_flight=1, releases=((-0.1, 1), (0.4, 1)), wait=0.4),
    Case("cost > limit: never", limit=2, cost=3, wait=math.inf),
    Case("cost > limit: never, cooling or not", limit=2, cost=3, cooling=1.0, wait=math.inf),
    Case("over the limit after a limit change: the excess frees first", limit=2,
         releases=((0.2, 1), (0.7, 2)), wait=0.7),
    Case("over the limit after a limit change, into a second round", limit=2, in_flight=3,
         releases=((0.5, 1),), wait=1.5),
    Case("cooling dominates a free slot", limit=2, cooling=2.0, wait=2.0),
    Case("cooling dominates a known release", limit=1, releases=((0.4, 1),), cooling=1.5, wait=1.5),
    Case("a slot wait dominates cooling", limit=1, in_flight=1, cooling=0.5, wait=1.0),
]
# fmt: on


@pytest.fixture(params=["memory", "redis"])
def redis_url(request: pytest.FixtureRequest) -> str | None:
    """None for the memory state; for Redis, the URL of a real redis-server started for the test."""
    if request.param == "memory":
        return None
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


@pytest.fixture
async def rate_state(redis_url: str | None) -> AsyncIterator[RateLimitState]:
    """The memory state, or the Redis one stamping with the caller's clock (`server_clock=False`)."""
    if redis_url is None:
        yield MemoryRateLimitState()
        return
    link = RedisLink(RedisConfig(url=redis_url), Metrics())
    await link.start()
    state = RedisRateLimitState(link, in_flight_expiry=10.0, server_clock=False)
    try:
        yield state
    finally:
        await state.close()
        await link.close()


async def build(state: RateLimitState, case: Case) -> Claim:
    """Set the case's scope up through the state's own interface; the claim to ask with."""
    claim = Claim("r", case.name, "alias", case.limit, case.hold, case.cost)

    def taking(slots: int) -> tuple[Claim]:
        return (Claim("r", case.name, "alias", TAKEN_UNDER, case.hold, slots),)

    for at, slots in sorted(case.releases):
        verdict = await state.acquire(taking(slots), (0,), SET_UP_AT)
        assert verdict.admitted
        # Answered one hold before its release: held until exactly NOW + at.
        await state.release(taking(slots), NOW + at - case.hold, verdict.ticket)
    if case.in_flight:
        assert (await state.acquire(taking(case.in_flight), (0,), SET_UP_AT)).admitted
    if isinstance(state, RedisRateLimitState):
        await state.settled()  # releases go out in the background
    if case.cooling:
        await state.cool_down((claim,), (NOW + case.cooling,), SET_UP_AT)
    return claim


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_both_forms_of_the_wait_formula_give_the_tables_wait(
    rate_state: RateLimitState, case: Case
) -> None:
    claim = await build(rate_state, case)
    verdict = await rate_state.acquire((claim,), (case.ahead,), NOW)
    assert verdict.admitted == (case.wait == 0.0)
    assert verdict.waits == pytest.approx((case.wait,), abs=1e-5)
    assert verdict.cooling == (case.cooling > 0,)
