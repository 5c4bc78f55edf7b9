"""Deduplication: one exchange request per identity, and nothing a bot sent is lost.

Guarantee: within the TTL, requests that share an explicit identity reach the exchange at most once
while the first one's outcome is known or pending; every twin (same identity, same payload) gets the
first one's answer byte for byte (plus `X-Seawall: dedup-replay`); a request with the same identity and a
different payload gets a local -1007 and is never sent — unless the exchange refused the first one
(below), because then nothing exists that the new payload could duplicate.

Identity exists only where it is explicit, so a bot that deliberately sends two equal orders gets two:
- order placement routes with an `identity: client_order_id` rule: (account or key, client order id) —
  the exchanges only keep that id unique among *open* orders and accept it again once the order has
  completed (docs/exchanges.md), so a blind retry of a placement that already filled would create a
  second order; this window closes that hole;
- any route: an `Idempotency-Key` header (stripped before forwarding);
- routes with an `identity: body_hash` rule: (account or key, method, path, canonical params).
The first that applies wins, in that order. The payload fingerprint ignores JSON key order, spacing and
form field order, and every header (timestamps and signatures differ on every retry). Identities are
hashes; no key or client order id is ever stored.

How the first request ended decides what a later request with the same identity gets:

    first request ended with             kept for      same payload       other payload
    -----------------------------------  ------------  -----------------  -------------------------
    still in flight                      -             waits, replayed    -1007 conflict
    stored: success, exchange's -1007    `ttl`         replayed           -1007 conflict
    refused: any other exchange error    `ttl`         replayed           forwarded (takes over)
    transient, auth, nothing sent        not kept      forwarded          forwarded
    unknown: answer lost after sending   `unknown_ttl` -1007 + lookup     -1007 + lookup

- **Stored**: a success, or the exchange's own -1007 (an order with this id exists). It settles the
  identity: replaying it is what a retry needs, and a different payload under a used identity is a bot
  bug that must not reach the exchange.
- **Refused**: any other error the exchange answered — an error payload code that is neither transient
  nor auth (-1004/-1005 bad parameter, -1102..-1105 filters, -1101 risk...) or a 4xx — is the bot's
  mistake, and nothing was executed. It is replayed only to an identical twin (the exchange would refuse
  it again). A corrected request (another payload) takes the identity over: it is forwarded as a new
  attempt, its twins coalesce on it while it is in flight, and its own outcome replaces the refusal by
  these same rules (a transient failure of it leaves nothing kept, not even the earlier refusal). The
  takeover is part of the atomic claim (on Redis, the claim script), so of two corrected requests
  racing, even on two replicas, exactly one is sent; the other is its twin or a conflict.
- **Transient** (-1003, -1011, -1012, 429, 5xx; local: throttle, open circuit, Seawall's own congestion,
  exchange unreachable: nothing was sent) and **authentication** failures (-1001, -1002, 401, 403:
  nothing was executed) are not kept, so a retry goes through (and a stranger's badly signed request
  cannot claim a bot's client order id). Twins that were already waiting receive that same failure: they
  waited for this attempt's answer, and a second attempt at once would be a retry storm.
- **Unknown**: the answer was lost after a non-safe request was sent (a transport error, or a 504
  without an exchange code: a gateway gave up waiting). The exchange may have accepted the order, and a
  market or IOC order has usually filled already. Seawall cannot sign, so it cannot look the order up
  itself; forwarding the retry would earn the exchange's own -1007 if the order is still open, but place
  a second order if it has filled. So for `dedup.unknown_ttl` (short: the bot must resolve it, not wait
  out the full TTL) every request with the identity is answered with -1007 — what bots already handle
  for a duplicate — whose message says how to resolve it (with the profile's `dedup.lookup_hint`: "look
  the order up with GET /v1/client/order/{client_order_id} before sending it again") and for how many
  more seconds the identity is held; `Retry-After` is that rest of the window. After it, a retry goes
  through.

The upstream call of the first request runs in its own task, awaited through `asyncio.shield`
(unshielded, one cancelled waiter would cancel the call every twin shares), so a bot that hangs up does
not abandon its order, and its answer is kept for the bot's retry.

With `state: redis` the entries are shared: the guarantee holds across replicas (one claim per identity
in Redis, twins on other replicas wait for its answer, a claim whose replica died expires after
`dedup.lock_ttl`). While Redis is down, or rebuilt after it lost data, a non-safe request whose identity
this replica cannot vouch for (it holds nothing for it, and Redis cannot say) is refused with a transient
-1003 (`StateUnavailable`, `Retry-After`) instead of being forwarded, where another replica may already
have sent it: `dedup.on_unavailable: refuse`, the default, or `forward` (per rule too) to dedup on this
replica's memory only (proxy/state/dedup_redis.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from multidict import CIMultiDict

from proxy.answer import Answer
from proxy.config import DedupConfig
from proxy.context import RequestContext
from proxy.errors import (
    DedupConflict,
    SeawallError,
    StateUnavailable,
    UpstreamInvalid,
    UpstreamUnavailable,
    UpstreamUnreached,
)
from proxy.logs import log
from proxy.metrics import Metrics
from proxy.state.dedup import ANSWERED, DedupState, Kept, Settlement, StoredAnswer, Unvouched
from proxy.types import Handler, Policy

# The exchange's "try again" codes (seed table): the request was refused, so a retry must go through.
TRANSIENT_CODES = frozenset({-1003, -1011, -1012})
AUTH_CODES = frozenset({-1001, -1002})  # INVALID_SIGNATURE, UNAUTHORIZED: nothing was executed
DUPLICATE_CODE = -1007  # the exchange's DUPLICATE_REQUEST: an open order already has this client order id
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


class DedupPolicy(Policy):
    """Single-flight and replay by explicit identity; conflicting payloads answered with -1007."""

    name = "dedup"

    def __init__(self, config: DedupConfig, metrics: Metrics, state: DedupState) -> None:
        """`state`: where entries live, this process or Redis for every replica (proxy/state/backends.py)."""
        self._enabled = config.enabled
        self._header = config.idempotency_header
        self._ttl = config.ttl
        self._unknown_ttl = config.unknown_ttl
        self._lookup_hint = config.lookup_hint
        self._metrics = metrics
        self._state = state
        # Route -> (identity kind, ttl, whether to refuse what cannot be vouched for), built once; the first
        # rule naming a route wins, `*` is the rest.
        self._rules: dict[str, tuple[str, float, bool]] = {}
        for rule in config.rules:
            refuse = (rule.on_unavailable or config.on_unavailable) == "refuse"
            for route in rule.routes:
                self._rules.setdefault(route, (rule.identity, rule.ttl or config.ttl, refuse))
        self._refuse = config.on_unavailable == "refuse"
        self._tasks: set[asyncio.Task[Answer]] = set()

    async def handle(self, ctx: RequestContext, call_next: Handler) -> Answer:
        idempotency_key = ctx.headers.get(self._header)
        if idempotency_key is not None:  # Seawall's header, never the exchange's: stripped even when off
            headers = CIMultiDict(ctx.headers)  # hop-by-hop fields are dropped where the head is written
            headers.popall(self._header, None)
            ctx.forward_headers = headers
        if not self._enabled:
            return await call_next(ctx)
        found = self._identity(ctx, idempotency_key)
        if found is None:
            return await call_next(ctx)
        kind, identity, fingerprint, ttl, refuse = found
        route = ctx.route.name
        # A request that may change something on the exchange, whose identity another replica may have sent
        # while shared state cannot tell: refused (transient) rather than sent a second time.
        vouched_only = refuse and ctx.method not in SAFE_METHODS
        while True:
            # A refusal held for another payload never comes back from claim: this request took it over.
            try:
                entry = await self._state.claim(identity, fingerprint, vouched_only=vouched_only)
            except Unvouched as unvouched:
                self._metrics.dedup.labels(route, "unvouched").inc()
                raise StateUnavailable(
                    "shared state (redis) is unavailable or being rebuilt, and this replica cannot tell "
                    "whether another one already sent a request with this identity: nothing was sent, "
                    "retry shortly",
                    retry_after=unvouched.retry_after,
                ) from None
            self._metrics.dedup_entries.set(self._state.size())
            if entry is None:
                return await self._lead(ctx, call_next, identity, ttl)
            if entry.state == "unknown":  # whatever the payload: the bot must resolve the first one
                self._metrics.dedup.labels(route, "conflict").inc()
                raise self._unknown_conflict(kind, entry.expires_in)
            if entry.fingerprint != fingerprint:
                self._metrics.dedup.labels(route, "conflict").inc()
                if entry.state == "in_flight":
                    raise DedupConflict("a request with this identity and a different payload is in flight")
                raise DedupConflict("this identity was used for a different request")
            if entry.state in ANSWERED and entry.answer is not None:
                self._metrics.dedup.labels(route, "replayed").inc()
                return self._replay(ctx, entry.answer)
            settlement = await self._state.wait(identity, fingerprint)
            if settlement is None:
                continue  # the owner ended before we could wait (or another payload took over): claim again
            self._metrics.dedup.labels(route, "coalesced").inc()
            if settlement.answer is not None:
                return self._replay(ctx, settlement.answer)
            error = settlement.error or SeawallError("the request this one waited for ended without answer")
            raise type(error)(error.detail, retry_after=error.retry_after, code=error.code)

    def _identity(
        self, ctx: RequestContext, idempotency_key: str | None
    ) -> tuple[str, str, str, float, bool] | None:
        """(identity kind, identity, payload fingerprint, TTL, refuse when unvouched) for the request, or
        None."""
        account = ctx.scope_value("account")
        rule = self._rules.get(ctx.route.name) or self._rules.get("*") or ("", self._ttl, self._refuse)
        kind, ttl, refuse = rule
        if kind == "client_order_id" and ctx.client_order_id:
            identity = _digest("client_order_id", account, ctx.client_order_id)
            return kind, identity, canonical_payload(ctx), ttl, refuse
        if idempotency_key:
            identity = _digest("idempotency_key", account, idempotency_key)
            return "idempotency_key", identity, canonical_payload(ctx), self._ttl, refuse
        if kind == "body_hash":
            payload = canonical_payload(ctx)
            return kind, _digest("body_hash", account, payload), payload, ttl, refuse
        return None

    def _unknown_conflict(self, kind: str, expires_in: float | None) -> DedupConflict:
        """-1007 for an identity whose first request's answer was lost: how to resolve it, and for how
        long the identity is held (also as Retry-After)."""
        if kind == "client_order_id" and self._lookup_hint:
            resolve = f"look the order up with {self._lookup_hint} before sending it again"
        else:
            resolve = "look it up before sending it again"
        detail = "an earlier request with this identity reached the exchange but its answer was lost; "
        detail += resolve
        if expires_in is not None:
            seconds = max(1, math.ceil(expires_in))
            detail += f"; this identity is held for {seconds} more second{'' if seconds == 1 else 's'}"
        return DedupConflict(detail, retry_after=expires_in)

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
            ttl = self._unknown_ttl
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
        if answer.code == DUPLICATE_CODE:
            return "stored"  # the order exists (the exchange's word): a different payload is a conflict
        if answer.code is not None or answer.status >= 400:
            return "refused"  # the bot's mistake, nothing executed: a corrected request may go through
        return "stored"

    @staticmethod
    def _after_error(ctx: RequestContext, error: SeawallError) -> Kept | None:
        """`unknown` when the request may have reached the exchange and its answer was lost; None (not
        kept) for every local failure where nothing was sent (unreached, throttled, circuit open,
        `Congested`): a retry must go through."""
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
        return {
            **counts,
            "backend": self._state.backend,
            "ttl_seconds": self._ttl,
            "unknown_ttl_seconds": self._unknown_ttl,
            "routes": sorted(self._rules),
        }

    async def start(self) -> None:
        await self._state.start()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._state.close()
