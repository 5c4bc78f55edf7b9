"""The admin listener: /metrics (Prometheus text), /healthz, /readyz, /status (JSON)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.metrics import Metrics

StatusSource = Callable[[], dict[str, Any]]
# (ready, name) or (ready, name, detail): a check may be ready yet degraded, and say so in `detail`.
ReadinessCheck = Callable[[], tuple[Any, ...]]


def admin_app(metrics: Metrics, status: StatusSource, readiness: list[ReadinessCheck]) -> web.Application:
    async def metrics_page(request: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        checks = {}
        ready = True
        for check in readiness:
            ok, name, *detail = check()
            checks[name] = detail[0] if detail else ("ok" if ok else "failing")
            ready = ready and ok
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    async def status_page(request: web.Request) -> web.Response:
        return web.json_response(status())

    app = web.Application()
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status", status_page)
    return app
