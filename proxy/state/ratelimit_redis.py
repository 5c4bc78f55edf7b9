"""Rate-limit state shared by every replica through Redis: the decisions, and the switch to and from the
local share.

Guarantee: the slot accounting of `MemoryRateLimitState` (`ratelimit.py` says why slots are held from
admission until one window + margin after the answer), kept once for all replicas, so ten bots behind
three Seawalls spend one budget. Each decision is ONE atomic Lua script call (`ratelimit_redis_lua.py`,
EVALSHA) that takes the slots of every claimed scope or of none; the decisions of one loop turn share
one round trip (`redis_batch.py`). On a big budget far from used, most requests are admitted on slots
leased ahead (`ratelimit_leases.py`). A decision Redis does not make within `state.redis.decision_budget`
is refused (`state.redis.on_slow: refuse`, the default: a local share beside replicas that decide in
Redis can overspend the budget — measured: 15 attempts in a window of 10 when one replica's decisions
kept going over budget) or, with `on_slow: local_share`, decided on this replica's share, first seeded
with what it last saw in use; Redis is told of such a decision once both ends are known: if Redis admitted
it after all, that slot becomes the request's (released with the request's answer); if Redis refused it,
the request's slot is handed to Redis as held until its answer + window; if nothing went out, the slot
Redis took is freed at once.
Redis' own clock (TIME inside the scripts) stamps slots and cool-downs, so replicas whose clocks differ
still agree on when a slot frees.

Per scope three keys, named by a hash of the scope (it may contain an API key): the slots in flight (a
sorted set scored by a safety expiry — admission + upstream timeout + hold — so a replica that dies
mid-request cannot hold a slot forever), the slots held after their answer (scored by their release
time), and the cool-down deadline. Every key expires when its last slot does (bounded memory). Names:
`<prefix>rl:{<tag>}:<rule>:<scope hash>:flying|held|cool`, the tag a hash of the value of the scope's
first dimension, so on a Redis Cluster every key one decision touches is in one slot (one atomic script),
and scopes spread over the masters.
Releases ride along with the next batch (`ratelimit_releases.py`); a cool-down is awaited, as the waiters it
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

from proxy.logs import log
from proxy.state.ratelimit import Claim, ScopeUsage, SharedStateDown, Verdict, forget_idle
from proxy.state.ratelimit_leases import LeaseBook, tickets_of
from proxy.state.ratelimit_redis_lua import ACQUIRE_BODY, COOL_DOWN, HAND_OVER, LEASE, LIB, RELEASE
from proxy.state.ratelimit_releases import Release, ReleaseSender
from proxy.state.ratelimit_share import LocalShare
from proxy.state.redis_batch import merging
from proxy.state.redis_fleet import WriteBack
from proxy.state.redis_link import OverBudget, RedisLink, SharedScript, StateUnavailableError

MAX_KEY_NAMES = 10_000  # cached key names; the cache starts over beyond
MAX_SLOW = 10_000  # decisions taken locally while Redis was slow, waiting for both ends


@dataclass(slots=True)
class _Slow:
    """A decision Redis did not make in time, taken on the local share while Redis still answers."""

    claims: Sequence[Claim]
    ticket: str  # Redis' ticket for the decision it may still make
    local: str = ""  # the local admission's ticket ("": refused, or failed closed)
    reply: list[Any] | None = None  # Redis' verdict, once it came
    answered: float | None = None  # the local request's answer, once it came
    credit: float = 0.0


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


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


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
        self._refuse_slow = link.config.on_slow == "refuse"
        self._retry_after = link.config.retry_interval
        client = link.client
        self._acquire_script = merging("ratelimit.acquire", LIB, ACQUIRE_BODY)
        self._cool_script = SharedScript("ratelimit.cool_down", COOL_DOWN)
        self._hand_over_script = client.register_script(HAND_OVER)
        self._hand_over_shared = SharedScript("ratelimit.hand_over", HAND_OVER)
        self._replica = secrets.token_hex(6)
        self._tickets = itertools.count()
        self._keys: dict[tuple[str, str], tuple[str, str, str]] = {}
        self._seen: dict[str, dict[str, _Seen]] = {}
        self._share = LocalShare(link.replicas or 1)  # re-counted from the heartbeats whenever used
        self._seeded: dict[tuple[str, str], float] = {}  # scopes seeded while Redis stays up: until
        self._slow: dict[str, _Slow] = {}  # by Redis' ticket and by the local one
        self._releases = ReleaseSender(
            link,
            SharedScript("ratelimit.release", RELEASE),
            self._keys_of,
            self._hold_kept,
            clock=clock,
            server_clock=server_clock,
        )
        self._leases = LeaseBook(
            link,
            SharedScript("ratelimit.lease", LEASE),
            self._keys_of,
            self._give_back,
            self._observed,
            in_flight_expiry=in_flight_expiry,
            replica=self._replica,
        )
        self._cool_downs: deque[tuple[Sequence[Claim], Sequence[float], float]] = deque()  # kept
        self._rejoin: asyncio.Task[None] | None = None
        link.on_change(self._on_link_change)
        link.fleet.on_rebuild(WriteBack(self._write_back, lambda: False))

    # --- decisions --------------------------------------------------------------------------------------

    async def acquire(self, claims: Sequence[Claim], ahead: Sequence[int], now: float) -> Verdict:
        await self._rejoined()  # local slots reach Redis before it decides again
        leased = None
        if self._server_clock and not self._cooling(claims, now):
            leased = self._leases.take(claims, ahead)
        if leased is not None:  # a slot Redis already counts, on every claim
            for claim in claims:
                self._seen_of(claim, now).in_flight += claim.cost
            return Verdict(True, (0.0,) * len(claims), (False,) * len(claims), leased)
        if self._link.up:
            ticket = f"{self._replica}:{next(self._tickets)}"
            keys = [key for claim in claims for key in self._keys_of(claim.rule, claim.scope)]
            args: list[Any] = [self._now_arg(now), ticket, self._expiry]
            for claim, queued in zip(claims, ahead, strict=True):
                args += [claim.limit, claim.hold, claim.cost, queued, int(claim.enforce)]
            late = functools.partial(self._decided_late, claims, ticket)
            try:
                reply = await self._link.run(self._acquire_script, keys, args, decides=True, on_late=late)
            except OverBudget:
                if self._refuse_slow:  # the others decide in Redis meanwhile: a share could overspend
                    self._remember_slow(claims, ticket)  # whatever Redis takes for it is freed
                    raise SharedStateDown(
                        self._link.config.decision_seconds, "shared state too slow"
                    ) from None
                return await self._decide_slow(claims, ahead, now, ticket)
            except StateUnavailableError:
                if self._link.up:  # this call refused (a script error, OOM): decided per the fail mode
                    return await self._decide_slow(claims, ahead, now, ticket)
            else:
                return self._verdict(claims, reply, ticket, now)
        if self._fail_closed:
            raise SharedStateDown(retry_after=self._retry_after)
        self._share.replicas = self._link.replicas or 1
        return await self._share.acquire(claims, ahead, now, f"L{self._replica}:{next(self._tickets)}")

    # --- decisions Redis did not make in time -----------------------------------------------------------

    async def _decide_slow(
        self, claims: Sequence[Claim], ahead: Sequence[int], now: float, ticket: str
    ) -> Verdict:
        """Per the fail mode, while Redis still answers: the share, seeded with what this replica last saw
        in use (once per hold), so it does not start empty; Redis is told later (`_decided_late`)."""
        self._remember_slow(claims, ticket)
        if self._fail_closed:
            raise SharedStateDown(retry_after=self._retry_after)
        self._share.replicas = self._link.replicas or 1
        for claim in claims:
            key = (claim.rule, claim.scope)
            seen = self._seen.get(claim.rule, {}).get(claim.scope)
            if len(self._seeded) > MAX_KEY_NAMES:
                self._seeded.clear()
            if seen is not None and seen.used_now(now) > 0 and self._seeded.get(key, -math.inf) < now:
                self._share.seed(claim, seen.used, seen.quiet_at, seen.cooling_until, now)
                self._seeded[key] = seen.quiet_at
        local = f"L{self._replica}:{next(self._tickets)}"
        verdict = await self._share.acquire(claims, ahead, now, local)
        slow = self._slow.get(ticket)
        if slow is not None and verdict.admitted:
            slow.local = local
            self._slow[local] = slow
        return verdict

    def _remember_slow(self, claims: Sequence[Claim], ticket: str) -> None:
        """Keep what `_decided_late` needs when Redis decides this one after all (bounded)."""
        if len(self._slow) < MAX_SLOW:
            self._slow[ticket] = _Slow(claims, ticket)

    def _decided_late(self, claims: Sequence[Claim], ticket: str, reply: list[Any]) -> None:
        """Redis decided after its caller stopped waiting (over budget, or the bot hung up)."""
        slow = self._slow.get(ticket)
        if slow is None or not slow.local:  # nothing went out on this decision
            self._slow.pop(ticket, None)
            if reply and reply[0]:  # free what Redis took at once: no hold
                self._releases.add(Release(claims, ticket, self._clock(), max(c.hold for c in claims)))
            return
        slow.reply = reply
        if slow.answered is not None:
            self._tell_slow(slow)

    def _tell_slow(self, slow: _Slow) -> None:
        """Both ends are known: Redis counts the request's slot until its answer + hold."""
        self._slow.pop(slow.ticket, None)
        self._slow.pop(slow.local, None)
        assert slow.reply is not None and slow.answered is not None
        if slow.reply[0]:  # Redis admitted it: that slot is the request's
            self._releases.add(Release(slow.claims, slow.ticket, slow.answered, slow.credit))
            return
        keys: list[str] = []  # Redis refused it: the request went out anyway, so Redis must count it
        args: list[Any] = [""]
        for claim in slow.claims:
            flying, held, _ = self._keys_of(claim.rule, claim.scope)
            left = slow.answered + max(0.0, claim.hold - slow.credit) - self._clock()
            keys += [held, flying]
            args += [f"H{slow.local}", claim.cost, max(0.001, left), 0]
        told = self._link.submit(self._hand_over_shared, keys, args)
        told.add_done_callback(_retrieved)  # a failure: Redis counts it late or never (logged by the link)

    def _cooling(self, claims: Sequence[Claim], now: float) -> bool:
        """Whether Redis said (to any decision here) that one of the scopes cools down after a -1003."""
        for claim in claims:
            seen = self._seen.get(claim.rule, {}).get(claim.scope)
            if seen is not None and seen.cooling_until > now:
                return True
        return False

    def _give_back(self, claim: Claim, ticket: str) -> None:
        """An unused leased slot: freed in Redis with no hold (no request went out on it)."""
        self._releases.add(Release((claim,), ticket, self._clock(), claim.hold))

    def _observed(self, claim: Claim, used: int) -> None:
        seen = self._seen_of(claim, self._clock())
        seen.used = used
        seen.quiet_at = max(seen.quiet_at, self._clock() + claim.hold)

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
            if float(cool) > 0:  # cooling (another replica's -1003): no slot taken ahead for it
                self._leases.drop((claim,))
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
            slow = self._slow.get(ticket)
            if slow is not None:  # decided here while Redis was slow: Redis learns of it now or later
                slow.answered, slow.credit = now, credit
                if slow.reply is not None:
                    self._tell_slow(slow)
            return
        for claim in claims:  # a slot in Redis (a local one handed over keeps its ticket there)
            seen = self._seen_of(claim, now)
            seen.in_flight = max(0, seen.in_flight - claim.cost)
            seen.quiet_at = max(seen.quiet_at, now + claim.hold)
        self._releases.add(Release(claims, ticket, now, credit, tickets_of(ticket)))

    def _hold_kept(self, releases: Sequence[Release]) -> None:
        """Releases kept while Redis is away: the local share counts their holds too."""
        now = self._clock()
        for release in releases:
            self._share.hold_answered(release.claims, release.answered, now, release.credit)

    async def cool_down(self, claims: Sequence[Claim], until: Sequence[float], now: float) -> None:
        self._leases.drop(claims)  # the exchange said full: no slot taken ahead for these scopes
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
            await self._link.run(self._cool_script, keys, args)
        except StateUnavailableError:
            return False
        return True

    # --- losing and regaining Redis ---------------------------------------------------------------------

    def _on_link_change(self, up: bool) -> None:
        if up:
            self._rejoin = asyncio.ensure_future(self._hand_over())
            return
        self._leases.drop_all()
        self._slow.clear()  # what the share admitted meanwhile is handed over with the rest
        self._seeded.clear()
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
            "leased_admissions": self._leases.admitted,
            # decided here while Redis was slow, Redis's own verdict still to come
            "slow_awaiting_redis": sum(
                1 for key, slow in self._slow.items() if key == slow.ticket and not slow.reply
            ),
            "releases_pending": self._releases.pending,
        }

    async def settled(self) -> None:
        """Wait for any hand-over, then the releases under way (each call bounded by the link's timeout)."""
        if self._rejoin is not None:
            await asyncio.gather(self._rejoin, return_exceptions=True)
        await self._releases.settled()

    async def close(self) -> None:
        self._leases.close()  # unused leased slots are freed with the releases below
        if self._rejoin is not None:
            await asyncio.gather(self._rejoin, return_exceptions=True)
        await self._releases.close()

    def notify_released(self, callback: Callable[[Sequence[Claim]], None]) -> None:
        """Releases reach Redis in the background: tell `callback` once each batch has landed."""
        self._releases.on_sent = lambda batch: callback([c for release in batch for c in release.claims])
