"""The admin listener: /metrics (Prometheus text), /healthz, /readyz, /status (JSON).

It runs on the same HTTP server as the proxy listener, with the same read and write deadlines, a short
keep-alive (ADMIN_KEEPALIVE) and a cap on open connections (`server.admin_max_connections`), so idle or
slow clients of the admin port cannot take the file descriptors the bots need.

`AdminPages` is the listener's site; `AdminSite` fills it for one Seawall process. The supervisor of
`seawall run --workers N` fills it with pages of its own (proxy/workers.py): the same four paths, the
same answers for a bad method or path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
from multidict import CIMultiDict
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from proxy.answer import Answer
from proxy.config import ServerConfig
from proxy.errors import BadRequest, SeawallError
from proxy.httpserver import Limits, Request
from proxy.metrics import Metrics

StatusSource = Callable[[], dict[str, Any]]
# (ready, name) or (ready, name, detail): a check may be ready yet degraded, and say so in `detail`.
ReadinessCheck = Callable[[], tuple[Any, ...]]
Page = Callable[[], Awaitable[Answer]]

# Scrapers and probes come every few seconds or less often: an idle connection is not worth holding longer.
ADMIN_KEEPALIVE = 5.0
ADMIN_MAX_BODY = 16 * 1024  # the admin pages take no body
JSON = "application/json; charset=utf-8"
ADMIN_PATHS = ("/metrics", "/healthz", "/readyz", "/status")


def admin_limits(server: ServerConfig) -> Limits:
    return Limits(
        read_timeout=server.read_timeout,
        write_timeout=server.write_timeout,
        keepalive_timeout=min(ADMIN_KEEPALIVE, server.keepalive_timeout),
        write_buffer_bytes=server.write_buffer_bytes,
        max_body_bytes=ADMIN_MAX_BODY,
        max_connections=server.admin_max_connections,
    )


def json_answer(status: int, data: Any, **headers: str) -> Answer:
    body = orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)  # keys as json.dumps would write them
    return Answer(status, CIMultiDict({"Content-Type": JSON, **headers}), body, source="local")


def metrics_answer(registry: CollectorRegistry) -> Answer:
    body = generate_latest(registry)
    return Answer(200, CIMultiDict({"Content-Type": CONTENT_TYPE_LATEST}), body, source="local")


def readiness_answer(checks: Iterable[tuple[Any, ...]]) -> Answer:
    """200 when every check is ready, else 503; each check named with "ok", "failing" or its detail."""
    described = {}
    ready = True
    for ok, name, *detail in checks:
        described[name] = detail[0] if detail else ("ok" if ok else "failing")
        ready = ready and bool(ok)
    return json_answer(200 if ready else 503, {"ready": ready, "checks": described})


class AdminPages:
    """GET (or HEAD) on one of the pages; anything else is a 404 or 405 in JSON."""

    def __init__(self, server: ServerConfig, pages: dict[str, Page]):
        self.limits = admin_limits(server)
        self._pages = pages

    async def handle(self, request: Request) -> Answer:
        page = self._pages.get(request.target.partition("?")[0])
        if page is None:
            return json_answer(404, {"error": "not found"})
        if request.method not in ("GET", "HEAD"):
            return json_answer(405, {"error": "method not allowed"}, Allow="GET, HEAD")
        return await page()

    def refuse(self, error: SeawallError, request: Request) -> Answer:
        return json_answer(400 if isinstance(error, BadRequest) else 500, {"error": error.detail})


class AdminSite(AdminPages):
    """The admin pages of one Seawall process."""

    def __init__(
        self, server: ServerConfig, metrics: Metrics, status: StatusSource, readiness: list[ReadinessCheck]
    ):
        self._metrics = metrics
        self._status = status
        self._readiness = readiness
        super().__init__(
            server,
            {
                "/metrics": self._metrics_page,
                "/healthz": self._healthz,
                "/readyz": self._readyz,
                "/status": self._status_page,
            },
        )

    async def _metrics_page(self) -> Answer:
        self._metrics.sample()  # a worker's own view: its function gauges as they are now
        return metrics_answer(self._metrics.registry)

    async def _healthz(self) -> Answer:
        return json_answer(200, {"status": "ok"})

    async def _readyz(self) -> Answer:
        return readiness_answer(check() for check in self._readiness)

    async def _status_page(self) -> Answer:
        return json_answer(200, self._status())
