"""Client-side rate limiting that matches the exchange's strict sliding windows.

Guarantee: for every rule, no more than `limit` slots of one scope are ever inside any sliding window
of `window` seconds as the exchange sees it, so traffic through Seawall never earns a -1003 from an
exchange enforcing its documented limits — while the budget is still used (goodput >= 0.99 of N with the
exchange 15 ms away, >= 0.97 with 10 ms of jitter each way: BENCHMARKS.md) and a burst that fits the
budget goes out at once.

How: each admitted request holds its slots from admission until one window plus `margin` after its
answer arrives, less what the measured network proves about when the exchange counted it
(`proxy/state/ratelimit_network.py`; docs/design.md, "Why it is safe"). aiolimiter, the stack's default
limiter, is kept out of here because it fails the guarantee (BENCHMARKS.md "Rate limiting", 50 bots on
one key, 10/s, 12 s): `AsyncLimiter(N, W)` is a leaky bucket that admits 2N-1 per sliding window (19 for
10/s) and earned 23 upstream -1003s; `AsyncLimiter(1, W/N)` keeps the limit but spaces every request W/N
apart, so a burst within budget no longer goes at once.

A request under several rules takes from all or none, atomically. Over budget it waits in a queue per
(rule, scope), holding no slot while it waits; a later request may go first only where the slots of
everyone queued in front of it still fit (so a batch waiting on the 1/s batch rule does not stall single
placements, and is not starved by them). The queue is served by `priority` (cancels can overtake
placements), then in fair turns between the bots sharing the scope (`proxy/state/ratelimit_fair.py`: told
apart by an `X-Seawall-Client` header, stripped before forwarding, or their address; a bot with 50
requests queued cannot make a bot with one wait behind them; while bots contend, requests leave a queue
one slot interval apart, so the slots come free spread out), then in arrival order. A request is
answered -1003 at once, with Retry-After, when its wait is known to exceed its max wait — the smallest
`max_wait` of its rules, or less while the signature it carries would turn stale before it could be sent
(`signing.*`: the exchange's timestamp window, a bot's own recv window) — or when an over-budget rule says
`on_limit: reject`. A queued request is never sent with a signature the exchange would refuse as stale.

A shadow rule (`enforce: false`) counts what it would have delayed or refused
(`seawall_ratelimit_shadow_total{rule,reason}`) and delays nothing. An upstream -1003 anyway (someone else
spends the key) cools the scope down for one window (or the exchange's Retry-After) and lowers its
effective limit (`proxy/state/ratelimit_learning.py`); the exchange's X-RateLimit-* headers are followed.
Rules can be replaced while running (`configure`, a config reload): queued requests keep their place and
the windows of rules that keep their name keep their slots.

The policy keeps the queues, decides who waits and who gives up, answers the bot and counts metrics; the
slots and cool-downs are its state's (`proxy/state/ratelimit.py`), which it receives ready-made
(`proxy/state/backends.py` picks it): in process memory, or with `state: redis` in Redis for every replica
(`proxy/state/ratelimit_redis.py`), so many replicas keep one budget; the queues stay per replica. A
shared state that cannot decide (Redis away, `on_unavailable: fail_closed`) says so (`SharedStateDown`);
the policy answers -1003 locally (`StateUnavailable`, X-Seawall `state-unavailable`) with Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from multidict import CIMultiDict

from proxy.answer import Answer
from proxy.config import RateLimitConfig, RateLimitRule, SigningConfig
from proxy.context import RequestContext
from proxy.errors import RateLimited, StateUnavailable
from proxy.metrics import Metrics
from proxy.state.ratelimit import Claim, RateLimitState, SharedStateDown, Verdict
from proxy.state.ratelimit_fair import FairShare
from proxy.state.ratelimit_learning import LearnedLimits
from proxy.state.ratelimit_network import NetworkCredit, exchange_stamp, stamp_pattern
from proxy.types import Handler, Policy

QueueKey = tuple[str, str]  # (rule, scope)
MAX_CLIENT_NAME = 64  # a longer X-Seawall-Client value is cut: it is a name, not a payload


@dataclass(frozen=True, slots=True)
class _Rule:
    """One configured rule, resolved once: how to name a request's scope and what it costs."""

    name: str
    limit: int
    window: float
    hold: float  # window + margin: how long a slot stays held after its answer (less the network credit)
    scope: tuple[str, ...]
    per_unit: bool
    reject: bool
    max_wait: float
    priority: dict[str, int]
    enforce: bool

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
            enforce=rule.enforce,
        )

    def cost(self, ctx: RequestContext) -> int:
        return max(1, ctx.units) if self.per_unit else 1


@dataclass(eq=False, slots=True)
class _Waiter:
    # (-priority, fair tag, its bot's backlog, arrival): the same order in every queue, so no two block
    # each other; at equal tags, the bot with less queued goes first
    order: tuple[int, float, float, int]
    costs: dict[QueueKey, int]
    bot: str = ""
    finish: dict[QueueKey, float] = field(default_factory=dict)  # its fair turn's end, per queue
    poked: bool = False
    deciding: bool = False  # its acquire is under way (a shared state answers after a round trip)
    wake: asyncio.Future[None] | None = field(default=None, repr=False)

    def poke(self) -> None:
        self.poked = True
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)


@dataclass(slots=True)
class _Admission:
    claims: tuple[Claim, ...]
    ticket: str
    at: float  # when it was admitted (the policy's clock)


class RateLimitPolicy(Policy):
    """Admits a request when every rule it falls under has room, queues it until then (or answers -1003
    at once when waiting is hopeless), and learns from the exchange's -1003s and rate-limit headers."""

    name = "ratelimit"

    def __init__(
        self,
        config: RateLimitConfig,
        metrics: Metrics,
        state: RateLimitState,
        *,
        signing: SigningConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """`state` holds the slots (memory or Redis: `proxy/state/backends.py`). `clock` stamps every call
        to it, so a state that keeps time itself must be on the same clock (both default to monotonic);
        `wall_clock` reads the bots' signature timestamps (Unix time)."""
        self._state = state
        self._clock = clock
        self._wall_clock = wall_clock
        self._metrics = metrics
        self._queues: dict[QueueKey, list[_Waiter]] = {}
        self._arrivals = itertools.count()
        self._sweeper: asyncio.Task[None] | None = None
        self._network = NetworkCredit()
        self._learned = LearnedLimits(clock=clock)
        self._fair = FairShare()
        self._rules: list[_Rule] = []
        self._named: dict[str, _Rule] = {}
        self._waited: dict[str, Any] = {}
        self.configure(config, signing or SigningConfig())
        state.notify_released(self._poke_next)

    # --- configuration (at start, and on every reload) ------------------------------------------------

    def configure(self, config: RateLimitConfig, signing: SigningConfig) -> None:
        """Take new rules and settings at once (nothing here suspends, so no request sees half of them).
        Queued requests keep their place and re-plan under the new rules; a rule that keeps its name keeps
        its window (its slots are the state's, by name) and what was learned about it."""
        sources = config.rules if config.enabled else ()
        rules = [_Rule.from_config(rule, config.margin) for rule in sources]
        by_route: dict[str, tuple[_Rule, ...]] = {}
        for rule, source in zip(rules, sources, strict=True):
            for route in source.routes:
                by_route[route] = (*by_route.get(route, ()), rule)
        gone = set(self._named) - {rule.name for rule in rules}
        self._rules, self._named = rules, {rule.name: rule for rule in rules}
        self._every_route = by_route.pop("*", ())
        self._by_route = by_route
        self._margin = config.margin
        self._idle_ttl = config.idle_scope_ttl
        network = config.network
        self._network.configure(
            enabled=network.enabled,
            period=network.period,
            min_samples=network.min_samples,
            use_stamps=network.exchange_time_field is not None,
        )
        field_name = network.exchange_time_field
        self._stamp = stamp_pattern(field_name) if field_name else None
        learning = config.learning
        self._learned.configure(
            enabled=learning.enabled,
            decrease=learning.decrease,
            min_share=learning.min_share,
            restore_every=learning.restore_every,
            probe_after=learning.probe_after,
        )
        self._follow_headers = learning.enabled and learning.follow_headers
        fair = config.fair_share
        self._fair_enabled = fair.enabled
        self._client_header = fair.header
        self._fair.weights = dict(fair.weights)
        self._signing = signing
        self._register_metrics(gone)
        for name in gone:
            self._learned.forget(name)
        for queue in self._queues.values():
            for waiter in queue:
                waiter.poke()  # re-plan under the new rules

    def _register_metrics(self, gone: set[str]) -> None:
        metrics = self._metrics
        families = (
            metrics.ratelimit_budget_used,
            metrics.ratelimit_effective_limit,
            metrics.ratelimit_queued,
        )
        for name in gone:
            for family in families:
                with contextlib.suppress(KeyError):  # never labelled (a rule with no traffic yet)
                    family.remove(name)
        self._waited = {rule.name: metrics.ratelimit_wait.labels(rule.name) for rule in self._rules}
        for rule in self._rules:
            metrics.ratelimit_budget_used.labels(rule.name).set_function(self._budget_used(rule.name))
            metrics.ratelimit_effective_limit.labels(rule.name).set_function(self._lowest(rule))
            metrics.ratelimit_queued.labels(rule.name).set_function(self._queued(rule.name))

    def _budget_used(self, rule: str) -> Callable[[], float]:
        return lambda: self._state.busiest_share(rule, self._clock())

    def _lowest(self, rule: _Rule) -> Callable[[], float]:
        return lambda: self._learned.lowest(rule.name, rule.limit)

    def _queued(self, rule: str) -> Callable[[], float]:
        return lambda: sum(len(queue) for (name, _), queue in self._queues.items() if name == rule)

    def _rules_for(self, route: str) -> tuple[_Rule, ...]:
        return self._by_route.get(route, ()) + self._every_route

    # --- a request ----------------------------------------------------------------------------------

    async def handle(self, ctx: RequestContext, call_next: Handler) -> Answer:
        bot = self._bot_name(ctx)  # strips the header: it is Seawall's, never the exchange's
        rules = self._rules_for(ctx.route.name)
        if not rules:
            return await call_next(ctx)
        admission = await self._admit(ctx, rules, bot)
        try:
            answer = await call_next(ctx)
        except BaseException:
            # No answer: the slots are held a full window from now (sent or not, it cannot be told here).
            await self._release(admission, self._clock(), 0.0)
            raise
        now = self._clock()
        await self._release(admission, now, self._credit(answer, now))
        if answer.source == "upstream":
            await self._learn(rules, admission, answer, now)
        return answer

    def _bot_name(self, ctx: RequestContext) -> str:
        """Which bot sent the request (fair turns): its `X-Seawall-Client` header, else its address."""
        header = self._client_header
        named = ctx.headers.get(header)
        if named is None:
            return ctx.client
        headers = ctx.forward_headers if ctx.forward_headers is not None else CIMultiDict(ctx.headers)
        headers.popall(header, None)
        ctx.forward_headers = headers
        return named.strip()[:MAX_CLIENT_NAME] or ctx.client

    def _claims(self, ctx: RequestContext, rules: Sequence[_Rule], now: float) -> tuple[Claim, ...]:
        claims = []
        for rule in rules:
            scope = "|".join(ctx.scope_value(dim) for dim in rule.scope)
            label = "|".join(ctx.scope_name(dim) for dim in rule.scope)
            limit = self._learned.limit(rule.name, scope, rule.limit, now)  # lowered after a -1003?
            claims.append(Claim(rule.name, scope, label, limit, rule.hold, rule.cost(ctx), rule.enforce))
        return tuple(claims)

    def _credit(self, answer: Answer, now: float) -> float:
        """How much earlier than answer + hold the request's slots may go (the measured network)."""
        if answer.source != "upstream" or answer.latency is None:
            return 0.0
        stamp = exchange_stamp(answer.body, self._stamp) if self._stamp is not None else None
        return self._network.credit(now - answer.latency, now, stamp)

    async def _release(self, admission: _Admission, now: float, credit: float) -> None:
        await self._state.release(admission.claims, now, admission.ticket, credit)
        self._poke_next(admission.claims)

    def _poke_next(self, claims: Sequence[Claim]) -> None:
        """Those next in line re-plan: a release time is known now (their lower bound may have said a
        whole hold from the moment its request was still in flight)."""
        for claim in claims:
            queue = self._queues.get((claim.rule, claim.scope), ())
            for waiter in queue[: claim.limit]:
                waiter.poke()

    # --- admission ----------------------------------------------------------------------------------

    def _signature_deadline(self, ctx: RequestContext, now: float) -> float | None:
        """When (on the policy's clock) the request must be sent by for its signature to be accepted:
        its timestamp plus the exchange's window (or the bot's own recv window, if shorter), less the
        time it needs to arrive. None when the profile or the request says nothing."""
        signing = self._signing
        if signing.timestamp_header is None or signing.window is None:
            return None
        raw = ctx.headers.get(signing.timestamp_header, "")
        if not (raw.isascii() and raw.isdigit() and len(raw) == 13):
            return None  # not a millisecond timestamp: the exchange will say so
        valid_for = signing.window
        if signing.recv_window_header is not None:
            recv = ctx.headers.get(signing.recv_window_header, "")
            if recv.isascii() and recv.isdigit() and 0 < int(recv) < valid_for * 1000:
                valid_for = int(recv) / 1000
        age = self._wall_clock() - int(raw) / 1000
        arrival = self._network.min_round_trip(now) + self._margin  # to reach the exchange, and slack
        return now + valid_for - age - arrival

    async def _admit(self, ctx: RequestContext, rules: Sequence[_Rule], bot: str) -> _Admission:
        """Wait for room in every enforced rule (or raise RateLimited); the admission."""
        started = self._clock()
        route = ctx.route.name
        names = [rule.name for rule in rules]
        deadline = self._signature_deadline(ctx, started)
        claims = self._claims(ctx, rules, started)
        keys = [(claim.rule, claim.scope) for claim in claims if claim.enforce]
        queues = self._queues
        fair = self._fair_enabled
        paced = self._fair.paced(self._paced(rules, claims), started) if fair and self._fair else None
        if not any(key in queues for key in keys) and (paced is None or paced <= started):
            # Nobody queued (and, where bots contend, its turn): a request that fits goes out at once.
            verdict = await self._decide(claims, (0,) * len(claims), started)
            if verdict.admitted:
                if paced is not None:  # bots contend: it takes its turn like any other
                    tag, finish = self._fair.tag(bot, self._spacing(rules, claims), {}, started)
                    self._fair.admitted(bot, tag, finish, self._paced_by(rules, claims), started)
                return self._admitted(rules, claims, verdict, started, started)
            self._give_up_if_hopeless(rules, verdict, 0.0, *self._max_wait(rules, deadline, started))
        enforced = [rule for rule in rules if rule.enforce]
        priority = max(rule.priority.get(route, 0) for rule in enforced)
        tag, finish, backlog = 0.0, dict[QueueKey, float](), 0.0
        if fair:
            queued = self._queued_turns(bot, keys)
            tag, finish = self._fair.tag(bot, self._spacing(rules, claims), queued, started)
            backlog = max(queued.values(), default=0.0)
        costs = {(c.rule, c.scope): c.cost for c in claims if c.enforce}
        waiter = _Waiter((-priority, tag, backlog, next(self._arrivals)), costs, bot, finish)
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
                rules = [self._named[name] for name in names if name in self._named]  # reloads
                claims = self._claims(ctx, rules, now)
                max_wait, stale = self._max_wait(rules, deadline, started)
                paced = self._fair.paced(self._paced(rules, claims), now) if fair else None
                if paced is not None and not self._at_head(waiter, keys):
                    # Bots contend: requests leave in turn, a slot interval apart. Not its turn yet: it is
                    # poked when the one in front of it leaves (and given up at once if too far back).
                    least = self._turns_ahead(waiter, keys, rules, claims) + max(0.0, paced - now)
                    self._give_up_if_paced_beyond(rules, least, now - started, max_wait, stale)
                    await self._nap(waiter, max_wait - (now - started))
                    continue
                if paced is not None and paced > now:
                    self._give_up_if_paced_beyond(rules, paced - now, now - started, max_wait, stale)
                    await self._nap(waiter, paced - now)
                    continue
                ahead = [
                    self._ahead(key, waiter) if key in costs else 0
                    for key in ((claim.rule, claim.scope) for claim in claims)
                ]
                waiter.deciding = True
                try:
                    verdict = await self._decide(claims, ahead, now)
                finally:
                    waiter.deciding = False
                if verdict.admitted:
                    admitted = True
                    if fair:
                        self._fair.admitted(bot, tag, finish, self._paced_by(rules, claims), now)
                    break
                elapsed = now - started
                self._give_up_if_hopeless(rules, verdict, elapsed, max_wait, stale)
                if not waiter.poked:
                    waits = [w for w, r in zip(verdict.waits, rules, strict=True) if r.enforce] or [0.0]
                    await self._nap(waiter, min(max(waits), max_wait - elapsed))
        finally:
            self._leave(waiter, keys, admitted)
        return self._admitted(rules, claims, verdict, started, self._clock())

    def _queued_turns(self, bot: str, keys: Sequence[QueueKey]) -> dict[QueueKey, float]:
        """Per queue: the turns (finish - tag) of `bot`'s requests still waiting there."""
        found: dict[QueueKey, float] = {}
        for key in keys:
            turns = [w.finish[key] - w.order[1] for w in self._queues.get(key, ()) if w.bot == bot]
            if turns:
                found[key] = sum(turns)
        return found

    def _spacing(self, rules: Sequence[_Rule], claims: Sequence[Claim]) -> list[tuple[QueueKey, float]]:
        """Per queue the request waits in: how much of a bot's turns it uses (its cost in slot intervals)."""
        return [
            ((c.rule, c.scope), c.cost * r.window / c.limit)
            for r, c in zip(rules, claims, strict=True)
            if r.enforce
        ]

    def _paced(self, rules: Sequence[_Rule], claims: Sequence[Claim]) -> list[tuple[QueueKey, float]]:
        return [((c.rule, c.scope), r.window) for r, c in zip(rules, claims, strict=True) if r.enforce]

    def _paced_by(
        self, rules: Sequence[_Rule], claims: Sequence[Claim]
    ) -> list[tuple[QueueKey, float, float]]:
        return [
            ((c.rule, c.scope), r.window, c.cost * r.window / c.limit)
            for r, c in zip(rules, claims, strict=True)
            if r.enforce
        ]

    def _at_head(self, waiter: _Waiter, keys: Sequence[QueueKey]) -> bool:
        return all(self._queues[key][0] is waiter for key in keys)

    def _turns_ahead(
        self, waiter: _Waiter, keys: Sequence[QueueKey], rules: Sequence[_Rule], claims: Sequence[Claim]
    ) -> float:
        """A lower bound on the wait of a paced request not at the head: those in front of it leave one
        slot interval apart (the first may leave now)."""
        slot = {(c.rule, c.scope): r.window / c.limit for r, c in zip(rules, claims, strict=True)}
        return max(
            (max(0, self._queues[key].index(waiter) - 1) * slot.get(key, 0.0) for key in keys), default=0.0
        )

    def _give_up_if_paced_beyond(
        self, rules: Sequence[_Rule], wait: float, elapsed: float, max_wait: float, stale: bool
    ) -> None:
        if elapsed + wait >= max_wait:
            enforced = [rule for rule in rules if rule.enforce]
            if enforced:
                self._refuse(enforced[0], "stale_signature" if stale else "queue_timeout", wait)

    def _max_wait(self, rules: Sequence[_Rule], deadline: float | None, started: float) -> tuple[float, bool]:
        """How long the request may wait from its arrival (`started`), and whether its signature is what
        limits it."""
        enforced = [rule.max_wait for rule in rules if rule.enforce]
        longest = min(enforced) if enforced else 0.0
        if deadline is not None and deadline - started < longest:
            return deadline - started, True
        return longest, False

    def _admitted(
        self, rules: Sequence[_Rule], claims: tuple[Claim, ...], verdict: Verdict, started: float, now: float
    ) -> _Admission:
        waited = now - started
        for rule, wait in zip(rules, verdict.waits, strict=True):
            if rule.enforce:
                self._waited[rule.name].observe(waited)
            elif wait > 0:
                self._metrics.ratelimit_shadow.labels(rule.name, _shadow_reason(rule, wait, waited)).inc()
        return _Admission(claims, verdict.ticket, now)

    async def _decide(self, claims: Sequence[Claim], ahead: Sequence[int], now: float) -> Verdict:
        """The state's verdict. A shared state that cannot decide (Redis away, failing closed) is answered
        -1003 here, with when Redis is tried again, rather than let anything through unaccounted."""
        try:
            return await self._state.acquire(claims, ahead, now)
        except SharedStateDown as down:
            self._metrics.ratelimit_rejected.labels(claims[0].rule, "state_unavailable").inc()
            raise StateUnavailable(str(down), retry_after=down.retry_after) from None

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
        self, rules: Sequence[_Rule], verdict: Verdict, elapsed: float, max_wait: float, stale: bool
    ) -> None:
        """Answer -1003 now if a `reject` rule is over budget or the wait is known to exceed the max wait
        (its rules', or what its signature allows), rather than let the bot wait in vain."""
        timeout = "stale_signature" if stale else "queue_timeout"
        for rule, wait, cooling in zip(rules, verdict.waits, verdict.cooling, strict=True):
            if not rule.enforce:
                continue
            if math.isinf(wait):
                self._refuse(rule, "too_large", None)
            if wait > 0 and (rule.reject or elapsed + wait > max_wait):
                reason = "cooldown" if cooling else "rejected" if rule.reject else timeout
                self._refuse(rule, reason, wait)
        enforced = [i for i, rule in enumerate(rules) if rule.enforce]
        if enforced and elapsed >= max_wait:  # still behind others at the deadline
            worst = max(enforced, key=lambda i: verdict.waits[i])
            self._refuse(rules[worst], timeout, verdict.waits[worst] or None)

    def _refuse(self, rule: _Rule, reason: str, retry_after: float | None) -> None:
        self._metrics.ratelimit_rejected.labels(rule.name, reason).inc()
        detail = {
            "rejected": f"over the {rule.name} budget",
            "too_large": f"costs more than the {rule.name} budget of {rule.limit}",
            "cooldown": f"{rule.name} cooling down after an exchange -1003",
            "stale_signature": f"{rule.name} budget: the request's signature would be too old by the time "
            "it could be sent; sign it again",
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
            elif index == 0:
                queue[0].poke()  # the next in turn (where bots contend, only the head may go)
                if not admitted:
                    for behind in queue[1:]:
                        behind.poke()
            elif not admitted:
                # Its reserved slots are free for those behind it (an admitted request took them instead).
                for behind in queue[index:]:
                    behind.poke()

    # --- what the exchange said -----------------------------------------------------------------------

    async def _learn(self, rules: Sequence[_Rule], admission: _Admission, answer: Answer, now: float) -> None:
        """Follow the exchange: its X-RateLimit-* headers, and a -1003 it answered anyway."""
        enforced = [
            (rule, claim) for rule, claim in zip(rules, admission.claims, strict=True) if rule.enforce
        ]
        if not enforced:
            return
        if self._follow_headers:
            await self._follow_headers_of(enforced, answer, now)
        if answer.code == -1003:
            await self._cool_down(enforced, answer)
            for rule, claim in enforced:
                self._learned.lower(rule.name, claim.scope, claim.label, rule.limit, admission.at, now)

    async def _follow_headers_of(
        self, enforced: Sequence[tuple[_Rule, Claim]], answer: Answer, now: float
    ) -> None:
        headers = answer.headers
        if "X-RateLimit-Limit" not in headers and "X-RateLimit-Remaining" not in headers:
            return  # neither exchange sends them today: one cheap look
        announced = _int_header(headers.get("X-RateLimit-Limit"))
        if announced is not None and len(enforced) == 1:  # which rule it is about is clear only then
            rule, claim = enforced[0]
            self._learned.cap(rule.name, claim.scope, claim.label, rule.limit, announced, now)
        if _int_header(headers.get("X-RateLimit-Remaining")) == 0:
            reset = _reset_seconds(headers.get("X-RateLimit-Reset"), self._wall_clock())
            if reset is not None:
                claims = [claim for _, claim in enforced]
                await self._state.cool_down(claims, [now + reset] * len(claims), now)
                self._poke_scopes(claims)

    async def _cool_down(self, enforced: Sequence[tuple[_Rule, Claim]], answer: Answer) -> None:
        """The exchange said -1003 anyway (another client shares the key): the scope waits a window."""
        now = self._clock()
        retry_after = _retry_after(answer)
        claims = [claim for _, claim in enforced]
        until = [now + (retry_after if retry_after is not None else rule.hold) for rule, _ in enforced]
        await self._state.cool_down(claims, until, now)
        for rule, _ in enforced:
            self._metrics.ratelimit_upstream_429.labels(rule.name).inc()
        self._poke_scopes(claims)

    def _poke_scopes(self, claims: Sequence[Claim]) -> None:
        for claim in claims:
            for waiter in self._queues.get((claim.rule, claim.scope), ()):
                waiter.poke()  # each re-plans: waits out the cool-down or is answered with its remaining time

    # --- lifecycle and status -------------------------------------------------------------------------

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
        while True:
            await asyncio.sleep(min(max(self._idle_ttl / 4, 0.01), 5.0))
            now = self._clock()
            self._state.drop_idle(now, self._idle_ttl)
            self._fair.drop_idle(now, self._idle_ttl)

    def status(self) -> dict[str, Any]:
        now = self._clock()
        usage = self._state.usage(now)
        busiest = sorted(usage, key=lambda scope: scope.used / scope.limit, reverse=True)[:10]
        state = self._state.describe()
        return {
            **({"state": state} if state is not None else {}),
            "rules": [rule.name for rule in self._rules],
            "shadow_rules": [rule.name for rule in self._rules if not rule.enforce],
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
            "lowered": self._learned.status(now),
            "network": self._network.status(now),
            "fair_share": {"enabled": self._fair_enabled, "queues_with_turns": len(self._fair)},
        }


def _shadow_reason(rule: _Rule, wait: float, waited: float) -> str:
    """What a shadow rule would have done to a request it would have made wait `wait` more seconds."""
    if math.isinf(wait):
        return "too_large"
    if rule.reject:
        return "rejected"
    return "queue_timeout" if waited + wait > rule.max_wait else "delayed"


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


def _int_header(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()
    return int(value) if value.isascii() and value.isdigit() and len(value) < 16 else None


def _reset_seconds(value: str | None, wall_now: float) -> float | None:
    """`X-RateLimit-Reset` as seconds from now: a delay in seconds, or a Unix time in seconds or in
    milliseconds (exchanges send each); None when unreadable or not within the next hour."""
    number = _int_header(value)
    if number is None:
        return None
    if number >= 10**12:
        seconds = number / 1000 - wall_now
    elif number >= 10**9:
        seconds = number - wall_now
    else:
        seconds = float(number)
    return seconds if 0 < seconds <= 3600 else None
