"""Client-side rate limiting that matches the exchange's strict sliding windows.

Guarantee: for every rule, no more than `limit` slots of one scope are ever inside any sliding window
of `window` seconds as the exchange sees it, so traffic through Seawall never earns a -1003 from an
exchange enforcing its documented limits — while the budget is still used (goodput >= 97% of N under
sustained overload) and a burst that fits the budget goes out at once.

How: each admitted request holds its slots from admission until one window (plus `margin`, for
jitter) after its answer arrives (`proxy/state/ratelimit.py` says why). aiolimiter, the stack's default
limiter, is kept out of here because it fails the guarantee (BENCHMARKS.md "Rate limiting", 50 bots on
one key, 10/s, 12 s, through Seawall to the simulator): `AsyncLimiter(N, W)` is a leaky bucket that
admits 2N-1 per sliding window (19 for 10/s) and earned 23 upstream -1003s, while this limiter earned 0
at a goodput of 0.986; `AsyncLimiter(1, W/N)` keeps the limit but spaces every request W/N apart, so a
burst within budget no longer goes at once.

A request under several rules takes from all or none, atomically. Over budget it waits in a FIFO
queue per (rule, scope) — higher `priority` first, so cancels can overtake placements — holding no
slot while it waits: a later request may go first only where the slots of everyone queued in front of
it still fit (so a batch waiting on the 1/s batch rule does not stall single placements, and is not
starved by them). A request whose wait is known to exceed its max wait (the smallest `max_wait` of its
rules), or whose over-budget rule says `on_limit: reject`, is answered -1003 at once, with Retry-After.
An upstream -1003 anyway (someone else shares the key) cools the scope down for one window.

The policy keeps the queues, decides who waits and who gives up, answers the bot and counts metrics; the
slots and cool-downs are its state's (`proxy/state/ratelimit.py`), which it receives ready-made
(`proxy/state/backends.py` picks it): in process memory, or with `state: redis` in Redis for every replica
(`proxy/state/ratelimit_redis.py`), so many replicas keep one budget; the queues stay per replica. A
shared state that cannot decide (Redis away, `on_unavailable: fail_closed`) says so (`SharedStateDown`);
the policy answers -1003 locally (`StateUnavailable`, X-Seawall `state-unavailable`) with Retry-After.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from proxy.answer import Answer
from proxy.config import RateLimitConfig, RateLimitRule
from proxy.context import RequestContext
from proxy.errors import RateLimited, StateUnavailable
from proxy.metrics import Metrics
from proxy.state.ratelimit import Claim, RateLimitState, SharedStateDown, Verdict
from proxy.types import Handler, Policy

QueueKey = tuple[str, str]  # (rule, scope)


@dataclass(frozen=True, slots=True)
class _Rule:
    """One configured rule, resolved once: how to name a request's scope and what it costs."""

    name: str
    limit: int
    window: float
    hold: float  # window + margin: how long a slot stays held after its answer
    scope: tuple[str, ...]
    per_unit: bool
    reject: bool
    max_wait: float
    priority: dict[str, int]

    @classmethod
    def from_config(cls, rule: RateLimitRule, margin: float) -> _Rule:
        return cls(
            name=rule.name,
            limit=rule.limit,
            window=rule.window,
            hold=rule.window + margin,
            scope=tuple(rule.scope),
            per_unit=rule.cost == "units",
            reject=rule.on_limit == "reject",
            max_wait=rule.max_wait,
            priority=dict(rule.priority),
        )

    def claim(self, ctx: RequestContext) -> Claim:
        scope = "|".join(ctx.scope_value(dim) for dim in self.scope)
        label = "|".join(ctx.scope_name(dim) for dim in self.scope)
        cost = max(1, ctx.units) if self.per_unit else 1
        return Claim(self.name, scope, label, self.limit, self.hold, cost)


@dataclass(eq=False, slots=True)
class _Waiter:
    order: tuple[int, int]  # (-priority, arrival): the same order in every queue, so no two block each other
    costs: dict[QueueKey, int]
    poked: bool = False
    deciding: bool = False  # its acquire is under way (a shared state answers after a round trip)
    wake: asyncio.Future[None] | None = field(default=None, repr=False)

    def poke(self) -> None:
        self.poked = True
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)


class RateLimitPolicy(Policy):
    """Admits a request when every rule it falls under has room, queues it FIFO until then (or answers
    -1003 at once when waiting is hopeless), and cools a scope down after an exchange -1003."""

    name = "ratelimit"

    def __init__(
        self,
        config: RateLimitConfig,
        metrics: Metrics,
        state: RateLimitState,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`state` holds the slots (memory or Redis: `proxy/state/backends.py`). `clock` stamps every call
        to it, so a state that keeps time itself must be on the same clock (both default to monotonic)."""
        sources = config.rules if config.enabled else ()
        self._rules = [_Rule.from_config(rule, config.margin) for rule in sources]
        self._by_route: dict[str, tuple[_Rule, ...]] = {}
        for rule, source in zip(self._rules, sources, strict=True):
            for route in source.routes:
                self._by_route[route] = (*self._by_route.get(route, ()), rule)
        self._every_route = self._by_route.pop("*", ())
        self._state = state
        self._clock = clock
        self._idle_ttl = config.idle_scope_ttl
        self._queues: dict[QueueKey, list[_Waiter]] = {}
        self._arrivals = itertools.count()
        self._sweeper: asyncio.Task[None] | None = None
        self._metrics = metrics
        self._waited = {rule.name: metrics.ratelimit_wait.labels(rule.name) for rule in self._rules}
        for rule in self._rules:
            metrics.ratelimit_budget_used.labels(rule.name).set_function(self._budget_used(rule.name))

    def _budget_used(self, rule: str) -> Callable[[], float]:
        return lambda: self._state.busiest_share(rule, self._clock())

    def _rules_for(self, route: str) -> tuple[_Rule, ...]:
        return self._by_route.get(route, ()) + self._every_route

    async def handle(self, ctx: RequestContext, call_next: Handler) -> Answer:
        rules = self._rules_for(ctx.route.name)
        if not rules:
            return await call_next(ctx)
        claims = tuple(rule.claim(ctx) for rule in rules)
        ticket = await self._admit(ctx.route.name, rules, claims)
        try:
            answer = await call_next(ctx)
        finally:
            # The answer (or the transport failure) is in: the hold-after-answer countdown starts now.
            await self._state.release(claims, self._clock(), ticket)
        if answer.code == -1003 and answer.source == "upstream":
            await self._cool_down(rules, claims, answer)
        return answer

    async def _admit(self, route: str, rules: Sequence[_Rule], claims: Sequence[Claim]) -> str:
        """Wait for room in every rule (or raise RateLimited); the admitted verdict's ticket."""
        started = self._clock()
        keys = [(claim.rule, claim.scope) for claim in claims]
        max_wait = min(rule.max_wait for rule in rules)
        queues = self._queues
        if not any(key in queues for key in keys):
            # Nobody queued: a request (or a burst) that fits the budget goes out at once.
            verdict = await self._decide(claims, (0,) * len(claims), started)
            if verdict.admitted:
                for rule in rules:
                    self._waited[rule.name].observe(0.0)
                return verdict.ticket
            self._give_up_if_hopeless(rules, verdict, 0.0, max_wait)
        priority = max(rule.priority.get(route, 0) for rule in rules)
        costs = dict(zip(keys, (claim.cost for claim in claims), strict=True))
        waiter = _Waiter((-priority, next(self._arrivals)), costs)
        for key in keys:
            queue = queues.setdefault(key, [])
            position = len(queue)
            while position and queue[position - 1].order > waiter.order:
                position -= 1
            queue.insert(position, waiter)
        admitted = False
        try:
            while True:
                waiter.poked = False
                now = self._clock()
                ahead = [self._ahead(key, waiter) for key in keys]
                waiter.deciding = True
                try:
                    verdict = await self._decide(claims, ahead, now)
                finally:
                    waiter.deciding = False
                if verdict.admitted:
                    admitted = True
                    break
                elapsed = now - started
                self._give_up_if_hopeless(rules, verdict, elapsed, max_wait)
                if not waiter.poked:
                    await self._nap(waiter, min(max(verdict.waits), max_wait - elapsed))
        finally:
            self._leave(waiter, keys, admitted)
        waited = self._clock() - started
        for rule in rules:
            self._waited[rule.name].observe(waited)
        return verdict.ticket

    async def _decide(self, claims: Sequence[Claim], ahead: Sequence[int], now: float) -> Verdict:
        """The state's verdict. A shared state that cannot decide (Redis away, failing closed) is answered
        -1003 here, with when Redis is tried again, rather than let anything through unaccounted."""
        try:
            return await self._state.acquire(claims, ahead, now)
        except SharedStateDown as down:
            self._metrics.ratelimit_rejected.labels(claims[0].rule, "state_unavailable").inc()
            raise StateUnavailable(
                "shared rate-limit state unreachable", retry_after=down.retry_after
            ) from None

    def _ahead(self, key: QueueKey, waiter: _Waiter) -> int:
        """Slots reserved in `key`'s scope for the requests queued in front of `waiter`."""
        ahead = 0
        for other in self._queues[key]:
            if other is waiter:
                return ahead
            # One whose acquire is under way may already be counted as admitted by a shared state:
            # reserving its slots too would make this one wait for a slot nobody takes.
            if not other.deciding:
                ahead += other.costs[key]
        return ahead

    def _give_up_if_hopeless(
        self, rules: Sequence[_Rule], verdict: Verdict, elapsed: float, max_wait: float
    ) -> None:
        """Answer -1003 now if a `reject` rule is over budget or the wait is known to exceed the max wait,
        rather than let the bot wait in vain."""
        for rule, wait, cooling in zip(rules, verdict.waits, verdict.cooling, strict=True):
            if math.isinf(wait):
                self._refuse(rule, "too_large", None)
            if wait > 0 and (rule.reject or elapsed + wait > max_wait):
                reason = "cooldown" if cooling else "rejected" if rule.reject else "queue_timeout"
                self._refuse(rule, reason, wait)
        if elapsed >= max_wait:  # still behind others at the deadline
            worst = max(range(len(rules)), key=lambda i: verdict.waits[i])
            self._refuse(rules[worst], "queue_timeout", verdict.waits[worst] or None)

    def _refuse(self, rule: _Rule, reason: str, retry_after: float | None) -> None:
        self._metrics.ratelimit_rejected.labels(rule.name, reason).inc()
        detail = {
            "rejected": f"over the {rule.name} budget",
            "too_large": f"costs more than the {rule.name} budget of {rule.limit}",
            "cooldown": f"{rule.name} cooling down after an exchange -1003",
        }.get(reason, f"{rule.name} budget: no room within the max wait")
        raise RateLimited(detail, retry_after=retry_after)

    async def _nap(self, waiter: _Waiter, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        wake = waiter.wake = loop.create_future()
        timer = loop.call_later(max(seconds, 0.0), _settle, wake)
        try:
            await wake
        finally:
            timer.cancel()
            waiter.wake = None

    def _leave(self, waiter: _Waiter, keys: Sequence[QueueKey], admitted: bool) -> None:
        for key in keys:
            queue = self._queues[key]
            index = queue.index(waiter)
            del queue[index]
            if not queue:
                del self._queues[key]
            elif not admitted:
                # Its reserved slots are free for those behind it (an admitted request took them instead).
                for behind in queue[index:]:
                    behind.poke()

    async def _cool_down(self, rules: Sequence[_Rule], claims: Sequence[Claim], answer: Answer) -> None:
        """The exchange said -1003 anyway (another client shares the key): the scope waits a window."""
        now = self._clock()
        retry_after = _retry_after(answer)
        until = [now + (retry_after if retry_after is not None else rule.hold) for rule in rules]
        await self._state.cool_down(claims, until, now)
        for rule, claim in zip(rules, claims, strict=True):
            self._metrics.ratelimit_upstream_429.labels(rule.name).inc()
            for waiter in self._queues.get((claim.rule, claim.scope), ()):
                waiter.poke()  # each re-plans: waits out the cool-down or is answered with its remaining time

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        await self._state.close()

    async def _sweep(self) -> None:
        """Bounded memory: scopes idle for `idle_scope_ttl` are dropped (they hold nothing by then)."""
        interval = min(max(self._idle_ttl / 4, 0.01), 5.0)
        while True:
            await asyncio.sleep(interval)
            self._state.drop_idle(self._clock(), self._idle_ttl)

    def status(self) -> dict[str, Any]:
        usage = self._state.usage(self._clock())
        busiest = sorted(usage, key=lambda scope: scope.used / scope.limit, reverse=True)[:10]
        state = self._state.describe()
        return {
            **({"state": state} if state is not None else {}),
            "rules": [rule.name for rule in self._rules],
            "scopes_in_use": len(usage),
            "queued": len({id(w) for queue in self._queues.values() for w in queue}),
            "busiest": [
                {
                    "rule": scope.rule,
                    "scope": scope.label,
                    "used": scope.used,
                    "limit": scope.limit,
                    "cooling_for": round(scope.cooling_for, 3),
                }
                for scope in busiest
            ],
        }


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _retry_after(answer: Answer) -> float | None:
    value = answer.headers.get("Retry-After", "")
    try:
        seconds = float(value)
    except ValueError:
        return None  # absent (the exchanges send none) or an HTTP date: one window then
    return seconds if 0 < seconds < 3600 else None
