"""The admin listener: /metrics (Prometheus text), /healthz, /readyz, /status (JSON).

It runs on the same HTTP server as the proxy listener, with the same read and write deadlines, a short
keep-alive (ADMIN_KEEPALIVE) and a cap on open connections (`server.admin_max_connections`), so idle or
slow clients of the admin port cannot take the file descriptors the bots need.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from multidict import CIMultiDict
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.answer import Answer
from proxy.config import ServerConfig
from proxy.errors import BadRequest, SeawallError
from proxy.httpserver import Limits, Request
from proxy.metrics import Metrics

StatusSource = Callable[[], dict[str, Any]]
# (ready, name) or (ready, name, detail): a check may be ready yet degraded, and say so in `detail`.
ReadinessCheck = Callable[[], tuple[Any, ...]]

# Scrapers and probes come every few seconds or less often: an idle connection is not worth holding longer.
ADMIN_KEEPALIVE = 5.0
ADMIN_MAX_BODY = 16 * 1024  # the admin pages take no body
JSON = "application/json; charset=utf-8"


def admin_limits(server: ServerConfig) -> Limits:
    return Limits(
        read_timeout=server.read_timeout,
        write_timeout=server.write_timeout,
        keepalive_timeout=min(ADMIN_KEEPALIVE, server.keepalive_timeout),
        write_buffer_bytes=server.write_buffer_bytes,
        max_body_bytes=ADMIN_MAX_BODY,
        max_connections=server.admin_max_connections,
    )


def _json(status: int, data: Any, **headers: str) -> Answer:
    body = orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)  # keys as json.dumps would write them
    return Answer(status, CIMultiDict({"Content-Type": JSON, **headers}), body, source="local")


class AdminSite:
    """GET (or HEAD) on one of four pages; anything else is a 404 or 405 in JSON."""

    def __init__(
        self, server: ServerConfig, metrics: Metrics, status: StatusSource, readiness: list[ReadinessCheck]
    ):
        self.limits = admin_limits(server)
        self._metrics = metrics
        self._status = status
        self._readiness = readiness
        self._pages: dict[str, Callable[[], Answer]] = {
            "/metrics": self._metrics_page,
            "/healthz": lambda: _json(200, {"status": "ok"}),
            "/readyz": self._readyz,
            "/status": lambda: _json(200, self._status()),
        }

    async def handle(self, request: Request) -> Answer:
        page = self._pages.get(request.target.partition("?")[0])
        if page is None:
            return _json(404, {"error": "not found"})
        if request.method not in ("GET", "HEAD"):
            return _json(405, {"error": "method not allowed"}, Allow="GET, HEAD")
        return page()

    def refuse(self, error: SeawallError, request: Request) -> Answer:
        return _json(400 if isinstance(error, BadRequest) else 500, {"error": error.detail})

    def _metrics_page(self) -> Answer:
        body = generate_latest(self._metrics.registry)
        return Answer(200, CIMultiDict({"Content-Type": CONTENT_TYPE_LATEST}), body, source="local")

    def _readyz(self) -> Answer:
        checks = {}
        ready = True
        for check in self._readiness:
            ok, name, *detail = check()
            checks[name] = detail[0] if detail else ("ok" if ok else "failing")
            ready = ready and ok
        return _json(200 if ready else 503, {"ready": ready, "checks": checks})
