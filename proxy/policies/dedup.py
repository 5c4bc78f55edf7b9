"""Deduplication: one exchange request per identity, and nothing a bot sent is lost.

Guarantee: within the TTL, requests that share an explicit identity reach the exchange at most once
while the first one's outcome is known or pending; every twin gets the first one's answer byte for byte
(plus `X-Seawall: dedup-replay`); a twin with a different payload gets a local -1007 and is never sent.

Identity exists only where it is explicit, so a bot that deliberately sends two equal orders gets two:
- order placement routes with an `identity: client_order_id` rule: (account or key, client order id) —
  the exchanges only keep that id unique among *open* orders (EXCHANGES.md §4.2), so a blind retry of a
  placement that already filled would create a second order; this window closes that hole;
- any route: an `Idempotency-Key` header (stripped before forwarding);
- routes with an `identity: body_hash` rule: (account or key, method, path, canonical params).
The first that applies wins, in that order. Identities are hashes; no key is ever stored.

With `state: redis` the entries are shared: the guarantee holds across replicas (one claim per identity
in Redis, twins on other replicas wait for its answer, a claim whose replica died expires after
`dedup.lock_ttl`); if Redis fails, each replica dedups on its own memory (proxy/state/dedup_redis.py).

What is kept after the first request ends:
- an answer that settles the request (a success, or an error that is the bot's fault) is stored and
  replayed for the TTL;
- a transient failure (-1003, -1011, -1012, 429, 5xx, and local answers: open circuit, throttle) and an
  authentication failure (-1001, -1002, 401, 403: nothing was executed) are not stored, so a retry
  goes through; twins that were already waiting receive that same failure (they were waiting for this
  attempt's answer, and a second attempt now would be a retry storm);
- a lost answer — a transport error or 504 after a non-safe request was sent — leaves the outcome
  unknown: the exchange may have accepted the order. A retry then is answered locally with -1007 for the
  TTL instead of being forwarded. Seawall cannot sign, so it cannot look the order up itself; forwarding
  the retry would earn the exchange's own -1007 if the order is still open, but place a second order if
  it has already filled (a market or IOC order usually has). -1007 is what bots already handle for a
  duplicate placement; the message tells the bot to look the order up by its client order id. A failure
  where nothing was sent (connection refused: `UpstreamUnreached`) is transient.

The upstream call of the first request runs in its own task, awaited through `asyncio.shield`
(PITFALLS.md: unshielded, one cancelled waiter cancelled the shared call for everyone), so a bot that
hangs up does not abandon its order, and its answer is stored for the bot's retry.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson

from proxy.answer import Answer
from proxy.config import DedupConfig
from proxy.context import RequestContext
from proxy.errors import (
    DedupConflict,
    SeawallError,
    UpstreamInvalid,
    UpstreamUnavailable,
    UpstreamUnreached,
)
from proxy.forward import end_to_end_headers
from proxy.logs import log
from proxy.metrics import Metrics
from proxy.pipeline import Handler
from proxy.state.dedup import DedupState, Kept, MemoryDedupState, Settlement, StoredAnswer
from proxy.state.dedup_redis import RedisDedupState
from proxy.state.redis_link import RedisLink

# The exchange's "try again" codes (seed table): the request was refused, so a retry must go through.
TRANSIENT_CODES = frozenset({-1003, -1011, -1012})
AUTH_CODES = frozenset({-1001, -1002})  # INVALID_SIGNATURE, UNAUTHORIZED: nothing was executed
# Without side effects a lost answer is just a failure: a retry is harmless.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
REPLAY_HEADER = ("X-Seawall", "dedup-replay")


def _digest(*parts: str | bytes) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8", "surrogateescape") if isinstance(part, str) else part
        hasher.update(len(data).to_bytes(4, "big"))  # length-prefixed: no two part lists hash alike
        hasher.update(data)
    return hasher.hexdigest()


def canonical_payload(ctx: RequestContext) -> str:
    """Hash of method, path and the request's params, order- and spacing-insensitive.

    Headers are left out on purpose: timestamps and signatures differ on every retry of the same order.
    """
    query = parse_qsl(ctx.raw_path.partition("?")[2], keep_blank_values=True, encoding="latin-1")
    body: bytes = ctx.body
    if ctx.json_body is not None:
        body = orjson.dumps(ctx.json_body, option=orjson.OPT_SORT_KEYS)
    elif body and "x-www-form-urlencoded" in ctx.headers.get("Content-Type", ""):
        form = parse_qsl(body.decode("latin-1"), keep_blank_values=True, encoding="latin-1")
        body = urlencode(sorted(form)).encode("latin-1")
    return _digest(ctx.method, ctx.path, urlencode(sorted(query)), body)


class DedupPolicy:
    """Single-flight and replay by explicit identity; conflicting payloads answered with -1007."""

    name = "dedup"

    def __init__(
        self,
        config: DedupConfig,
        metrics: Metrics,
        state: DedupState | None = None,
        *,
        shared: RedisLink | None = None,
        upstream_timeout: float = 10.0,
    ) -> None:
        """`shared`: keep entries on Redis for every replica (local state when it fails); twins waiting on
        another replica give up after `upstream_timeout` (the forwarder's total) plus the lock TTL."""
        self._enabled = config.enabled
        self._header = config.idempotency_header
        self._ttl = config.ttl
        self._metrics = metrics
        local = MemoryDedupState(config.max_entries)
        if state is None and shared is not None:
            wait_limit = upstream_timeout + config.lock_ttl
            state = RedisDedupState(shared, local, lock_ttl=config.lock_ttl, wait_limit=wait_limit)
        self._state: DedupState = state or local
        self._backend = "memory" if shared is None else "redis"
        # Route -> (identity kind, ttl), built once; the first rule naming a route wins, `*` is the rest.
        self._rules: dict[str, tuple[str, float]] = {}
        for rule in config.rules:
            for route in rule.routes:
                self._rules.setdefault(route, (rule.identity, rule.ttl or config.ttl))
        self._tasks: set[asyncio.Task[Answer]] = set()

    async def handle(self, ctx: RequestContext, call_next: Handler) -> Answer:
        idempotency_key = ctx.headers.get(self._header)
        if idempotency_key is not None:  # Seawall's header, never the exchange's: stripped even when off
            headers = end_to_end_headers(ctx.headers)
            headers.popall(self._header, None)
            ctx.forward_headers = headers
        if not self._enabled:
            return await call_next(ctx)
        found = self._identity(ctx, idempotency_key)
        if found is None:
            return await call_next(ctx)
        identity, fingerprint, ttl = found
        route = ctx.route.name
        while True:
            entry = await self._state.claim(identity, fingerprint)
            self._metrics.dedup_entries.set(self._state.size())
            if entry is None:
                return await self._lead(ctx, call_next, identity, ttl)
            if entry.fingerprint != fingerprint:
                self._metrics.dedup.labels(route, "conflict").inc()
                raise DedupConflict("this identity was used for a different request")
            if entry.state == "unknown":
                self._metrics.dedup.labels(route, "conflict").inc()
                raise DedupConflict(
                    "an earlier request with this identity reached the exchange but its answer was lost; "
                    "look it up (an order: by its client order id) before sending it again"
                )
            if entry.state == "stored" and entry.answer is not None:
                self._metrics.dedup.labels(route, "replayed").inc()
                return self._replay(ctx, entry.answer)
            settlement = await self._state.wait(identity)
            if settlement is None:
                continue  # the owner failed transiently before we could wait: claim again
            self._metrics.dedup.labels(route, "coalesced").inc()
            if settlement.answer is not None:
                return self._replay(ctx, settlement.answer)
            error = settlement.error or SeawallError("the request this one waited for ended without answer")
            raise type(error)(error.detail, retry_after=error.retry_after, code=error.code)

    def _identity(self, ctx: RequestContext, idempotency_key: str | None) -> tuple[str, str, float] | None:
        """(identity, payload fingerprint, TTL) for the request, or None."""
        account = ctx.scope_value("account")
        kind, ttl = self._rules.get(ctx.route.name) or self._rules.get("*") or ("", self._ttl)
        if kind == "client_order_id" and ctx.client_order_id:
            return _digest("client_order_id", account, ctx.client_order_id), canonical_payload(ctx), ttl
        if idempotency_key:
            return _digest("idempotency_key", account, idempotency_key), canonical_payload(ctx), self._ttl
        if kind == "body_hash":
            payload = canonical_payload(ctx)
            return _digest("body_hash", account, payload), payload, ttl
        return None

    async def _lead(self, ctx: RequestContext, call_next: Handler, identity: str, ttl: float) -> Answer:
        task = asyncio.get_running_loop().create_task(self._send(ctx, call_next, identity, ttl))
        self._tasks.add(task)
        task.add_done_callback(self._forget)
        return await asyncio.shield(task)

    def _forget(self, task: asyncio.Task[Answer]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: the handler that awaited it may be gone (no "never retrieved")

    async def _send(self, ctx: RequestContext, call_next: Handler, identity: str, ttl: float) -> Answer:
        try:
            answer = await call_next(ctx)
        except SeawallError as error:
            await self._settle(ctx, identity, Settlement(error=error), self._after_error(ctx, error), ttl)
            raise
        except BaseException:
            await self._settle(ctx, identity, Settlement(error=SeawallError("internal error")), None, ttl)
            raise
        stored = StoredAnswer.of(answer)
        await self._settle(ctx, identity, Settlement(answer=stored), self._after_answer(ctx, answer), ttl)
        return answer

    async def _settle(
        self, ctx: RequestContext, identity: str, settlement: Settlement, keep: Kept | None, ttl: float
    ) -> None:
        if keep == "unknown":
            log.warning(
                "answer lost after sending: holding the identity as unknown",
                extra={"fields": {"route": ctx.route.name, "key": ctx.key_name, "ttl": ttl}},
            )
        try:
            await self._state.settle(identity, settlement, keep, ttl)
        except Exception:  # the owner's answer must still reach its bot
            log.exception("dedup state failed to settle", extra={"fields": {"route": ctx.route.name}})
        self._metrics.dedup_entries.set(self._state.size())

    @staticmethod
    def _after_answer(ctx: RequestContext, answer: Answer) -> Kept | None:
        if answer.code in TRANSIENT_CODES or answer.status == 429:
            return None
        if answer.code in AUTH_CODES or answer.status in (401, 403):
            # Refused before anything was done (stale timestamp, rotated key): a re-signed retry must go
            # through, and a stranger's badly signed request must not claim a bot's client order id.
            return None
        if answer.status == 504 and answer.code is None:
            # A gateway timed out waiting for the exchange, which may still have acted on it.
            return None if ctx.method in SAFE_METHODS else "unknown"
        if answer.status >= 500:
            return None
        return "stored"

    @staticmethod
    def _after_error(ctx: RequestContext, error: SeawallError) -> Kept | None:
        sent = isinstance(error, UpstreamUnavailable | UpstreamInvalid) and not isinstance(
            error, UpstreamUnreached
        )
        return "unknown" if sent and ctx.method not in SAFE_METHODS else None

    @staticmethod
    def _replay(ctx: RequestContext, stored: StoredAnswer) -> Answer:
        ctx.outcome = "deduplicated"
        answer = stored.to_answer()
        answer.headers[REPLAY_HEADER[0]] = REPLAY_HEADER[1]
        answer.source = "replay"
        return answer

    def status(self) -> dict[str, Any]:
        counts = self._state.counts()
        return {**counts, "backend": self._backend, "ttl_seconds": self._ttl, "routes": sorted(self._rules)}

    async def start(self) -> None:
        await self._state.start()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._state.close()
