"""Build a running Seawall from its config: the pipeline, the proxy and admin listeners, the lifecycle.

The chain is assembled in one place, `build_policies`, one line per policy in the order of spec §2.
Shared resources (the upstream session, policy state) are opened in `start` and closed in `stop`.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from proxy import __version__
from proxy.admin import admin_app
from proxy.catalog import ErrorCatalog, default_catalog
from proxy.config import SeawallConfig
from proxy.forward import Forwarder
from proxy.listener import ProxyListener
from proxy.logs import log, request_level
from proxy.metrics import Metrics
from proxy.pipeline import Pipeline, Policy
from proxy.policies.breaker import CircuitBreakerPolicy
from proxy.policies.dedup import DedupPolicy
from proxy.policies.ratelimit import RateLimitPolicy
from proxy.routing import RouteTable
from proxy.state.redis_link import RedisLink


def build_policies(config: SeawallConfig, metrics: Metrics, shared: RedisLink | None = None) -> list[Policy]:
    """The resilience chain, in the order of spec §2: dedup -> breaker -> limiter.

    `shared` is the Redis link when `state.backend` is `redis`: policies keep their numbers there.
    """
    # Dedup is always in the chain: even when off, it strips its Idempotency-Key header before forwarding.
    policies: list[Policy] = [
        DedupPolicy(config.dedup, metrics, shared=shared, upstream_timeout=config.upstream.timeout)
    ]
    if config.breakers.enabled:
        policies.append(
            CircuitBreakerPolicy(
                config.breakers,
                metrics,
                aliases=config.identity.aliases,
                shared=shared,
                upstream_timeout=config.upstream.timeout,
            )
        )
    if config.ratelimit.enabled:
        policies.append(
            RateLimitPolicy(
                config.ratelimit, metrics, shared=shared, upstream_timeout=config.upstream.timeout
            )
        )
    return policies


class Seawall:
    def __init__(self, config: SeawallConfig, catalog: ErrorCatalog | None = None) -> None:
        self.config = config
        self.catalog = catalog or default_catalog()
        self.metrics = Metrics()
        self.routes = RouteTable(config.routes, config.identity)
        self.forwarder = Forwarder(config.upstream)
        self.shared = RedisLink(config.state.redis, self.metrics) if config.state.backend == "redis" else None
        self.policies = build_policies(config, self.metrics, self.shared)
        self.pipeline = Pipeline(
            self.policies,
            self.forwarder,
            self.catalog,
            self.metrics,
            request_level(config.logging.request_level),
        )
        self.listener = ProxyListener(config.server, self.routes, self.pipeline, self.catalog)
        self._proxy_runner: web.ServerRunner | None = None
        self._admin_runner: web.AppRunner | None = None
        self._proxy_site: web.TCPSite | None = None
        self._admin_site: web.TCPSite | None = None
        self._started_at = time.time()

    async def start(self) -> None:
        await self.forwarder.start()
        if self.shared is not None:
            await self.shared.start()
        for policy in self.policies:
            starter = getattr(policy, "start", None)
            if starter is not None:
                await starter()
        self._proxy_runner = web.ServerRunner(
            self.listener.make_server(), shutdown_timeout=self.config.server.shutdown_timeout
        )
        await self._proxy_runner.setup()
        self._proxy_site = web.TCPSite(
            self._proxy_runner, self.config.listen.host, self.config.listen.port, reuse_address=True
        )
        await self._proxy_site.start()
        self._admin_runner = web.AppRunner(
            admin_app(self.metrics, self.status, self.readiness_checks()), access_log=None
        )
        await self._admin_runner.setup()
        self._admin_site = web.TCPSite(
            self._admin_runner,
            self.config.admin_listen.host,
            self.config.admin_listen.port,
            reuse_address=True,
        )
        await self._admin_site.start()
        log.info(
            "seawall started",
            extra={
                "fields": {
                    "version": __version__,
                    "profile": self.config.profile,
                    "upstream": self.config.upstream.url,
                    "listen": self.proxy_url,
                    "admin": self.admin_url,
                    "policies": [policy.name for policy in self.policies],
                }
            },
        )

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded by server.shutdown_timeout), close."""
        if self._proxy_runner is not None:
            await self._proxy_runner.cleanup()
            self._proxy_runner = None
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
            self._admin_runner = None
        for policy in self.policies:
            closer = getattr(policy, "close", None)
            if closer is not None:
                await closer()
        await self.forwarder.close()
        if self.shared is not None:
            await self.shared.close()
        log.info("seawall stopped")

    @staticmethod
    def _bound(site: web.TCPSite | None) -> str:
        server = getattr(site, "_server", None)
        if site is None or server is None or not server.sockets:
            return ""
        host, port = server.sockets[0].getsockname()[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def proxy_url(self) -> str:
        return self._bound(self._proxy_site)

    @property
    def admin_url(self) -> str:
        return self._bound(self._admin_site)

    def readiness_checks(self) -> list[Any]:
        checks: list[Any] = [lambda: (self.forwarder.ready, "upstream_session")]
        if self.shared is not None:
            checks.append(self.shared.ready)
        for policy in self.policies:
            ready = getattr(policy, "ready", None)
            if ready is not None:
                checks.append(ready)
        return checks

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "version": __version__,
            "profile": self.config.profile,
            "upstream": self.config.upstream.url,
            "upstream_connections": self.forwarder.stats(),
            "uptime_seconds": round(time.time() - self._started_at, 3),
            "routes": self.routes.names,
            "policies": [policy.name for policy in self.policies],
            "state": {
                "backend": self.config.state.backend,
                "up": True if self.shared is None else self.shared.up,
            },
        }
        for policy in self.policies:
            describe = getattr(policy, "status", None)
            if describe is not None:
                status[policy.name] = describe()
        return status
