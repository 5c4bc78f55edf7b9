"""Circuit breakers: stop retry storms on -1011 / -1012 and recover by themselves.

Guarantee, per breaker scope (a rule's route group, optionally per account, since -1012 RPC_REJECT can be
account-level): after `failure_threshold` consecutive trip failures — the rule's codes (-1011
RPC_NOT_CONNECT and -1012 RPC_REJECT, "try again in a few seconds") and, when `trip_on_transport`,
connection failures, timeouts and gateway 502/503/504 pages — every request in scope is answered at once,
locally, with the tripping code (X-Seawall: circuit-open, Retry-After = the rest of the open period).
Nothing reaches the exchange and, as this policy runs before the limiter, no rate budget is spent. After
`reset_timeout` exactly one probe goes upstream while the others are still answered locally; its success
closes the breaker, its failure re-opens it. The bot's own errors (-1005 bad params, -1101 risk, ...)
neither trip a breaker nor reset its count; a success does reset it. Nor do failures that are not the
exchange's: Seawall's own congestion, Seawall shutting down (an error with no cause), and a wait for the
answer that the request's own deadline cut short (cause `deadline`: queueing left the exchange less than
its full answer time).

pybreaker runs the state machine and its listeners feed metrics and logs, but it has no asyncio support
(its async helper needs Tornado) and, driven naively, lets every concurrent call through when half-open,
lets a late failure extend the open period, counts a cancelled call as a failure and resets the count on
an excluded error. So it is driven deliberately: admission is decided here; an outcome is reported to
pybreaker only after the classified answer arrives, only if it is a success or a trip failure, and only if
the request was admitted in the breaker's current epoch.

The policy receives its state store ready-made (`proxy/state/backends.py` picks it): each scope's storage
in process memory, or with `state: redis` shared by every replica, so an opening anywhere makes all of them
answer locally and one probe goes out across all of them (proxy/state/breaker_redis.py has the protocol
and its consistency window). pybreaker still runs here; a shared storage syncs the shared facts before
admission and publishes openings and closings after the answer.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pybreaker

from proxy.answer import Answer
from proxy.config import BreakerConfig, BreakerRule
from proxy.context import RequestContext
from proxy.errors import CircuitOpen, UpstreamUnavailable
from proxy.logs import log
from proxy.metrics import Metrics
from proxy.state.breaker import BreakerScopeStorage, BreakerStateStore
from proxy.types import Handler, Policy

STATE_VALUES = {pybreaker.STATE_CLOSED: 0, pybreaker.STATE_HALF_OPEN: 1, pybreaker.STATE_OPEN: 2}
# A gateway in front of the exchange answers these with an HTML page when it cannot reach it.
GATEWAY_FAILURES = frozenset({502, 503, 504})
TRANSPORT_CODE = UpstreamUnavailable.code  # -1011: what Seawall answers for an unreachable exchange
# Causes of an UpstreamUnavailable that say nothing about the exchange: none (Seawall shutting down; with
# Redis, a replica stopping would otherwise publish an opening to all) and `deadline` (the request's own
# deadline, mostly spent queueing, cut the wait for the answer short).
NOT_THE_EXCHANGES = frozenset({None, "deadline"})
MAX_SCOPES_PER_RULE = 1024  # bounds memory for per-account rules
MAX_ACCOUNT_LABELS = 20  # per-account metric series per rule; later accounts share `<rule>:other`
SUCCESS: Literal["success"] = "success"
News = int | Literal["success"] | None  # what an outcome says about the exchange


class _TripFailure(Exception):
    """Reported to pybreaker for an answer that counts as a failure."""


def _succeed() -> None:
    return None


def _fail() -> None:
    raise _TripFailure


class _Scope(pybreaker.CircuitBreakerListener):
    """One breaker scope: its pybreaker state machine, its storage, its safe name; logs its transitions."""

    def __init__(
        self, rule: BreakerRule, storage: BreakerScopeStorage, name: str, label: str | None, metrics: Metrics
    ) -> None:
        self.rule = rule
        self.storage = storage
        self.name = name  # safe to show: an alias or a fingerprint, never a key
        self.label = label  # the `breaker` metric label, None when over the label cap
        self.metrics = metrics
        self.failure_code = TRANSPORT_CODE  # the code of the failure being reported
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=rule.failure_threshold,
            reset_timeout=rule.reset_timeout,
            state_storage=storage,
            listeners=[self],
            name=label or rule.name,
        )
        if label is not None:
            metrics.circuit_state.labels(label).set(0)

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        to = new_state.name
        label = self.label or f"{self.rule.name}:other"
        self.metrics.circuit_transitions.labels(label, to).inc()
        if self.label is not None:
            self.metrics.circuit_state.labels(self.label).set(STATE_VALUES[to])
        fields: dict[str, Any] = {
            "breaker": self.rule.name,
            "scope": self.name,
            "from": getattr(old_state, "name", None),
            "to": to,
        }
        if to == pybreaker.STATE_OPEN:
            fields.update(code=self.failure_code, open_seconds=self.rule.reset_timeout)
        level = logging.WARNING if to == pybreaker.STATE_OPEN else logging.INFO
        log.log(level, "circuit breaker %s", to, extra={"fields": fields})


@dataclass(slots=True)
class _Ticket:
    """An admitted request: which scope, in which epoch, and whether it is the half-open probe."""

    scope: _Scope
    epoch: int
    probe: bool


class CircuitBreakerPolicy(Policy):
    """Answers requests of an open breaker scope locally; lets one probe through when half-open."""

    name = "breaker"

    def __init__(
        self,
        config: BreakerConfig,
        metrics: Metrics,
        store: BreakerStateStore,
        *,
        aliases: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`store` hands out each scope's storage (memory or Redis); `aliases` name accounts in /status,
        metrics and logs; `clock` is the one open periods are measured on."""
        self._metrics = metrics
        self._aliases = dict(aliases or {})
        self._store = store
        self._clock = clock
        self._rules = config.rules if config.enabled else ()
        self._by_route: dict[str, list[BreakerRule]] = {}
        self._any_route: list[BreakerRule] = []
        for rule in self._rules:
            for route in rule.routes:
                (self._any_route if route == "*" else self._by_route.setdefault(route, [])).append(rule)
        self._scopes: dict[str, OrderedDict[str, _Scope]] = {rule.name: OrderedDict() for rule in self._rules}
        self._labels: dict[str, set[str]] = {rule.name: set() for rule in self._rules}
        for rule in self._rules:
            if not rule.per_account:  # one scope: visible in /metrics and /status from the start
                self._scope_for(rule, "*", "*")

    async def handle(self, ctx: RequestContext, call_next: Handler) -> Answer:
        rules = self._by_route.get(ctx.route.name, []) + self._any_route
        if not rules:
            return await call_next(ctx)
        scopes = [self._scope(rule, ctx) for rule in rules]
        for scope in scopes:
            if not scope.storage.shared:
                continue
            await scope.storage.sync(self._clock())  # what other replicas did
            if scope.storage.trip_code is not None:
                scope.failure_code = scope.storage.trip_code
            scope.breaker.state  # noqa: B018  # pybreaker notices a state changed elsewhere, tells listeners
        tickets: list[_Ticket] = []
        try:
            for scope in scopes:
                tickets.append(await self._admit(scope))
        except CircuitOpen:
            for ticket in tickets:
                self._settle(ticket, None)
            raise
        try:
            answer = await call_next(ctx)
        except UpstreamUnavailable as error:
            theirs = error.cause not in NOT_THE_EXCHANGES
            for ticket in tickets:
                trips = theirs and ticket.scope.rule.trip_on_transport
                self._settle(ticket, TRANSPORT_CODE if trips else None)
            await self._publish(tickets)
            raise
        except BaseException:
            # Answered below without reaching the exchange (the limiter said no), or the bot hung up
            # (pybreaker itself would count a CancelledError as a failure): no news about the exchange.
            for ticket in tickets:
                self._settle(ticket, None)
            raise
        for ticket in tickets:
            self._settle(ticket, self._judge(ticket.scope.rule, answer))
        if any(ticket.scope.storage.shared for ticket in tickets):
            await self._publish(tickets)
        return answer

    async def _publish(self, tickets: list[_Ticket]) -> None:
        """Tell other replicas of an opening or closing this answer caused (no-op in memory)."""
        for ticket in tickets:
            await ticket.scope.storage.publish(self._clock())

    # -- decisions ------------------------------------------------------------------------------------

    @staticmethod
    def _judge(rule: BreakerRule, answer: Answer) -> News:
        """The answer's news: a trip code (failure), SUCCESS, or None (e.g. the bot's own error)."""
        if answer.code is not None:
            return answer.code if answer.code in rule.trip_codes else None
        if answer.status in GATEWAY_FAILURES:
            return TRANSPORT_CODE if rule.trip_on_transport else None
        return SUCCESS if answer.status < 400 else None

    async def _admit(self, scope: _Scope) -> _Ticket:
        storage = scope.storage
        state = scope.breaker.current_state
        if state == pybreaker.STATE_CLOSED:
            return _Ticket(scope, storage.epoch, probe=False)
        if state == pybreaker.STATE_OPEN:
            remaining = storage.open_until - self._clock()
            if remaining > 0:
                raise self._open_error(scope, remaining)
            scope.breaker.half_open()
        # Half-open: pybreaker would let every concurrent request through (measured: 20 of 20), so the
        # one probe slot is claimed here; the rest are answered locally until the probe settles.
        if await storage.claim_probe():
            return _Ticket(scope, storage.epoch, probe=True)
        raise self._open_error(scope, 0.0)

    def _open_error(self, scope: _Scope, remaining: float) -> CircuitOpen:
        code = scope.storage.trip_code or TRANSPORT_CODE
        return CircuitOpen(f"circuit {scope.rule.name!r} open", code=code, retry_after=remaining)

    def _settle(self, ticket: _Ticket, news: News) -> None:
        """Report a request's outcome to pybreaker — if it is news about the breaker's current epoch."""
        scope, storage = ticket.scope, ticket.scope.storage
        if ticket.epoch != storage.epoch:
            return  # admitted before the last opening: a late failure must not extend the open period
        if news is None:
            # Excluded codes must not reset the count (pybreaker's `exclude` would). A probe answered
            # -1005 proves little about the exchange's back end: the next request probes instead.
            if ticket.probe:
                storage.release_probe()
            return
        state = scope.breaker.current_state
        if state == pybreaker.STATE_OPEN or (state == pybreaker.STATE_HALF_OPEN and not ticket.probe):
            return
        if news == SUCCESS and state == pybreaker.STATE_CLOSED and scope.breaker.fail_counter == 0:
            return  # the common case: nothing to reset, no need for pybreaker's locks (hot path)
        try:
            if news == SUCCESS:
                scope.breaker.call(_succeed)  # resets the failure count; closes a half-open breaker
                if state == pybreaker.STATE_HALF_OPEN:
                    storage.mark_closed()
            else:
                scope.failure_code = int(news)
                scope.breaker.call(_fail)
        except pybreaker.CircuitBreakerError:  # pybreaker just opened it (threshold, or the probe failed)
            storage.mark_opened(self._clock() + scope.rule.reset_timeout, scope.failure_code)
        except _TripFailure:
            pass  # counted, still under the threshold
        finally:
            if ticket.probe:
                storage.release_probe()

    # -- scopes -----------------------------------------------------------------------------------------

    def _scope(self, rule: BreakerRule, ctx: RequestContext) -> _Scope:
        if not rule.per_account:
            return self._scopes[rule.name]["*"]
        value = ctx.scope_value("account")
        scopes = self._scopes[rule.name]
        scope = scopes.get(value)
        if scope is not None:
            scopes.move_to_end(value)
            return scope
        return self._scope_for(rule, value, self._safe_account_name(ctx))

    def _safe_account_name(self, ctx: RequestContext) -> str:
        if not ctx.account:
            return ctx.scope_name("account")  # the key's alias or fingerprint
        alias = self._aliases.get(ctx.account)
        return alias or "a-" + hashlib.sha256(ctx.account.encode("utf-8", "surrogateescape")).hexdigest()[:10]

    def _scope_for(self, rule: BreakerRule, value: str, name: str) -> _Scope:
        scopes, labels = self._scopes[rule.name], self._labels[rule.name]
        if len(scopes) >= MAX_SCOPES_PER_RULE:
            self._evict(rule)
        wanted = f"{rule.name}:{name}" if rule.per_account else rule.name
        label: str | None = wanted
        if wanted not in labels:
            if len(labels) < MAX_ACCOUNT_LABELS or not rule.per_account:
                labels.add(wanted)  # series are never freed, so the cap bounds them for good
            else:
                label = None
        # The backend sees a digest of the scope, never an API key (an unmapped key is its own account).
        scope_id = hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()
        storage = self._store.scope_storage(rule.name, scope_id)
        scope = _Scope(rule, storage, name, label, self._metrics)
        scopes[value] = scope
        return scope

    def _evict(self, rule: BreakerRule) -> None:
        """Forget the least recently used healthy scope (or, if none is healthy near the front, the LRU)."""
        scopes = self._scopes[rule.name]
        victim = next(iter(scopes))
        for value in itertools.islice(scopes, 64):
            candidate = scopes[value]
            if candidate.breaker.current_state == pybreaker.STATE_CLOSED and candidate.storage.counter == 0:
                victim = value
                break
        scope = scopes.pop(victim)
        if scope.label is not None:
            self._metrics.circuit_state.remove(scope.label)

    # -- admin --------------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = self._clock()
        described: dict[str, Any] = {}
        for rule in self._rules:
            scopes = {}
            for scope in self._scopes[rule.name].values():
                state = scope.breaker.current_state
                storage = scope.storage
                remaining = max(0.0, storage.open_until - now) if state == pybreaker.STATE_OPEN else 0.0
                scopes[scope.name] = {
                    "state": state,
                    "consecutive_failures": storage.counter,
                    "open_remaining_seconds": round(remaining, 3),
                    "trip_code": storage.trip_code if state != pybreaker.STATE_CLOSED else None,
                }
            described[rule.name] = {
                "routes": list(rule.routes),
                "per_account": rule.per_account,
                "failure_threshold": rule.failure_threshold,
                "reset_timeout": rule.reset_timeout,
                "scopes": scopes,
            }
        return described

    async def close(self) -> None:
        await self._store.close()
