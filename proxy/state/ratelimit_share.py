"""This replica's share of every rate-limit budget: how it decides while the shared state is unreachable.

Guarantee: with `replicas` replicas on one budget (`state.redis.replicas`), each decides alone on at most
floor(limit / replicas) slots of every scope (at least 1), so together they stay within the budget without
talking to each other. The switch does not double the window: the share is first seeded (`seed`) with the
slots this replica last saw in use in the shared state, held until they are surely free. Every slot the
share admits or holds is remembered, so that `hand_over` can list it for the shared state when it returns;
`clear` then starts the share empty.

It decides and reports only (verdicts, the entries to hand over): talking to Redis and answering bots are
the callers' jobs.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from proxy.logs import log
from proxy.state.ratelimit import Claim, MemoryRateLimitState, ScopeUsage, Verdict

MAX_HOLDS = 10_000  # holds remembered for the hand-over; beyond, the oldest (nearest to expiry) is dropped


@dataclass(frozen=True, slots=True)
class Handover:
    """Slots the share took that the shared state must count when it returns."""

    rule: str
    scope: str
    slots: int
    seconds: float  # held after an answer: what is left of the hold; in flight: the claim's hold
    in_flight: bool  # still waiting for its answer: its release comes later, under `ticket`
    ticket: str  # in flight: the admission's ticket; held: "" (the receiver names them)
    only_if_lost: bool  # first seen in the shared state: restore them only if it lost them (a restart)


@dataclass(frozen=True, slots=True)
class _Hold:
    rule: str
    scope: str
    slots: int
    until: float
    seen_in_shared: bool


class LocalShare:
    """A `MemoryRateLimitState` on each budget's share, plus what it took, for the hand-over."""

    def __init__(self, replicas: int) -> None:
        self.replicas = replicas
        self.decisions = 0  # decided here since the last `clear` (shown in /status)
        self._state = MemoryRateLimitState()
        self._flying: dict[str, Sequence[Claim]] = {}  # admitted here, not yet answered: ticket -> claims
        self._holds: deque[_Hold] = deque()

    def share(self, claims: Sequence[Claim]) -> list[Claim]:
        """The claims with their limits cut to this replica's share."""
        return [dataclasses.replace(claim, limit=max(1, claim.limit // self.replicas)) for claim in claims]

    async def acquire(
        self, claims: Sequence[Claim], ahead: Sequence[int], now: float, ticket: str
    ) -> Verdict:
        """Decide on the share; an admitted verdict carries `ticket`, which `release` must be given."""
        if self.decisions == 0:
            log.warning(
                "rate limits decided on this replica's share of each budget",
                extra={"fields": {"replicas": self.replicas}},
            )
        self.decisions += 1
        verdict = await self._state.acquire(self.share(claims), ahead, now)
        if not verdict.admitted:
            return verdict
        self._flying[ticket] = claims
        return dataclasses.replace(verdict, ticket=ticket)

    async def release(self, claims: Sequence[Claim], now: float, ticket: str, credit: float = 0.0) -> bool:
        """Start the hold of a slot this share admitted (shortened by `credit`); False if `ticket` is not
        one of its own (admitted by the shared state, or already handed over to it)."""
        if self._flying.pop(ticket, None) is None:
            return False
        await self._state.release(self.share(claims), now, credit=credit)
        for claim in claims:
            until = now + max(0.0, claim.hold - credit)
            self._hold(_Hold(claim.rule, claim.scope, claim.cost, until, False))
        return True

    def hold_answered(
        self, claims: Sequence[Claim], answered: float, now: float, credit: float = 0.0
    ) -> None:
        """Count the hold of a request the shared state admitted but cannot be told of yet (its release is
        kept for it, so it is not handed over from here)."""
        for claim in self.share(claims):
            self._state.occupy(claim, claim.cost, answered + max(0.0, claim.hold - credit), now)

    def seed(self, claim: Claim, slots: int, until: float, cooling_until: float, now: float) -> None:
        """`slots` of the claim's scope were last seen in use in the shared state, surely free by `until`
        (its cool-down runs to `cooling_until`): count them here until then."""
        (shared,) = self.share((claim,))
        self._state.occupy(shared, slots, until, now, cooling_until)
        self._hold(_Hold(claim.rule, claim.scope, slots, until, True))

    async def cool_down(self, claims: Sequence[Claim], until: Sequence[float], now: float) -> None:
        await self._state.cool_down(self.share(claims), until, now)

    def _hold(self, hold: _Hold) -> None:
        if len(self._holds) >= MAX_HOLDS:
            self._holds.popleft()
        self._holds.append(hold)

    def hand_over(self, now: float) -> list[Handover]:
        """What the shared state must count on its return: the admissions still in flight, then the holds
        still running at `now`."""
        entries = [
            Handover(claim.rule, claim.scope, claim.cost, claim.hold, True, ticket, False)
            for ticket, claims in self._flying.items()
            for claim in claims
        ]
        entries += [
            Handover(hold.rule, hold.scope, hold.slots, hold.until - now, False, "", hold.seen_in_shared)
            for hold in self._holds
            if hold.until > now
        ]
        return entries

    def clear(self) -> int:
        """The hand-over landed: forget everything, start empty. Returns the decisions made meanwhile."""
        decisions, self.decisions = self.decisions, 0
        self._flying.clear()
        self._holds.clear()
        self._state = MemoryRateLimitState()
        return decisions

    def __len__(self) -> int:
        return len(self._state)

    def usage(self, now: float) -> list[ScopeUsage]:
        return self._state.usage(now)

    def busiest_share(self, rule: str, now: float) -> float:
        return self._state.busiest_share(rule, now)

    def drop_idle(self, now: float, idle_for: float) -> int:
        return self._state.drop_idle(now, idle_for)
