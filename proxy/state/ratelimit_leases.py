"""Leases: slots taken in Redis ahead of the requests that will use them, so a busy replica admits most
requests at memory speed while every slot it uses is counted for every replica.

Why it is safe: a leased slot is an ordinary slot in flight in Redis — counted by every replica's
decisions, freed by the same in-flight expiry if this replica dies — from the moment it is leased, which
is before the request that uses it is admitted: Redis counts it earlier than a per-request decision
would (on the safe side), and a request goes out only on a slot Redis counts. Using a slot admits the
request here; its release (answer + hold, as for any slot) names that slot's own ticket. A slot left
unused `LEASE_TTL` after its lease was granted is given back (removed, no hold: no request used it).

Where leasing cannot cost anyone budget, and nowhere else:
- only for rules whose limit leaves every replica at least `MIN_LEASE` slots in a quarter of the limit
  (tight budgets such as 10 placements a second always take the per-request decision);
- a lease is granted only while the scope stays at or under half its limit (`LEASE` script), and never
  while it cools down after an upstream -1003; a cool-down or a changed limit drops the scope's leases;
- only to a request with no one queued ahead on any of its claims, each claim enforced and of cost 1.
Everything else takes the per-request decision, exactly as before leases. The lease size follows what
this replica used of the scope in its last lease period (twice that), between `MIN_LEASE` and
`MAX_LEASE` and never more than its share of a quarter of the limit.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from proxy.state.ratelimit import Claim
from proxy.state.redis_link import RedisLink, SharedScript

LEASE_TTL = 0.1  # seconds a leased slot may wait for a request, then it is given back
MIN_LEASE = 4
MAX_LEASE = 256
MAX_SCOPES = 10_000  # scopes with leases; beyond, no new lease until some are dropped
SEPARATOR = "\x1e"  # between the per-claim tickets of a request admitted on leased slots
LEASED = "Q" + SEPARATOR  # how such a request's ticket starts


@dataclass(slots=True)
class _Lease:
    base: str
    limit: int
    expires: float  # loop time
    free: deque[int] = field(default_factory=deque)  # slot numbers not used yet


@dataclass(slots=True)
class _Scope:
    claim: Claim
    leases: deque[_Lease] = field(default_factory=deque)
    asking: bool = False  # a lease request is on its way
    used: int = 0  # slots used since the last lease was asked for (sizes the next one)

    def free(self, now: float) -> int:
        return sum(len(lease.free) for lease in self.leases if lease.expires > now)


def tickets_of(ticket: str) -> tuple[str, ...] | None:
    """The per-claim tickets of a request admitted on leased slots (None: an ordinary ticket)."""
    if not ticket.startswith(LEASED):
        return None
    return tuple(ticket.split(SEPARATOR)[1:])


class LeaseBook:
    """This replica's leases, per (rule, scope) (module docstring)."""

    def __init__(
        self,
        link: RedisLink,
        script: SharedScript,
        keys_of: Callable[[str, str], tuple[str, str, str]],
        give_back: Callable[[Claim, str], None],
        observed: Callable[[Claim, int], None],
        *,
        in_flight_expiry: float,
        replica: str,
    ) -> None:
        """`script`: LEASE; `give_back(claim, ticket)`: free an unused leased slot in Redis;
        `observed(claim, used)`: what Redis said the scope uses (the replica's view for /status)."""
        self._link = link
        self._observed = observed
        self._script = script
        self._keys_of = keys_of
        self._give_back = give_back
        self._expiry = in_flight_expiry
        self._replica = replica
        self._numbers = itertools.count()
        self._scopes: dict[tuple[str, str], _Scope] = {}
        self.admitted = 0  # requests admitted on leased slots (for /status)
        self._closed = False

    def take(self, claims: Sequence[Claim], ahead: Sequence[int]) -> str | None:
        """A leased slot on every claim, taken now (the request's ticket), or None: decide it in Redis.
        Asks for leases where one would serve the next requests."""
        if not self._link.up or self._closed:
            return None
        now = asyncio.get_running_loop().time()
        scopes: list[_Scope] = []
        for claim, queued in zip(claims, ahead, strict=True):
            scope = self._scope(claim)
            if scope is None:
                return None
            scope.used += 1
            if queued or scope.free(now) == 0:
                self._ask(scope, now)
                return None
            scopes.append(scope)
        tickets = [LEASED[:-1]]
        for scope in scopes:
            lease = next(lease for lease in scope.leases if lease.expires > now and lease.free)
            tickets.append(f"{lease.base}.{lease.free.popleft()}")
            if scope.free(now) * 2 < self._size(scope):
                self._ask(scope, now)
        self.admitted += 1
        return SEPARATOR.join(tickets)

    def drop(self, claims: Sequence[Claim]) -> None:
        """The scopes cool down (or changed): give back their unused slots, lease no more for now."""
        for claim in claims:
            scope = self._scopes.pop((claim.rule, claim.scope), None)
            if scope is not None:
                for lease in scope.leases:
                    self._return(scope, lease)

    def drop_all(self) -> None:
        """Redis went away: the leased slots stay counted there until they expire (on the safe side)."""
        self._scopes.clear()

    def close(self) -> None:
        """Shutting down: give back every unused slot (the replica that takes over starts with them free)
        and lease no more."""
        self._closed = True
        for scope in self._scopes.values():
            for lease in scope.leases:
                self._return(scope, lease)
        self._scopes.clear()

    def __len__(self) -> int:
        return len(self._scopes)

    # --- asking for leases, and giving unused slots back -----------------------------------------------

    def _scope(self, claim: Claim) -> _Scope | None:
        if claim.cost != 1 or not claim.enforce:
            return None
        share = claim.limit // (4 * (self._link.replicas or 1))
        if share < MIN_LEASE:
            return None
        key = (claim.rule, claim.scope)
        scope = self._scopes.get(key)
        if scope is None:
            if len(self._scopes) >= MAX_SCOPES:
                return None
            scope = self._scopes[key] = _Scope(claim)
        elif scope.claim.limit != claim.limit or scope.claim.hold != claim.hold:  # the rule changed
            self.drop([scope.claim])
            scope = self._scopes[key] = _Scope(claim)
        return scope

    def _size(self, scope: _Scope) -> int:
        share = scope.claim.limit // (4 * (self._link.replicas or 1))
        return max(MIN_LEASE, min(MAX_LEASE, share, 2 * scope.used))

    def _ask(self, scope: _Scope, now: float) -> None:
        if scope.asking:
            return
        scope.asking = True
        claim = scope.claim
        wanted = self._size(scope)
        scope.used = 0
        base = f"{self._replica}:{next(self._numbers)}"
        args: list[Any] = ["", base, self._expiry, claim.hold, wanted, claim.limit // 2]
        asked = self._link.submit(self._script, self._keys_of(claim.rule, claim.scope), args)
        asked.add_done_callback(functools.partial(self._granted, scope, base, now + LEASE_TTL))

    def _granted(self, scope: _Scope, base: str, expires: float, asked: asyncio.Future[Any]) -> None:
        """`expires`: LEASE_TTL from when the lease was asked for, so Redis (which stamped the slots when
        it ran the script, later) never holds them for less than their use takes."""
        scope.asking = False
        if asked.cancelled() or asked.exception() is not None:
            return
        granted, used = int(asked.result()[0]), int(asked.result()[1])
        self._observed(scope.claim, used + granted)
        if not granted:
            return
        loop = asyncio.get_running_loop()
        lease = _Lease(base, scope.claim.limit, expires, deque(range(1, granted + 1)))
        if self._closed or self._scopes.get((scope.claim.rule, scope.claim.scope)) is not scope:
            self._return(scope, lease)  # dropped meanwhile
            return
        scope.leases.append(lease)
        loop.call_at(expires, self._expired, scope, lease)

    def _expired(self, scope: _Scope, lease: _Lease) -> None:
        if lease in scope.leases:
            scope.leases.remove(lease)
        self._return(scope, lease)
        if (
            not scope.leases
            and not scope.asking
            and self._scopes.get((scope.claim.rule, scope.claim.scope)) is scope
            and not scope.used
        ):
            del self._scopes[(scope.claim.rule, scope.claim.scope)]  # idle: forget it

    def _return(self, scope: _Scope, lease: _Lease) -> None:
        while lease.free:
            self._give_back(scope.claim, f"{lease.base}.{lease.free.popleft()}")
