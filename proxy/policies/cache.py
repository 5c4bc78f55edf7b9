"""Market data for a fleet: identical public GETs share one upstream call, and listed routes are
answered from memory for a short TTL.

A fleet of bots polls the same public endpoints (instrument info, tokens, books), and the exchange
counts public GETs per IP — for a sidecar, one budget for the whole fleet. This policy makes the fleet
cost the exchange what one bot costs. It acts only on the routes named in `cache.rules`; every other
route passes through untouched.

Guarantees, for a request on a listed route:

- **Who shares.** A request is shareable when it is a GET without a body, without a conditional or range
  header, and — unless its rule says `shared: true` — without any credential header (the profile's
  `identity.key_headers`, `account_headers` and `secret_headers`, plus `Authorization` and `Cookie`).
  Shareable requests share by identity: the same path and query bytes, and the same `Accept`,
  `Accept-Encoding`, `Accept-Language` and `Origin` values (an answer can differ by those, e.g. gzip).
  A private request is never answered with another request's answer, nor its answer kept (`bypass`).
  `shared: true` is for a signed route whose answer is the same for every account (Orderly's
  `/v1/orderbook/{symbol}`): credentials are then ignored, so anyone who can reach the listener reads that
  route's answers — an explicit choice, off by default.
- **Coalescing.** While a shareable request is in flight upstream, identical ones wait for it instead of
  being sent, and each gets its answer byte for byte plus `X-Seawall: coalesced`. The first request's
  upstream call runs in its own task, so a bot that hangs up never cancels the call its twins wait for.
- **Micro-cache.** With `ttl` > 0, a success — a 2xx answer (not 206) without an exchange error payload,
  whose `Vary` names no header outside the identity — is kept for `ttl` and answered byte for byte plus
  `X-Seawall: cache` and `Age` (seconds kept, added to the exchange's own `Age`). Errors are never kept.
  The cache is bounded by `max_entries` and `max_bytes` (least recently used entries go first); an
  answer over `max_entry_bytes` is passed on and not kept.
- **Errors.** A twin receives whatever the request it waited for received — an error payload, a 5xx, or
  Seawall's own local answer (`-1003` throttled, `-1011` unreachable) — because it waited for that
  attempt, and sending it again at once would spend the budget on a retry storm. Exception: on a
  `shared: true` route a twin takes only a success (and only an answer that does not vary by a header it
  sent differently); anything else may be one account's failure (its key's budget, its signature), so
  the twin sends its own request.
- **Budget.** The policy runs after dedup and before the breaker and the limiter (dedup → cache → breaker
  → limiter): a cache hit or a coalesced twin is answered before either, so it spends no rate budget,
  takes no half-open probe slot and is counted by neither; only the one request that goes upstream does.
  Dedup stays first: a request with an explicit identity keeps dedup's guarantees, and dedup strips its
  `Idempotency-Key` header before anything else sees the request.

Per process: coalescing joins the requests of one Seawall, and entries live in its memory whatever
`state.backend` says (proxy/state/cache.py), so N replicas make at most N upstream calls per identity
and TTL. A bot's `Cache-Control` request header is not honoured: the profile decides.

Metrics: `seawall_cache_total{route,result}` — `hit`, `coalesced`, `miss` (sent upstream), `stored`,
`not_stored` (an error, too large, or varying by another header), `evicted`, `bypass`; the gauges
`seawall_cache_entries` and `seawall_cache_bytes`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from multidict import CIMultiDictProxy

from proxy.answer import Answer
from proxy.config import CacheConfig, IdentityConfig
from proxy.context import RequestContext
from proxy.errors import SeawallError
from proxy.metrics import Metrics
from proxy.state.cache import CachedAnswer, Hit, MemoryCache
from proxy.types import Handler, Policy

# Request headers an answer may differ by (content negotiation): part of a request's identity.
KEY_HEADERS = ("Accept", "Accept-Encoding", "Accept-Language", "Origin")
_KEY_NAMES = frozenset(name.lower() for name in KEY_HEADERS)
# Always credentials, whatever the profile says.
ALWAYS_PRIVATE = ("Authorization", "Proxy-Authorization", "Cookie")
# A conditional or partial request asks for an answer about the requester's own copy.
CONDITIONAL = ("Range", "If-Range", "If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since")
COALESCED = "coalesced"
CACHED = "cache"


@dataclass(frozen=True, slots=True)
class _Rule:
    ttl: float
    shared: bool


@dataclass(frozen=True, slots=True)
class _Flight:
    """A shareable request on its way upstream: the task every twin waits for, and the request headers
    it was sent with (to tell whether an answer that varies by another header fits a twin)."""

    task: asyncio.Task[tuple[Answer, CachedAnswer]]
    headers: CIMultiDictProxy[str]


class CachePolicy(Policy):
    """Coalescing of identical shareable GETs in flight, and a bounded micro-cache per listed route."""

    name = "cache"

    def __init__(
        self, config: CacheConfig, identity: IdentityConfig, metrics: Metrics, store: MemoryCache
    ) -> None:
        """`store`: where kept answers live (proxy/state/backends.py: always this process's memory)."""
        # Route -> rule; the first rule naming a route wins, `*` covers the routes no rule names.
        self._rules: dict[str, _Rule] = {}
        for rule in config.rules:
            for route in rule.routes:
                self._rules.setdefault(route, _Rule(rule.ttl, rule.shared))
        self._other_routes = self._rules.pop("*", None)
        self._private = tuple(
            dict.fromkeys(
                name.lower()
                for name in (
                    *identity.key_headers,
                    *identity.account_headers,
                    *identity.secret_headers,
                    *ALWAYS_PRIVATE,
                )
            )
        )
        self._max_entry_bytes = config.max_entry_bytes
        self._max_entries = config.max_entries
        self._max_bytes = config.max_bytes
        self._store = store
        self._flights: dict[str, _Flight] = {}
        self._metric = metrics.cache
        # Label children cached by their label values: `labels()` takes a lock and builds a key each call.
        self._counters: dict[tuple[str, str], Any] = {}
        metrics.cache_entries.set_function(lambda: len(store))
        metrics.cache_bytes.set_function(lambda: store.bytes)

    async def handle(self, ctx: RequestContext, call_next: Handler) -> Answer:
        rule = self._rules.get(ctx.route.name, self._other_routes)
        if rule is None:
            return await call_next(ctx)
        route = ctx.route.name
        if not self._shareable(ctx, rule):
            self._count(route, "bypass")
            return await call_next(ctx)
        key = self._key(ctx.raw_path, ctx.headers)
        if rule.ttl > 0:
            hit = self._store.get(key)
            if hit is not None:
                self._count(route, "hit")
                return _from_cache(ctx, hit)
        flight = self._flights.get(key)
        if flight is None:
            return await self._lead(ctx, call_next, key, rule)
        return await self._follow(ctx, call_next, flight, rule)

    def _shareable(self, ctx: RequestContext, rule: _Rule) -> bool:
        if ctx.method != "GET" or ctx.body:
            return False
        headers = ctx.headers
        if any(name in headers for name in CONDITIONAL):
            return False
        return rule.shared or not any(name in headers for name in self._private)

    @staticmethod
    def _key(raw_path: str, headers: CIMultiDictProxy[str]) -> str:
        """The identity of a shareable request: its target bytes and its content-negotiation headers.
        (The listener refuses line breaks in a request head, so "\\n" cannot occur inside a part.)"""
        return "\n".join((raw_path, *(",".join(headers.getall(name, ())) for name in KEY_HEADERS)))

    async def _lead(self, ctx: RequestContext, call_next: Handler, key: str, rule: _Rule) -> Answer:
        """Send the request upstream in a task of its own that twins can wait for."""
        self._count(ctx.route.name, "miss")
        task = asyncio.get_running_loop().create_task(self._fetch(ctx, call_next, key, rule))
        self._flights[key] = _Flight(task, ctx.headers)
        task.add_done_callback(_retrieve)
        answer, _ = await asyncio.shield(task)
        return answer

    async def _fetch(
        self, ctx: RequestContext, call_next: Handler, key: str, rule: _Rule
    ) -> tuple[Answer, CachedAnswer]:
        try:
            answer = await call_next(ctx)
            frozen = CachedAnswer.of(answer)  # before the leader's answer leaves: no later edit leaks
            if rule.ttl > 0:
                self._keep(ctx.route.name, key, frozen, rule.ttl)
            return answer, frozen
        finally:
            # In the same step as storing: a request arriving now finds the entry, or sends anew.
            self._flights.pop(key, None)

    async def _follow(self, ctx: RequestContext, call_next: Handler, flight: _Flight, rule: _Rule) -> Answer:
        """Wait for the request in flight and take its answer (or its failure; see the module docstring)."""
        route = ctx.route.name
        try:
            _, frozen = await asyncio.shield(flight.task)
        except SeawallError as error:
            if rule.shared:  # perhaps one account's failure: this bot's own request may well succeed
                self._count(route, "miss")
                return await call_next(ctx)
            self._count(route, COALESCED)
            raise type(error)(
                error.detail, retry_after=error.retry_after, code=error.code, cause=error.cause
            ) from None
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this request itself is being cancelled
            # The shared call was stopped (Seawall shutting down): still an answer, in the exchange's format.
            self._count(route, COALESCED)
            raise SeawallError("the identical request this one waited for was stopped") from None
        except Exception:
            self._count(route, COALESCED)
            raise SeawallError("the identical request this one waited for failed") from None
        fits = _same_variant(frozen, flight.headers, ctx.headers)
        if not fits or (rule.shared and not _success(frozen)):
            self._count(route, "miss")
            return await call_next(ctx)
        self._count(route, COALESCED)
        ctx.outcome = COALESCED
        answer = frozen.to_answer()
        answer.headers["X-Seawall"] = COALESCED
        return answer

    def _keep(self, route: str, key: str, frozen: CachedAnswer, ttl: float) -> None:
        if not _success(frozen) or not _fits_identity(frozen) or frozen.size > self._max_entry_bytes:
            self._count(route, "not_stored")
            return
        evicted = self._store.put(key, route, frozen, ttl)
        if evicted is None:
            self._count(route, "not_stored")
            return
        self._count(route, "stored")
        for owner in evicted:
            self._count(owner, "evicted")

    def _count(self, route: str, result: str) -> None:
        counter = self._counters.get((route, result))
        if counter is None:
            counter = self._counters[(route, result)] = self._metric.labels(route, result)
        counter.inc()

    def status(self) -> dict[str, Any]:
        rules = dict(self._rules)
        if self._other_routes is not None:
            rules["*"] = self._other_routes
        return {
            "backend": self._store.backend,
            "entries": len(self._store),
            "bytes": self._store.bytes,
            "in_flight": len(self._flights),
            "max_entries": self._max_entries,
            "max_bytes": self._max_bytes,
            "routes": {
                route: {"ttl_seconds": r.ttl, "shared": r.shared} for route, r in sorted(rules.items())
            },
        }

    async def close(self) -> None:
        tasks = [flight.task for flight in self._flights.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._store.clear()


def _retrieve(task: asyncio.Task[tuple[Answer, CachedAnswer]]) -> None:
    """Read the task's failure: every waiter may be gone (no "exception was never retrieved")."""
    if not task.cancelled():
        task.exception()


def _success(answer: CachedAnswer) -> bool:
    """A 2xx answer that is not partial and carries no exchange error payload."""
    return 200 <= answer.status < 300 and answer.status != 206 and answer.code is None


def _vary(answer: CachedAnswer) -> set[str]:
    """The lower-case header names the answer's `Vary` fields name (`*` included as is)."""
    return {
        token.strip().lower()
        for name, value in answer.headers
        if name.lower() == "vary"
        for token in value.split(",")
        if token.strip()
    }


def _fits_identity(answer: CachedAnswer) -> bool:
    """Whether every request with this identity may be given the answer: it varies by nothing else."""
    return _vary(answer) <= _KEY_NAMES


def _same_variant(answer: CachedAnswer, sent: CIMultiDictProxy[str], wanted: CIMultiDictProxy[str]) -> bool:
    """Whether an answer to a request sent with `sent` headers fits a twin with `wanted` headers."""
    for name in _vary(answer) - _KEY_NAMES:
        if name == "*" or sent.getall(name, ()) != wanted.getall(name, ()):
            return False
    return True


def _from_cache(ctx: RequestContext, hit: Hit) -> Answer:
    ctx.outcome = "cached"
    answer = hit.answer.to_answer()
    answer.headers["X-Seawall"] = CACHED
    kept = int(hit.age)
    upstream_age = answer.headers.get("Age", "")
    if upstream_age.isdigit():  # the exchange's (or its CDN's) own Age: the answer is that much older
        kept += int(upstream_age)
    answer.headers["Age"] = str(kept)
    return answer
