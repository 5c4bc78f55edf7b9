"""Build a running Seawall from its config: the pipeline, the proxy and admin listeners, the lifecycle.

The chain is assembled in one place, `build_policies`, one line per policy in the order of spec §2.
Shared resources (the upstream session, policy state) are opened in `start` and closed in `stop`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy import __version__
from proxy.admin import AdminSite
from proxy.catalog import ErrorCatalog, default_catalog
from proxy.config import SeawallConfig
from proxy.forward import Forwarder
from proxy.httpserver import HttpServer
from proxy.listener import ProxyListener
from proxy.logs import log, request_level
from proxy.metrics import Metrics
from proxy.pipeline import Pipeline
from proxy.policies.breaker import CircuitBreakerPolicy
from proxy.policies.cache import CachePolicy
from proxy.policies.dedup import DedupPolicy
from proxy.policies.ratelimit import RateLimitPolicy
from proxy.recording import RequestRecorder
from proxy.routing import RouteTable
from proxy.state.backends import breaker_store, cache_store, dedup_state, ratelimit_state
from proxy.state.breaker import BreakerStateStore
from proxy.state.cache import MemoryCache
from proxy.state.dedup import DedupState
from proxy.state.ratelimit import RateLimitState
from proxy.state.redis_link import RedisLink
from proxy.streams.gate import StreamGate
from proxy.types import Policy


@dataclass(frozen=True)
class PolicyStates:
    """Each policy's state, made once (`proxy/state/backends.py` decides where it lives). A config reload
    builds policies anew on the same states, so dedup entries, cached answers and rate-limit windows
    survive it (proxy/reload.py)."""

    dedup: DedupState
    cache: MemoryCache
    breaker: BreakerStateStore
    ratelimit: RateLimitState

    @classmethod
    def of(cls, config: SeawallConfig, shared: RedisLink | None) -> PolicyStates:
        return cls(
            dedup_state(config, shared),
            cache_store(config, shared),
            breaker_store(config, shared),
            ratelimit_state(config, shared),
        )


def build_policies(
    config: SeawallConfig,
    metrics: Metrics,
    shared: RedisLink | None = None,
    states: PolicyStates | None = None,
    keep: Mapping[str, Policy] | None = None,
) -> list[Policy]:
    """The resilience chain, in the order of spec §2: dedup -> breaker -> limiter, with the market-data
    cache after dedup and before the breaker, so that a hit or a coalesced twin spends no budget.

    `shared` is the Redis link when `state.backend` is `redis`: each policy receives its state from
    `proxy/state/backends.py`, which decides once where it lives (`states`: made earlier). A config reload
    passes the states in use and, in `keep`, the policies (by name) to reuse as they are (proxy/reload.py).
    """
    states = states or PolicyStates.of(config, shared)
    keep = keep or {}
    # Dedup is always in the chain: even when off, it strips its Idempotency-Key header before forwarding.
    policies: list[Policy] = [keep.get("dedup") or DedupPolicy(config.dedup, metrics, states.dedup)]
    if config.cache.enabled:
        policies.append(
            keep.get("cache") or CachePolicy(config.cache, config.identity, metrics, states.cache)
        )
    if config.breakers.enabled:
        aliases = config.identity.aliases
        policies.append(
            keep.get("breaker")
            or CircuitBreakerPolicy(config.breakers, metrics, states.breaker, aliases=aliases)
        )
    # The limiter is always in the chain too: even when off, it strips its X-Seawall-Client header, and a
    # reload may switch it on.
    policies.append(
        keep.get("ratelimit")
        or RateLimitPolicy(config.ratelimit, metrics, states.ratelimit, signing=config.signing)
    )
    return policies


class Seawall:
    def __init__(
        self, config: SeawallConfig, catalog: ErrorCatalog | None = None, *, reuse_port: bool = False
    ) -> None:
        self.config = config
        self.reuse_port = reuse_port  # a worker of `seawall run --workers N` shares the proxy port
        self.catalog = catalog or default_catalog()
        self.metrics = Metrics()
        self.routes = RouteTable(config.routes, config.identity)
        self.forwarder = Forwarder(config.upstream, self.metrics)
        self.shared = RedisLink(config.state.redis, self.metrics) if config.state.backend == "redis" else None
        self.states = PolicyStates.of(config, self.shared)
        self.policies = build_policies(config, self.metrics, self.shared, self.states)
        self.recorder = RequestRecorder(self.metrics, request_level(config.logging.request_level))
        self.pipeline = Pipeline(self.policies, self.forwarder, self.catalog, self.metrics, self.recorder)
        # The exchange's WebSocket streams, on the proxy listener (proxy/streams/).
        self.streams = StreamGate(config, self.metrics, self.catalog) if config.streams.enabled else None
        self.listener = ProxyListener(
            config.server, self.routes, self.pipeline, self.recorder, self.catalog, self.streams
        )
        self.proxy_server: HttpServer | None = None
        self.admin_server: HttpServer | None = None
        self._started_at = time.time()

    async def start(self) -> None:
        await self.forwarder.start()
        if self.shared is not None:
            await self.shared.start()
        for policy in self.policies:
            await policy.start()
        if self.streams is not None:
            await self.streams.start()
        listener = self.listener
        self.proxy_server = HttpServer("proxy", listener, listener.limits, self.metrics)
        await self.proxy_server.start(self.config.listen.host, self.config.listen.port, self.reuse_port)
        admin = AdminSite(self.config.server, self.metrics, self.status, self.readiness_checks())
        self.admin_server = HttpServer("admin", admin, admin.limits, self.metrics)
        await self.admin_server.start(self.config.admin_listen.host, self.config.admin_listen.port)
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
        for server in (self.proxy_server, self.admin_server):  # the admin port answers during the drain
            if server is not None:
                await server.stop(self.config.server.shutdown_timeout)
        self.proxy_server = self.admin_server = None
        if self.streams is not None:  # taken-over connections are the streams' to close (1001)
            await self.streams.stop()
        for policy in self.policies:
            await policy.close()
        await self.forwarder.close()
        if self.shared is not None:
            await self.shared.close()
        log.info("seawall stopped")

    @staticmethod
    def _bound(server: HttpServer | None) -> str:
        addresses = server.addresses if server is not None else []
        if not addresses:
            return ""
        host, port = addresses[0]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def proxy_url(self) -> str:
        return self._bound(self.proxy_server)

    @property
    def admin_url(self) -> str:
        return self._bound(self.admin_server)

    def readiness_checks(self) -> list[Any]:
        checks: list[Any] = [lambda: (self.forwarder.ready, "upstream_session")]
        if self.shared is not None:
            checks.append(self.shared.ready)
        for policy in self.policies:
            if policy.ready() is not None:  # None: the policy has no readiness check
                checks.append(policy.ready)
        return checks

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "version": __version__,
            "profile": self.config.profile,
            "upstream": self.config.upstream.url,
            "upstream_connections": self.forwarder.stats(),
            "upstream_errors": self.forwarder.error_status(),
            "upstream_congestion": self.forwarder.congestion_status(),
            "uptime_seconds": round(time.time() - self._started_at, 3),
            "routes": self.routes.names,
            "policies": [policy.name for policy in self.policies],
            "state": {
                "backend": self.config.state.backend,
                **({"up": True} if self.shared is None else self.shared.describe()),
            },
        }
        if self.streams is not None:
            status["streams"] = self.streams.status()
        for policy in self.policies:
            described = policy.status()
            if described is not None:
                status[policy.name] = described
        return status
