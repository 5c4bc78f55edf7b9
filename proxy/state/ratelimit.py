"""Rate-limit state: the slots each (rule, scope) has in use, behind a small interface.

A request admitted by a rule takes `cost` slots of its scope (a batch order costs its number of orders)
and holds them from admission — just before the send — until `hold` seconds (the rule's window plus the
margin) after its answer arrives, less the `credit` its release is given: what the measured network
proves about when the exchange counted it (`ratelimit_network.py`; 0 without a measurement). The exchange
counts a request somewhere between our send and its answer, so a slot held that long is out of the
exchange's sliding window before anyone reuses it, whatever the latency (measured on loopback, 50 clients
on one 10/s budget: a log stamped at send time let 31 requests earn -1003; holding until answer + window,
none). A scope with room is one with `used + cost <= limit` and no cool-down running.

A claim with `enforce=False` (a shadow rule) always fits and takes its slots like any other, so its scope
counts the real traffic; its verdict's wait says how long the request would have waited under it.

The interface, `RateLimitState`:
- `acquire(claims, ahead, now)` takes the slots of every claim or of none (all-or-none across the rules
  a request touches). `ahead[i]` slots stay reserved for requests queued in front of this one in claim
  i's scope, so it is admitted only where they too still fit (FIFO, but a request waiting on another rule
  does not block the others). Refused, it says per claim how long until it would fit (a lower bound:
  `slot_wait`, which the Lua form in `ratelimit_redis_lua.py` mirrors). A state that cannot decide at all
  (its shared store is unreachable and it is configured to fail closed) raises `SharedStateDown`; the
  policy, not the state, turns that into the bot's answer;
- `release(claims, now, ticket, credit)` starts the hold-after-answer countdown (`hold - credit`, never
  below 0) of the slots an admitted verdict's `ticket` names; `cool_down(claims, until)` marks scopes full
  until `until` (the exchange answered -1003 anyway: someone else shares the key);
- `usage(now)`, `busiest_share(rule, now)`, `drop_idle(now, idle_for)`, `describe()` for /status, metrics
  and bounded memory; `close()` once, after the last request.

`MemoryRateLimitState` keeps it in this process. `RedisRateLimitState` (`ratelimit_redis.py`) keeps the
same numbers per scope in Redis for every replica; `proxy/state/backends.py` picks one of them. This
module imports nothing of the proxy: states report (a verdict, `SharedStateDown`), policies answer bots.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar


class SharedStateDown(Exception):
    """The state cannot decide: its shared store is unreachable and it must not decide alone (it is
    configured to fail closed). `retry_after`: when the store is next tried, in seconds."""

    def __init__(self, retry_after: float, detail: str = "shared rate-limit state unreachable") -> None:
        super().__init__(detail)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Claim:
    """One request's claim on one rule: `cost` slots of `scope` (of `limit`) held `hold` s after answer."""

    rule: str
    scope: str  # the scope's key; may contain an API key, so never shown: `label` is
    label: str
    limit: int
    hold: float
    cost: int
    enforce: bool = True  # False: a shadow rule's claim, which always fits (module docstring)


@dataclass(frozen=True, slots=True)
class Verdict:
    admitted: bool
    # Per claim: lower bound on the seconds until it has room (0.0: room now). Admitted, 0.0 for every
    # enforced claim; a shadow claim's is how long it would have waited, had it been enforced.
    waits: tuple[float, ...]
    cooling: tuple[bool, ...]  # per claim: its scope is cooling down after an upstream -1003
    ticket: str = ""  # admitted: names its slots for `release` (a shared state must know whose they are)


@dataclass(frozen=True, slots=True)
class ScopeUsage:
    rule: str
    label: str
    used: int
    limit: int
    cooling_for: float


class RateLimitState(Protocol):
    async def acquire(self, claims: Sequence[Claim], ahead: Sequence[int], now: float) -> Verdict:
        """Take the slots of every claim or of none; may raise `SharedStateDown`."""
        ...

    async def release(
        self, claims: Sequence[Claim], now: float, ticket: str = "", credit: float = 0.0
    ) -> None: ...

    async def cool_down(self, claims: Sequence[Claim], until: Sequence[float], now: float) -> None: ...

    def usage(self, now: float) -> list[ScopeUsage]: ...

    def busiest_share(self, rule: str, now: float) -> float: ...

    def drop_idle(self, now: float, idle_for: float) -> int: ...

    def describe(self) -> dict[str, Any] | None:
        """Where the state lives and how it decides now, for /status (None: nothing to say)."""
        ...

    async def close(self) -> None:
        """Let what is under way finish; called once, after the last request."""
        ...

    def notify_released(self, callback: Callable[[Sequence[Claim]], None]) -> None:
        """Call `callback` with the claims of releases that took effect later than `release` returned
        (a shared state sends them in the background), so that waiters re-plan then."""
        ...


def slot_wait(
    now: float, limit: int, hold: float, used: int, releases: Iterable[tuple[float, int]], needed: int
) -> float:
    """Lower bound on the seconds until the `needed`-th slot from now is free, in a scope of `limit` slots
    with `used` in use, of which `releases` ((release time, slots), sorted) are held after their answer and
    the rest in flight. Cool-downs are not counted here.

    Slot i is next free at t_i (now if free, its release time if known, now + hold if its request is in
    flight) and after each reuse at least `hold` later, so the k-th free moment is at least
    sorted(t)[(k - 1) % limit] + ((k - 1) // limit) * hold. Slots over the limit (a limit lowered while
    they were in use, another replica's different config, a local share seeded with more than its share)
    free first.
    """
    needed += max(0, used - limit)
    index, rounds = (needed - 1) % limit, (needed - 1) // limit
    free = max(0, limit - used)
    if index < free:
        first = now
    else:
        index -= free
        first = now + hold  # a slot whose request is in flight: free at least `hold` from now
        for release, slots in releases:  # known releases are all before now + hold
            if index < slots:
                first = release
                break
            index -= slots
    return max(first + rounds * hold - now, 0.0)


@dataclass(slots=True)
class _Scope:
    label: str
    limit: int
    in_flight: int = 0  # slots of requests still waiting for their answer
    releases: deque[tuple[float, int]] = field(default_factory=deque)  # (release time, slots), sorted
    releasing: int = 0  # the slots in `releases`, so `used` costs O(1) per request
    cooling_until: float = 0.0
    last_used: float = 0.0

    def used(self, now: float) -> int:
        releases = self.releases
        while releases and releases[0][0] <= now:
            self.releasing -= releases.popleft()[1]
        return self.in_flight + self.releasing

    def add_release(self, until: float, slots: int) -> None:
        # Sorted by release time: with a credit per request, a later answer may free its slot earlier.
        if not self.releases or self.releases[-1][0] <= until:
            self.releases.append((until, slots))
        else:
            bisect.insort(self.releases, (until, slots))
        self.releasing += slots

    def wait(self, now: float, limit: int, hold: float, slots_needed: int) -> float:
        """Lower bound on the time until `slots_needed` slots from now fit under `limit` (`slot_wait`),
        and the cool-down is over."""
        wait = slot_wait(now, limit, hold, self.used(now), self.releases, slots_needed)
        return max(wait, self.cooling_until - now)


MAX_SCOPES_PER_RULE = 50_000


class _IdleCandidate(Protocol):
    last_used: float
    cooling_until: float


S = TypeVar("S", bound=_IdleCandidate)


def forget_idle(
    table: dict[str, dict[str, S]], now: float, idle_for: float, used: Callable[[S, float], int]
) -> int:
    """Drop, from a rule -> scope -> record table, the records idle for `idle_for` that hold no slot
    and no cool-down (and rules left empty); how many were dropped."""
    dropped = 0
    for rule in list(table):
        scopes = table[rule]
        for key in [
            key
            for key, record in scopes.items()
            if record.last_used <= now - idle_for and used(record, now) == 0 and record.cooling_until <= now
        ]:
            del scopes[key]
            dropped += 1
        if not scopes:
            del table[rule]
    return dropped


class MemoryRateLimitState:
    """In-process slot accounting. Every method runs without suspending, so each is atomic in asyncio."""

    def __init__(self) -> None:
        self._rules: dict[str, dict[str, _Scope]] = {}

    def __len__(self) -> int:
        return sum(len(scopes) for scopes in self._rules.values())

    def _scope(self, claim: Claim, now: float) -> _Scope:
        scopes = self._rules.setdefault(claim.rule, {})
        scope = scopes.get(claim.scope)
        if scope is None:
            if len(scopes) >= MAX_SCOPES_PER_RULE:
                # Scope keys come from the request (key header, symbol): a flood of made-up ones must not
                # grow memory until the idle sweep. Scopes that hold nothing are lossless to forget.
                self.drop_idle(now, 0.0)
                scopes = self._rules.setdefault(claim.rule, {})  # drop_idle removes emptied rules
            scope = scopes[claim.scope] = _Scope(claim.label, claim.limit, last_used=now)
        return scope

    async def acquire(self, claims: Sequence[Claim], ahead: Sequence[int], now: float) -> Verdict:
        scopes = [self._scope(claim, now) for claim in claims]
        room = [
            scope.cooling_until <= now and scope.used(now) + queued + claim.cost <= claim.limit
            for claim, scope, queued in zip(claims, scopes, ahead, strict=True)
        ]
        if all(room):  # nearly every request: nothing to wait for, under any rule
            for claim, scope in zip(claims, scopes, strict=True):
                scope.in_flight += claim.cost
                scope.last_used = now
            return Verdict(True, (0.0,) * len(claims), (False,) * len(claims))
        admitted = all(fits or not claim.enforce for claim, fits in zip(claims, room, strict=True))
        waits = []
        for claim, scope, queued, fits in zip(claims, scopes, ahead, room, strict=True):
            scope.last_used = now
            if fits or (admitted and claim.enforce):
                waits.append(0.0)
            elif claim.cost > claim.limit:
                waits.append(math.inf)  # can never fit: the exchange would refuse it too
            else:
                waits.append(scope.wait(now, claim.limit, claim.hold, queued + claim.cost))
        cooling = tuple(scope.cooling_until > now for scope in scopes)
        if admitted:
            for claim, scope in zip(claims, scopes, strict=True):
                scope.in_flight += claim.cost
        return Verdict(admitted, tuple(waits), cooling)

    async def release(
        self, claims: Sequence[Claim], now: float, ticket: str = "", credit: float = 0.0
    ) -> None:
        for claim in claims:
            scope = self._scope(claim, now)
            scope.in_flight = max(0, scope.in_flight - claim.cost)
            scope.add_release(now + max(0.0, claim.hold - credit), claim.cost)
            scope.last_used = now

    async def cool_down(self, claims: Sequence[Claim], until: Sequence[float], now: float) -> None:
        for claim, deadline in zip(claims, until, strict=True):
            scope = self._scope(claim, now)
            scope.cooling_until = max(scope.cooling_until, deadline)

    def occupy(self, claim: Claim, slots: int, until: float, now: float, cooling_until: float = 0.0) -> None:
        """Count `slots` more slots of the claim's scope as held until `until` (slots taken elsewhere: a
        shared state falling back on this one seeds it with what it last saw)."""
        scope = self._scope(claim, now)
        if slots > 0 and until > now:
            scope.add_release(until, slots)
        scope.cooling_until = max(scope.cooling_until, cooling_until)
        scope.last_used = now

    def usage(self, now: float) -> list[ScopeUsage]:
        return [
            ScopeUsage(rule, scope.label, scope.used(now), scope.limit, max(0.0, scope.cooling_until - now))
            for rule, scopes in self._rules.items()
            for scope in scopes.values()
        ]

    def busiest_share(self, rule: str, now: float) -> float:
        scopes = self._rules.get(rule, {})
        return max((scope.used(now) / scope.limit for scope in scopes.values()), default=0.0)

    def drop_idle(self, now: float, idle_for: float) -> int:
        """Forget scopes that hold nothing and were last used `idle_for` ago. Lossless: a scope with no
        slot held and no cool-down running is the same as a scope never seen."""
        return forget_idle(self._rules, now, idle_for, _Scope.used)

    def describe(self) -> dict[str, Any] | None:
        return None  # /status shows no `state` block for the memory state

    async def close(self) -> None:
        return None

    def notify_released(self, callback: Callable[[Sequence[Claim]], None]) -> None:
        return None  # every release takes effect before `release` returns
