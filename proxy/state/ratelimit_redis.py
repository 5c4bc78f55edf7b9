"""Rate-limit state shared by every replica through Redis: the decisions, and the switch to and from the
local share.

Guarantee: the slot accounting of `MemoryRateLimitState` (`ratelimit.py` says why slots are held from
admission until one window + margin after the answer), kept once for all replicas, so ten bots behind
three Seawalls spend one budget. Each decision is ONE atomic round trip: a Lua script
(`ratelimit_redis_lua.py`), loaded once (EVALSHA), that takes the slots of every claimed scope or of none.
Redis' own clock (TIME inside the scripts) stamps slots and cool-downs, so replicas whose clocks differ
still agree on when a slot frees.

Per scope three keys, named by a hash of the scope (it may contain an API key): the slots in flight (a
sorted set scored by a safety expiry — admission + upstream timeout + hold — so a replica that dies
mid-request cannot hold a slot forever), the slots held after their answer (scored by their release
time), and the cool-down deadline. Every key expires when its last slot does (bounded memory). Names:
`<prefix>rl:{<tag>}:<rule>:<scope hash>:flying|held|cool`, the tag a hash of the value of the scope's
first dimension, so on a Redis Cluster every key one decision touches is in one slot (one atomic script),
and scopes spread over the masters.
Releases go out in the background (`ratelimit_releases.py`); a cool-down is awaited, as the waiters it
wakes must see it, and kept for Redis' return if it cannot be sent.

Redis unreachable or slow (`RedisLink` marks it down, or refuses one call): with `on_unavailable:
fail_closed`, `acquire` raises `SharedStateDown` (the policy answers the bot); with `local_share` it
decides on this replica's share of each budget (`ratelimit_share.py`), first seeded with the slots this
replica last saw in use in Redis, so the switch does not double the window. When Redis answers again, the
local slots still running are handed over to it in one atomic call before any new decision is taken there
(slots first seen in Redis only if it lost them in a restart), the share starts empty and the releases
kept meanwhile are sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import math
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.logs import log
from proxy.state.ratelimit import Claim, ScopeUsage, SharedStateDown, Verdict, forget_idle
from proxy.state.ratelimit_redis_lua import ACQUIRE, COOL_DOWN, HAND_OVER, RELEASE
from proxy.state.ratelimit_releases import Release, ReleaseSender
from proxy.state.ratelimit_share import LocalShare
from proxy.state.redis_fleet import WriteBack
from proxy.state.redis_link import RedisLink, StateUnavailableError

MAX_KEY_NAMES = 10_000  # cached key names; the cache starts over beyond


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
    """`RateLimitState` on Redis, shared by every replica; a local share or `SharedStateDown` without it."""

    def __init__(
        self,
        link: RedisLink,
        *,
        in_flight_expiry: float,
        clock: Callable[[], float] = time.monotonic,
        server_clock: bool = True,  # False (tests): stamp with the caller's `now` instead of Redis' TIME
    ) -> None:
        """`in_flight_expiry`: how long after its hold Redis frees a slot whose release never came (its
        replica died): at least the longest a request can take."""
        self._link = link
        self._expiry = in_flight_expiry
        self._clock = clock
        self._server_clock = server_clock
        self._fail_closed = link.config.on_unavailable == "fail_closed"
        self._retry_after = link.config.retry_interval
        client = link.client
        self._acquire_script = client.register_script(ACQUIRE)
        self._cool_script = client.register_script(COOL_DOWN)
        self._hand_over_script = client.register_script(HAND_OVER)
        self._replica = secrets.token_hex(6)
        self._tickets = itertools.count()
        self._keys: dict[tuple[str, str], tuple[str, str, str]] = {}
        self._seen: dict[str, dict[str, _Seen]] = {}
        self._share = LocalShare(link.replicas or 1)  # re-counted from the heartbeats whenever used
        self._releases = ReleaseSender(
            link,
            client.register_script(RELEASE),
            self._keys_of,
            self._hold_kept,
            clock=clock,
            server_clock=server_clock,
        )
        self._cool_downs: deque[tuple[Sequence[Claim], Sequence[float], float]] = deque()  # kept
        self._rejoin: asyncio.Task[None] | None = None
        link.on_change(self._on_link_change)
        link.fleet.on_rebuild(WriteBack(self._write_back, lambda: False))

    # --- decisions --------------------------------------------------------------------------------------

    async def acquire(self, claims: Sequence[Claim], ahead: Sequence[int], now: float) -> Verdict:
        await self._rejoined()  # local slots reach Redis before it decides again
        if self._link.up:
            ticket = f"{self._replica}:{next(self._tickets)}"
            keys = [key for claim in claims for key in self._keys_of(claim.rule, claim.scope)]
            args: list[Any] = [self._now_arg(now), ticket, self._expiry]
            for claim, queued in zip(claims, ahead, strict=True):
                args += [claim.limit, claim.hold, claim.cost, queued, int(claim.enforce)]
            try:
                reply = await self._link.call(lambda r: self._acquire_script(keys, args, client=r))
            except StateUnavailableError:
                pass  # decided below, without Redis
            else:
                return self._verdict(claims, reply, ticket, now)
        if self._fail_closed:
            raise SharedStateDown(retry_after=self._retry_after)
        self._share.replicas = self._link.replicas or 1
        return await self._share.acquire(claims, ahead, now, f"L{self._replica}:{next(self._tickets)}")

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

    # --- releases and cool-downs ------------------------------------------------------------------------

    async def release(
        self, claims: Sequence[Claim], now: float, ticket: str = "", credit: float = 0.0
    ) -> None:
        await self._rejoined()  # then a local slot is either handed over or still local
        if await self._share.release(claims, now, ticket, credit):
            return
        for claim in claims:  # a slot in Redis (a local one handed over keeps its ticket there)
            seen = self._seen_of(claim, now)
            seen.in_flight = max(0, seen.in_flight - claim.cost)
            seen.quiet_at = max(seen.quiet_at, now + claim.hold)
        self._releases.add(Release(claims, ticket, now, credit))

    def _hold_kept(self, releases: Sequence[Release]) -> None:
        """Releases kept while Redis is away: the local share counts their holds too."""
        now = self._clock()
        for release in releases:
            self._share.hold_answered(release.claims, release.answered, now, release.credit)

    async def cool_down(self, claims: Sequence[Claim], until: Sequence[float], now: float) -> None:
        await self._share.cool_down(claims, until, now)  # the local share must know too
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
        self._share.replicas = self._link.replicas or 1
        now = self._clock()
        for rule, scopes in self._seen.items():
            for scope, seen in scopes.items():
                if seen.used_now(now) > 0:
                    claim = Claim(rule, scope, seen.label, seen.limit, seen.hold, 1)
                    self._share.seed(claim, seen.used, seen.quiet_at, seen.cooling_until, now)

    async def _rejoined(self) -> None:
        if self._rejoin is not None and not self._rejoin.done():
            await asyncio.shield(self._rejoin)

    async def _hand_over(self) -> None:
        """Redis is back: tell it of the slots taken locally meanwhile, then of what was kept for it."""
        now = self._clock()
        keys: list[str] = []
        args: list[Any] = [self._now_arg(now)]
        for entry in self._share.hand_over(now):
            flying, held, _ = self._keys_of(entry.rule, entry.scope)
            if entry.in_flight:  # its release comes later, to Redis, under the same ticket
                keys += [flying, held]
                args += [entry.ticket, entry.slots, entry.seconds + self._expiry, 0]
            else:
                keys += [held, flying]
                ticket = f"H{self._replica}:{next(self._tickets)}"
                args += [ticket, entry.slots, entry.seconds, int(entry.only_if_lost)]
        try:
            if keys:
                await self._link.call(lambda r: self._hand_over_script(keys, args, client=r))
        except StateUnavailableError:
            return  # down again: the local share goes on, and is handed over next time
        decisions = self._share.clear()
        if decisions:
            log.info(
                "rate limits shared again through redis",
                extra={"fields": {"local_decisions": decisions, "handed_over": len(keys) // 2}},
            )
        while self._cool_downs and self._link.up:
            claims, deadlines, at = self._cool_downs.popleft()
            if not await self._send_cool_down(claims, deadlines, at):
                self._cool_downs.appendleft((claims, deadlines, at))
        self._releases.resume()

    async def _write_back(self) -> bool:
        """Redis may have lost its slots (a restart, a failover): put back those this replica last saw in
        use, where Redis holds none for the scope (the hand-over's `only_if_lost`)."""
        await self._rejoined()
        self._on_link_change(False)  # seeds the local share with them
        self._rejoin = asyncio.ensure_future(self._hand_over())
        await self._rejoined()
        return self._link.up

    # --- names, clock -----------------------------------------------------------------------------------

    def _keys_of(self, rule: str, scope: str) -> tuple[str, str, str]:
        """The scope's in-flight, held and cool-down keys."""
        keys = self._keys.get((rule, scope))
        if keys is None:
            if len(self._keys) > MAX_KEY_NAMES:
                self._keys.clear()
            digest = hashlib.blake2b(scope.encode(), digest_size=12).hexdigest()  # never the raw key
            # One decision's keys share a Cluster slot: tagged by the scope's first dimension's value
            # (config checks that the rules of one route start with the same dimension).
            tag = hashlib.blake2b(scope.split("|", 1)[0].encode(), digest_size=8).hexdigest()
            base = self._link.key("rl", "{" + tag + "}", rule, digest)
            keys = self._keys[(rule, scope)] = (base + ":flying", base + ":held", base + ":cool")
        return keys

    def _now_arg(self, now: float) -> str:
        return "" if self._server_clock else repr(now)

    # --- the view for /status, metrics and bounded memory -----------------------------------------------

    def _seen_of(self, claim: Claim, now: float) -> _Seen:
        scopes = self._seen.setdefault(claim.rule, {})
        seen = scopes.get(claim.scope)
        if seen is None:
            seen = scopes[claim.scope] = _Seen(claim.label, claim.limit, claim.hold)
        seen.last_used = now
        return seen

    def __len__(self) -> int:
        return sum(len(scopes) for scopes in self._seen.values()) + len(self._share)

    def usage(self, now: float) -> list[ScopeUsage]:
        if not self._link.up:
            return self._share.usage(now)
        return [
            ScopeUsage(rule, seen.label, seen.used_now(now), seen.limit, max(0.0, seen.cooling_until - now))
            for rule, scopes in self._seen.items()
            for seen in scopes.values()
        ]

    def busiest_share(self, rule: str, now: float) -> float:
        if not self._link.up:
            return self._share.busiest_share(rule, now)
        scopes = self._seen.get(rule, {}).values()
        return max((seen.used_now(now) / seen.limit for seen in scopes), default=0.0)

    def drop_idle(self, now: float, idle_for: float) -> int:
        return self._share.drop_idle(now, idle_for) + forget_idle(self._seen, now, idle_for, _Seen.used_now)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "redis",
            "deciding": "shared" if self._link.up else "fail_closed" if self._fail_closed else "local_share",
            "local_decisions": self._share.decisions,
            "releases_pending": self._releases.pending,
        }

    async def settled(self) -> None:
        """Wait for any hand-over, then the releases under way (each call bounded by the link's timeout)."""
        if self._rejoin is not None:
            await asyncio.gather(self._rejoin, return_exceptions=True)
        await self._releases.settled()

    async def close(self) -> None:
        if self._rejoin is not None:
            await asyncio.gather(self._rejoin, return_exceptions=True)
        await self._releases.close()

    def notify_released(self, callback: Callable[[Sequence[Claim]], None]) -> None:
        """Releases reach Redis in the background: tell `callback` once each batch has landed."""
        self._releases.on_sent = lambda batch: callback([c for release in batch for c in release.claims])
