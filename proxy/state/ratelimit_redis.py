"""Rate-limit state shared by every replica through Redis (PRODUCT.md §4 "Shared state").

Guarantee: the slot accounting of `MemoryRateLimitState` (`ratelimit.py` says why slots are held from
admission until one window + margin after the answer), kept once for all replicas, so ten bots behind
three Seawalls spend one budget. Each decision is ONE atomic round trip: a Lua script, loaded once
(EVALSHA), that takes the slots of every claimed scope or of none. Redis' own clock (TIME inside the
scripts) stamps slots and cool-downs, so replicas whose clocks differ still agree on when a slot frees.

Per scope three keys, named by a hash of the scope (it may contain an API key): the slots in flight (a
sorted set scored by a safety expiry — admission + upstream timeout + hold — so a replica that dies
mid-request cannot hold a slot forever), the slots held after their answer (scored by their release
time), and the cool-down deadline. Every key expires when its last slot does (bounded memory).

A release is a second call, not a decision: it is queued and one background sender per replica sends
what is queued in one call, so the answer is not delayed by it and a busy replica sends few calls. One
that cannot reach Redis stays queued (counted in /status) and is sent when Redis is back; until then
Redis still counts its slot in flight, which errs on the safe side.

Redis unreachable or slow (`RedisLink` marks it down): with `on_unavailable: fail_closed` the request
is answered -1003 locally (`StateUnavailable`); with `local_share` each replica decides on a local
memory state whose limits are the budget divided by `state.redis.replicas` (floor, at least 1), first
seeded with the slots this replica last saw in use in Redis (so the switch does not double the window).
When Redis answers again, the local holds still running are handed over to it in one atomic call before
any new decision is taken there (slots first seen in Redis only if it lost them in a restart), the
local state is discarded and the releases kept meanwhile are sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import itertools
import math
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.errors import StateUnavailable
from proxy.logs import log
from proxy.metrics import Metrics
from proxy.state.ratelimit import Claim, MemoryRateLimitState, ScopeUsage, Verdict, forget_idle
from proxy.state.ratelimit_redis_lua import ACQUIRE, COOL_DOWN, HAND_OVER, RELEASE
from proxy.state.redis_link import RedisLink, StateUnavailableError

_MAX_KEPT = 10_000  # releases kept while Redis is away; beyond, their slots expire by themselves
_BATCH = 256  # releases per call: one script call blocks Redis while it runs


@dataclass(slots=True)
class _Seen:
    """This replica's last view of one shared scope: for /status, metrics and a safe switch to local."""

    label: str
    limit: int
    hold: float
    used: int = 0
    seen_at: float = -math.inf  # Redis' clock at the reply `used` comes from (replies can cross)
    quiet_at: float = 0.0  # local clock: when every slot seen in use is surely free again
    in_flight: int = 0  # this replica's admitted requests still waiting for their answer
    cooling_until: float = 0.0
    last_used: float = 0.0

    def used_now(self, now: float) -> int:
        return self.used if self.in_flight > 0 or now < self.quiet_at else 0


class RedisRateLimitState:
    """`RateLimitState` on Redis, shared by every replica; local share or fail closed without it."""

    def __init__(
        self,
        link: RedisLink,
        metrics: Metrics,
        *,
        in_flight_expiry: float,
        clock: Callable[[], float] = time.monotonic,
        server_clock: bool = True,  # False (tests): stamp with the caller's `now` instead of Redis' TIME
    ) -> None:
        self._link = link
        self._metrics = metrics
        self._expiry = in_flight_expiry
        self._clock = clock
        self._server_clock = server_clock
        self._fail_closed = link.config.on_unavailable == "fail_closed"
        self._replicas = link.config.replicas
        self._retry_after = link.config.retry_interval
        client = link.client
        self._acquire_script = client.register_script(ACQUIRE)
        self._release_script = client.register_script(RELEASE)
        self._cool_script = client.register_script(COOL_DOWN)
        self._hand_over_script = client.register_script(HAND_OVER)
        self._replica = secrets.token_hex(6)
        self._tickets = itertools.count()
        self._keys: dict[tuple[str, str], tuple[str, str, str]] = {}
        self._seen: dict[str, dict[str, _Seen]] = {}
        self._local = MemoryRateLimitState()
        self._local_flying: dict[str, Sequence[Claim]] = {}  # local admissions not yet handed over
        # Slots held locally, for the hand-over: (rule, scope, slots, until, seen in Redis first).
        self._local_holds: deque[tuple[str, str, int, float, bool]] = deque()
        self._releases: deque[tuple[Sequence[Claim], str, float]] = deque()  # (claims, ticket, answered)
        self._cool_downs: deque[tuple[Sequence[Claim], Sequence[float], float]] = deque()  # kept
        self._sender: asyncio.Task[None] | None = None
        self._rejoin: asyncio.Task[None] | None = None
        self._local_decisions = 0
        link.on_change(self._on_link_change)

    # --- decisions --------------------------------------------------------------------------------------

    async def acquire(self, claims: Sequence[Claim], ahead: Sequence[int], now: float) -> Verdict:
        if self._rejoin is not None and not self._rejoin.done():
            await asyncio.shield(self._rejoin)  # local holds reach Redis before it decides again
        if self._link.up:
            ticket = f"{self._replica}:{next(self._tickets)}"
            keys = [key for claim in claims for key in self._keys_of(claim.rule, claim.scope)]
            args: list[Any] = [self._now_arg(now), ticket, self._expiry]
            for claim, queued in zip(claims, ahead, strict=True):
                args += [claim.limit, claim.hold, claim.cost, queued]
            try:
                reply = await self._link.call(lambda r: self._acquire_script(keys, args, client=r))
            except StateUnavailableError:
                pass  # decided below, without Redis
            else:
                return self._verdict(claims, reply, ticket, now)
        return await self._acquire_locally(claims, ahead, now)

    def _verdict(self, claims: Sequence[Claim], reply: list[Any], ticket: str, now: float) -> Verdict:
        admitted, server_now = bool(reply[0]), float(reply[1])
        waits, cooling = [], []
        for i, claim in enumerate(claims):
            used, wait, cool, clear = reply[2 + 4 * i : 6 + 4 * i]
            seen = self._seen_of(claim, now)
            if server_now >= seen.seen_at:  # the latest state Redis told us about
                seen.used, seen.seen_at = int(used), server_now
            seen.quiet_at = max(seen.quiet_at, now + float(clear))
            seen.cooling_until = now + float(cool)
            if admitted:
                seen.in_flight += claim.cost
            waits.append(float(wait))
            cooling.append(float(cool) > 0)
        return Verdict(admitted, tuple(waits), tuple(cooling), ticket if admitted else "")

    async def _acquire_locally(self, claims: Sequence[Claim], ahead: Sequence[int], now: float) -> Verdict:
        rule = claims[0].rule if claims else ""
        if self._fail_closed:
            self._metrics.ratelimit_rejected.labels(rule, "state_unavailable").inc()
            raise StateUnavailable("shared rate-limit state unreachable", retry_after=self._retry_after)
        if self._local_decisions == 0:
            log.warning(
                "rate limits decided on this replica's share of each budget",
                extra={"fields": {"replicas": self._replicas}},
            )
        self._local_decisions += 1
        verdict = await self._local.acquire(self._share(claims), ahead, now)
        if not verdict.admitted:
            return verdict
        ticket = f"L{self._replica}:{next(self._tickets)}"
        self._local_flying[ticket] = claims
        return dataclasses.replace(verdict, ticket=ticket)

    def _share(self, claims: Sequence[Claim]) -> list[Claim]:
        return [dataclasses.replace(claim, limit=max(1, claim.limit // self._replicas)) for claim in claims]

    # --- releases and cool-downs: sent in the background, kept while Redis is away ----------------------

    async def release(self, claims: Sequence[Claim], now: float, ticket: str = "") -> None:
        if self._rejoin is not None and not self._rejoin.done():
            await asyncio.shield(self._rejoin)  # then a local slot is either handed over or still local
        if self._local_flying.pop(ticket, None) is not None:
            await self._local.release(self._share(claims), now)
            for claim in claims:
                self._hold_locally(claim.rule, claim.scope, claim.cost, now + claim.hold, False)
            return
        for claim in claims:  # a slot in Redis (a local one handed over keeps its ticket there)
            seen = self._seen_of(claim, now)
            seen.in_flight = max(0, seen.in_flight - claim.cost)
            seen.quiet_at = max(seen.quiet_at, now + claim.hold)
        if len(self._releases) >= _MAX_KEPT:
            self._releases.popleft()  # its in-flight slots expire in Redis by themselves
            log.error("too many rate-limit releases kept for redis: dropped the oldest")
        self._releases.append((claims, ticket, now))
        if not self._link.up:
            self._hold_answered([(claims, ticket, now)])
        self._start_sender()

    def _start_sender(self) -> None:
        if self._releases and self._link.up and (self._sender is None or self._sender.done()):
            self._sender = asyncio.ensure_future(self._send_releases())

    async def _send_releases(self) -> None:
        """Send the queued releases, many per call, until none is left or Redis is away."""
        while self._releases and self._link.up:
            batch = [self._releases.popleft() for _ in range(min(len(self._releases), _BATCH))]
            # Each slot is held until its answer + hold: what is left of that when the call is made.
            reference = self._clock() if self._server_clock else max(at for _, _, at in batch)
            keys: list[str] = []
            args: list[Any] = [self._now_arg(reference)]
            for claims, ticket, at in batch:
                for claim in claims:
                    keys += self._keys_of(claim.rule, claim.scope)[:2]
                    args += [ticket, claim.cost, max(0.0, at + claim.hold - reference)]
            try:
                await self._link.call(functools.partial(self._release_script, keys, args))
            except StateUnavailableError:
                self._releases.extendleft(reversed(batch))  # kept, in order, for Redis' return
                self._hold_answered(batch)
                return

    def _hold_answered(self, releases: Sequence[tuple[Sequence[Claim], str, float]]) -> None:
        """Answered while Redis is away: the local share counts their holds too."""
        now = self._clock()
        for claims, _, at in releases:
            for claim in self._share(claims):
                self._local.occupy(claim, claim.cost, at + claim.hold, now)

    async def cool_down(self, claims: Sequence[Claim], until: Sequence[float], now: float) -> None:
        await self._local.cool_down(self._share(claims), until, now)  # the local share must know too
        for claim, deadline in zip(claims, until, strict=True):
            seen = self._seen_of(claim, now)
            seen.cooling_until = max(seen.cooling_until, deadline)
        if not await self._send_cool_down(claims, until, now):  # awaited: woken waiters must see it
            self._cool_downs.append((claims, until, now))

    async def _send_cool_down(self, claims: Sequence[Claim], until: Sequence[float], at: float) -> bool:
        reference = self._clock() if self._server_clock else at
        keys = [self._keys_of(claim.rule, claim.scope)[2] for claim in claims]
        args: list[Any] = [self._now_arg(reference), *(max(0.0, end - reference) for end in until)]
        try:
            await self._link.call(lambda r: self._cool_script(keys, args, client=r))
        except StateUnavailableError:
            return False
        return True

    # --- losing and regaining Redis ---------------------------------------------------------------------

    def _on_link_change(self, up: bool) -> None:
        if up:
            self._rejoin = asyncio.ensure_future(self._hand_over())
            return
        # Slots other replicas hold stay held: seed the local share with what this replica last saw.
        now = self._clock()
        for rule, scopes in self._seen.items():
            for scope, seen in scopes.items():
                if seen.used_now(now) > 0:
                    claim = Claim(rule, scope, seen.label, max(1, seen.limit // self._replicas), seen.hold, 1)
                    self._local.occupy(claim, seen.used, seen.quiet_at, now, seen.cooling_until)
                    self._hold_locally(rule, scope, seen.used, seen.quiet_at, True)

    def _hold_locally(self, rule: str, scope: str, slots: int, until: float, seen_in_redis: bool) -> None:
        if len(self._local_holds) >= _MAX_KEPT:
            self._local_holds.popleft()  # the oldest: the nearest to expiry
        self._local_holds.append((rule, scope, slots, until, seen_in_redis))

    async def _hand_over(self) -> None:
        """Redis is back: tell it of the slots taken locally meanwhile, then of what was kept for it."""
        now = self._clock()
        keys: list[str] = []
        args: list[Any] = [self._now_arg(now)]
        for ticket, claims in self._local_flying.items():
            for claim in claims:
                keys += self._keys_of(claim.rule, claim.scope)[:2]
                args += [ticket, claim.cost, claim.hold + self._expiry, 0]
        for rule, scope, slots, until, seen_in_redis in self._local_holds:
            if until > now:
                flying, held, _ = self._keys_of(rule, scope)
                keys += [held, flying]
                args += [f"H{self._replica}:{next(self._tickets)}", slots, until - now, int(seen_in_redis)]
        try:
            if keys:
                await self._link.call(lambda r: self._hand_over_script(keys, args, client=r))
        except StateUnavailableError:
            return  # down again: the local state goes on, and is handed over next time
        self._local_flying.clear()  # their releases now go to Redis, under the same tickets
        self._local_holds.clear()
        self._local = MemoryRateLimitState()
        if self._local_decisions:
            log.info(
                "rate limits shared again through redis",
                extra={"fields": {"local_decisions": self._local_decisions, "handed_over": len(keys) // 2}},
            )
        self._local_decisions = 0
        while self._cool_downs and self._link.up:
            claims, deadlines, at = self._cool_downs.popleft()
            if not await self._send_cool_down(claims, deadlines, at):
                self._cool_downs.appendleft((claims, deadlines, at))
        self._start_sender()

    # --- the view for /status, metrics and bounded memory -----------------------------------------------

    def _seen_of(self, claim: Claim, now: float) -> _Seen:
        scopes = self._seen.setdefault(claim.rule, {})
        seen = scopes.get(claim.scope)
        if seen is None:
            seen = scopes[claim.scope] = _Seen(claim.label, claim.limit, claim.hold)
        seen.last_used = now
        return seen

    def _keys_of(self, rule: str, scope: str) -> tuple[str, str, str]:
        keys = self._keys.get((rule, scope))
        if keys is None:
            if len(self._keys) > 10_000:
                self._keys.clear()
            digest = hashlib.blake2b(scope.encode(), digest_size=12).hexdigest()  # never the raw key
            base = self._link.key("rl", rule, digest)
            keys = self._keys[(rule, scope)] = (base + ":flying", base + ":held", base + ":cool")
        return keys

    def _now_arg(self, now: float) -> str:
        return "" if self._server_clock else repr(now)

    def __len__(self) -> int:
        return sum(len(scopes) for scopes in self._seen.values()) + len(self._local)

    def usage(self, now: float) -> list[ScopeUsage]:
        if not self._link.up:
            return self._local.usage(now)
        return [
            ScopeUsage(rule, seen.label, seen.used_now(now), seen.limit, max(0.0, seen.cooling_until - now))
            for rule, scopes in self._seen.items()
            for seen in scopes.values()
        ]

    def busiest_share(self, rule: str, now: float) -> float:
        if not self._link.up:
            return self._local.busiest_share(rule, now)
        scopes = self._seen.get(rule, {}).values()
        return max((seen.used_now(now) / seen.limit for seen in scopes), default=0.0)

    def drop_idle(self, now: float, idle_for: float) -> int:
        return self._local.drop_idle(now, idle_for) + forget_idle(self._seen, now, idle_for, _Seen.used_now)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "redis",
            "deciding": "shared" if self._link.up else "fail_closed" if self._fail_closed else "local_share",
            "local_decisions": self._local_decisions,
            "releases_pending": len(self._releases),
        }

    async def settled(self) -> None:
        """Wait for any hand-over and the releases under way (each call bounded by the link's timeout)."""
        for task in (self._rejoin, self._sender):
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)

    async def close(self) -> None:
        await self.settled()
        if self._releases:
            log.warning(
                "rate-limit releases never reached redis: their slots expire there by themselves",
                extra={"fields": {"kept": len(self._releases)}},
            )
