"""The metric families Seawall exports (README, "Metrics"), on a registry of their own per instance.

Every family is registered at start, so `/metrics` names all of them before the first request (the
dashboard and alert rules are checked against it). Label values are route names, codes, rule and breaker
names from config — never paths or API keys — so the label sets stay bounded.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

# `_created` series double the series count for nothing a dashboard uses (docs/design.md).
disable_created_metrics()

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
WAIT_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
KNOWN_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"})
SAMPLE_INTERVAL = 1.0  # seconds between two samples of the function gauges in a worker process


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "OTHER"


def multiprocess() -> bool:
    """True in a worker of `seawall run --workers N`: prometheus-client keeps every value in a file of
    PROMETHEUS_MULTIPROC_DIR (read when it is first imported), and the supervisor's /metrics adds them up."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class SampledGauge(Gauge):
    """A Gauge whose `set_function` also works in a worker process. In one process it is Gauge's own. In
    multiprocess mode a value lives in a file the supervisor reads, and a file cannot call a function:
    the function is kept and `Metrics.sample()` writes what it returns (each worker samples every
    SAMPLE_INTERVAL seconds).

    How the workers' values of one gauge add up is its `multiprocess_mode`, chosen per meaning: counts a
    worker holds alone (requests in flight, queued, cached, open connections) are summed (`livesum`);
    "the worst of" values take the worker showing it (`livemax`: the busiest budget, the most open
    circuit, rebuilding; `livemin`: the lowest learned limit, the backend down on any worker). `live`:
    a worker that died stops counting (the supervisor marks it dead)."""

    sampler: Callable[[], float] | None = None

    def set_function(self, f: Callable[[], float]) -> None:
        if not multiprocess():
            super().set_function(f)
            return
        self._raise_if_not_observable()
        self.sampler = f


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "seawall_requests",
            "Bot requests by route, method, answered status and outcome.",
            ["route", "method", "status", "outcome"],
            registry=r,
        )
        self.exchange_errors = Counter(
            "seawall_exchange_errors",
            "Error payloads from the exchange, by code and its table name.",
            ["route", "code", "name"],
            registry=r,
        )
        self.upstream_latency = Histogram(
            "seawall_upstream_latency_seconds",
            "Exchange round trips.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ratelimit_wait = Histogram(
            "seawall_ratelimit_wait_seconds",
            "Time requests spent queued by a rate-limit rule.",
            ["rule"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.ratelimit_rejected = Counter(
            "seawall_ratelimit_rejected",
            "Requests answered locally with -1003, by rule and reason.",
            ["rule", "reason"],
            registry=r,
        )
        self.ratelimit_upstream_429 = Counter(
            "seawall_ratelimit_upstream_throttled",
            "-1003 answers from the exchange itself, by rule.",
            ["rule"],
            registry=r,
        )
        self.ratelimit_budget_used = SampledGauge(
            "seawall_ratelimit_budget_used_ratio",
            "Share of a rule's budget in use by its busiest scope.",
            ["rule"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.ratelimit_queued = SampledGauge(
            "seawall_ratelimit_queued",
            "Requests waiting in a rule's queues (all its scopes) for budget.",
            ["rule"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.ratelimit_effective_limit = SampledGauge(
            "seawall_ratelimit_effective_limit",
            "A rule's lowest effective limit among its scopes: the configured limit, unless lowered after "
            "the exchange answered -1003 anyway or announced a lower one.",
            ["rule"],
            multiprocess_mode="livemin",
            registry=r,
        )
        self.ratelimit_shadow = Counter(
            "seawall_ratelimit_shadow",
            "Requests a shadow rule (enforce: false) would have delayed or refused, by rule and reason; "
            "none was delayed.",
            ["rule", "reason"],
            registry=r,
        )
        self.config_reloads = Counter(
            "seawall_config_reloads",
            "Config reloads (SIGHUP or a changed file), by result: applied, unchanged, invalid, refused.",
            ["result"],
            registry=r,
        )
        self.circuit_state = SampledGauge(
            "seawall_circuit_state",
            "Breaker state: 0 closed, 1 half-open, 2 open.",
            ["breaker"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.circuit_transitions = Counter(
            "seawall_circuit_transitions",
            "Breaker state changes, by the state entered.",
            ["breaker", "to"],
            registry=r,
        )
        self.dedup = Counter(
            "seawall_dedup",
            "Deduplicated requests: coalesced, replayed, conflict; unvouched: refused while shared state "
            "could not tell whether another replica had sent the identity.",
            ["route", "kind"],
            registry=r,
        )
        self.dedup_entries = SampledGauge(
            "seawall_dedup_entries",
            "Identities held by deduplication (in flight and stored).",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.state_over_budget = Counter(
            "seawall_state_over_budget_total",
            "Shared decisions Redis did not make within state.redis.decision_budget: decided locally, per "
            "state.redis.on_unavailable.",
            ["policy"],
            registry=r,
        )
        self.state_backend_up = SampledGauge(
            "seawall_state_backend_up",
            "1 when the shared-state backend answers, 0 when Seawall runs on local state.",
            multiprocess_mode="livemin",
            registry=r,
        )
        self.state_replicas = SampledGauge(
            "seawall_state_replicas",
            "Replicas sharing each budget through Redis, as their heartbeats last said (or as configured).",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.state_rebuilding = SampledGauge(
            "seawall_state_rebuilding",
            "1 while shared state is rebuilt after Redis lost data (a restart, a failover): placements this "
            "replica cannot vouch for are refused meanwhile.",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.state_rebuilds = Counter(
            "seawall_state_rebuilds",
            "Times Redis was found to have lost what the replicas shared, by how it was noticed: "
            "generation (its marker was gone), run_id (a master restarted or failed over), local (this "
            "replica held decisions Redis never saw).",
            ["reason"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "seawall_upstream_errors",
            "Failures to reach or read the exchange, by cause (dns, refused, tls, connect_timeout, "
            "timeout, reset, closed, invalid; deadline: sent, but cut by the request's deadline before "
            "the exchange had its full answer time).",
            ["cause"],
            registry=r,
        )
        self.congestion = Counter(
            "seawall_congestion",
            "Requests answered locally because of Seawall's own congestion, not sent: no upstream "
            "connection came free in time (pool_timeout), too little of the deadline was left (deadline), "
            "or Seawall is out of descriptors, memory or ports to connect (local_resources).",
            ["cause"],
            registry=r,
        )
        self.listener_refused = Counter(
            "seawall_listener_refused_connections",
            "Connections a listener closed at once: over its connection cap, or out of file descriptors.",
            ["listener", "reason"],
            registry=r,
        )
        self.in_flight = SampledGauge(
            "seawall_in_flight_requests",
            "Bot requests being handled.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.cache = Counter(
            "seawall_cache",
            "Market-data coalescing and micro-cache, by route and result: hit, coalesced, miss, stored, "
            "not_stored, evicted, bypass.",
            ["route", "result"],
            registry=r,
        )
        self.cache_entries = SampledGauge(
            "seawall_cache_entries",
            "Answers held by the micro-cache.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.cache_bytes = SampledGauge(
            "seawall_cache_bytes",
            "Bytes of answers held by the micro-cache.",
            multiprocess_mode="livesum",
            registry=r,
        )
        # WebSocket streams (proxy/streams/). side: bot | upstream; kind: public | private.
        self.ws_connections = SampledGauge(
            "seawall_ws_connections",
            "Open WebSocket connections, by side (bot, upstream) and kind (public, private).",
            ["side", "kind"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.ws_messages = Counter(
            "seawall_ws_messages",
            "WebSocket frames, by direction (from_bot, to_upstream, from_upstream, to_bot) and kind.",
            ["direction", "kind"],
            registry=r,
        )
        self.ws_upstream_connects = Counter(
            "seawall_ws_upstream_connects",
            "Upstream WebSocket handshakes, by result: ok, refused (the exchange answered with an error "
            "status), failed (unreachable, timed out), throttled (Seawall's connect rate: not attempted).",
            ["result"],
            registry=r,
        )
        self.ws_disconnects = Counter(
            "seawall_ws_disconnects",
            "Ended WebSocket connections, by reason: bot_closed, slow (cut off), unresponsive, "
            "upstream_closed (a bot's stream ended with its upstream), shutdown, error; upstream_lost: an "
            "upstream connection that ended without Seawall closing it.",
            ["reason"],
            registry=r,
        )
        self.ws_subscriptions = SampledGauge(
            "seawall_ws_subscriptions",
            "Public topics Seawall holds on the exchange, by topic kind (orderbook, ticker, trade, ...).",
            ["kind"],
            multiprocess_mode="livesum",
            registry=r,
        )

    def sample(self) -> None:
        """Write the current value of every function gauge (multiprocess mode; a no-op otherwise)."""
        for gauge in self._sampled_gauges():
            if gauge.sampler is not None:
                gauge.set(gauge.sampler())

    def _sampled_gauges(self) -> Iterator[SampledGauge]:
        for family in list(vars(self).values()):
            if not isinstance(family, SampledGauge):
                continue
            if not family._labelnames:
                yield family
                continue
            with family._lock:  # prometheus-client keeps a family's children here; labels() adds to it
                children = list(family._metrics.values())
            yield from (child for child in children if isinstance(child, SampledGauge))
