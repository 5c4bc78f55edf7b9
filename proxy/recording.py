"""One place that records a bot request once it is answered: the request counter and the request log.

The pipeline records every request it answers; the listener records, through the same recorder, the
requests it refuses before they reach the pipeline (malformed HTTP, absolute-form targets), so every bot
request is counted exactly once, whoever answered it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from proxy.answer import Answer
from proxy.context import RequestContext
from proxy.logs import request_log
from proxy.metrics import Metrics, method_label


class RequestRecorder:
    """Counts `seawall_requests_total{route,method,status,outcome}` and writes the request log line."""

    def __init__(self, metrics: Metrics, request_log_level: int | None = logging.DEBUG) -> None:
        self._metrics = metrics
        self._request_log_level = request_log_level
        # Label children cached by their label values: `labels()` takes a lock and builds a key each call.
        self._request_counters: dict[tuple[str, str, str, str], Any] = {}

    def use_level(self, request_log_level: int | None) -> None:
        """The request log line's level from now on (a config reload); None: no line."""
        self._request_log_level = request_log_level

    def record(self, ctx: RequestContext, answer: Answer) -> None:
        """Record one answered request (its outcome: `rejected` for a local answer not otherwise named)."""
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
