"""The request pipeline: match -> dedup -> breaker -> limiter -> forward -> classify -> record.

Each policy is a small unit with one async entry point, `handle(ctx, call_next)`, that may answer
itself (raise a `SeawallError` or return an `Answer`) or pass the request on. `Pipeline` composes them in
the order given (spec §2) around the terminal step, forward + classify, and records every request once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from proxy.answer import Answer
from proxy.catalog import ErrorCatalog
from proxy.classify import classify
from proxy.context import RequestContext
from proxy.errors import SeawallError, local_answer
from proxy.forward import Forwarder
from proxy.logs import log, request_log
from proxy.metrics import Metrics, method_label

Handler = Callable[[RequestContext], Awaitable[Answer]]


class Policy(Protocol):
    """A resilience policy: answers the request itself or awaits `call_next(ctx)`."""

    name: str

    async def handle(self, ctx: RequestContext, call_next: Handler) -> Answer: ...


def _link(policy: Policy, call_next: Handler) -> Handler:
    async def step(ctx: RequestContext) -> Answer:
        return await policy.handle(ctx, call_next)

    return step


class Pipeline:
    def __init__(
        self,
        policies: Sequence[Policy],
        forwarder: Forwarder,
        catalog: ErrorCatalog,
        metrics: Metrics,
        request_log_level: int | None = logging.DEBUG,
    ) -> None:
        self.policies = list(policies)
        self._forwarder = forwarder
        self._catalog = catalog
        self._metrics = metrics
        self._request_log_level = request_log_level
        chain: Handler = self._forward_and_classify
        for policy in reversed(self.policies):
            chain = _link(policy, chain)
        self._chain = chain
        # A plain counter read at scrape time: no lock taken twice per request.
        self._in_flight = 0
        metrics.in_flight.set_function(lambda: self._in_flight)
        # Label children cached by their label values: `labels()` takes a lock and builds a key each call.
        self._request_counters: dict[tuple[str, str, str, str], Any] = {}
        self._latency_histograms: dict[str, Any] = {}

    async def handle(self, ctx: RequestContext) -> Answer:
        """Run the chain; turn any failure into the exchange's payload; record the request once."""
        self._in_flight += 1
        try:
            answer = await self._chain(ctx)
        except SeawallError as error:
            ctx.outcome = error.outcome
            answer = local_answer(error, self._catalog)
        except Exception:  # a bug must still answer the bot, in the exchange's format
            log.exception("unexpected error handling a request", extra={"fields": {"route": ctx.route.name}})
            ctx.outcome = "rejected"
            answer = local_answer(SeawallError("internal error in seawall"), self._catalog)
        finally:
            self._in_flight -= 1
        self.record(ctx, answer)
        return answer

    async def _forward_and_classify(self, ctx: RequestContext) -> Answer:
        answer = await self._forwarder.send(ctx)
        route = ctx.route.name
        if answer.latency is not None:
            histogram = self._latency_histograms.get(route)
            if histogram is None:
                histogram = self._latency_histograms[route] = self._metrics.upstream_latency.labels(route)
            histogram.observe(answer.latency)
        answer.code, answer.name = classify(answer.status, answer.body, self._catalog)
        if answer.name is not None:
            self._metrics.exchange_errors.labels(route, _code_label(answer.code), answer.name).inc()
        return answer

    def record(self, ctx: RequestContext, answer: Answer) -> None:
        if answer.source == "local" and ctx.outcome == "forwarded":
            ctx.outcome = "rejected"
        labels = (ctx.route.name, method_label(ctx.method), str(answer.status), ctx.outcome)
        counter = self._request_counters.get(labels)
        if counter is None:
            counter = self._request_counters[labels] = self._metrics.requests.labels(*labels)
        counter.inc()
        level = self._request_log_level
        if level is not None and request_log.isEnabledFor(level):
            request_log.log(
                level,
                "request",
                extra={
                    "fields": {
                        "route": ctx.route.name,
                        "method": ctx.method,
                        "path": ctx.path,  # the path only: queries can carry ids a bot considers private
                        "status": answer.status,
                        "code": answer.code,
                        "outcome": ctx.outcome,
                        "key": ctx.key_name,
                        "symbol": ctx.symbol,
                        "client": ctx.client,
                        "ms": round((time.monotonic() - ctx.started) * 1000, 3),
                    }
                },
            )


def _code_label(code: int | None) -> str:
    """The `code` label: the exchange's own range as is, anything else from upstream as `other`, so a
    misbehaving gateway cannot mint one series per made-up number."""
    if code is None:
        return ""
    return str(code) if -1999 <= code <= -1000 else "other"
