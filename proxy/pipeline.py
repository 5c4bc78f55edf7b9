"""The request pipeline: match -> dedup -> breaker -> limiter -> forward -> classify -> record.

Each policy is a small unit with one async entry point, `handle(ctx, call_next)`, that may answer
itself (raise a `SeawallError` or return an `Answer`) or pass the request on. `Pipeline` composes them in
the order given (docs/design.md) around the terminal step, forward + classify, and records every request once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from proxy.answer import Answer
from proxy.catalog import ErrorCatalog
from proxy.classify import classify
from proxy.context import RequestContext
from proxy.errors import SeawallError, local_answer
from proxy.forward import Forwarder
from proxy.logs import log
from proxy.metrics import Metrics
from proxy.recording import RequestRecorder
from proxy.types import Handler, Policy


def _link(policy: Policy, call_next: Handler) -> Handler:
    async def step(ctx: RequestContext) -> Answer:
        return await policy.handle(ctx, call_next)

    return step


class Pipeline:
    """The policies composed around forward + classify; every request answered once and recorded once."""

    def __init__(
        self,
        policies: Sequence[Policy],
        forwarder: Forwarder,
        catalog: ErrorCatalog,
        metrics: Metrics,
        recorder: RequestRecorder,
    ) -> None:
        self._forwarder = forwarder
        self._catalog = catalog
        self._metrics = metrics
        self._recorder = recorder
        self.use(policies)
        # A plain counter read at scrape time: no lock taken twice per request.
        self._in_flight = 0
        metrics.in_flight.set_function(lambda: self._in_flight)
        # Label children cached by their label values: `labels()` takes a lock and builds a key each call.
        self._latency_histograms: dict[str, Any] = {}

    def use(self, policies: Sequence[Policy]) -> None:
        """Compose the chain (again, on a config reload): requests that start from now on go through the
        new one; those under way finish in the chain they started in."""
        chain: Handler = self._forward_and_classify
        for policy in reversed(policies):
            chain = _link(policy, chain)
        self.policies, self._chain = list(policies), chain

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
        self._recorder.record(ctx, answer)
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


def _code_label(code: int | None) -> str:
    """The `code` label: the exchange's own range as is, anything else from upstream as `other`, so a
    misbehaving gateway cannot mint one series per made-up number."""
    if code is None:
        return ""
    return str(code) if -1999 <= code <= -1000 else "other"
