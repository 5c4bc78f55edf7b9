"""The metric families Seawall exports (README, "Metrics"), on a registry of their own per instance.

Every family is registered at start, so `/metrics` names all of them before the first request (the
dashboard and alert rules are checked against it). Label values are route names, codes, rule and breaker
names from config — never paths or API keys — so the label sets stay bounded.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

# `_created` series double the series count for nothing a dashboard uses (docs/design.md).
disable_created_metrics()

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
WAIT_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
KNOWN_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "OTHER"


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
        self.ratelimit_budget_used = Gauge(
            "seawall_ratelimit_budget_used_ratio",
            "Share of a rule's budget in use by its busiest scope.",
            ["rule"],
            registry=r,
        )
        self.circuit_state = Gauge(
            "seawall_circuit_state",
            "Breaker state: 0 closed, 1 half-open, 2 open.",
            ["breaker"],
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
            "Deduplicated requests: coalesced, replayed, conflict.",
            ["route", "kind"],
            registry=r,
        )
        self.dedup_entries = Gauge(
            "seawall_dedup_entries",
            "Identities held by deduplication (in flight and stored).",
            registry=r,
        )
        self.state_backend_up = Gauge(
            "seawall_state_backend_up",
            "1 when the shared-state backend answers, 0 when Seawall runs on local state.",
            registry=r,
        )
        self.upstream_errors = Counter(
            "seawall_upstream_errors",
            "Failures to reach or read the exchange, by cause (dns, refused, tls, connect_timeout, "
            "timeout, reset, closed, invalid).",
            ["cause"],
            registry=r,
        )
        self.congestion = Counter(
            "seawall_congestion",
            "Requests answered locally because of Seawall's own congestion, not sent: no upstream "
            "connection came free in time (pool_timeout), or too little of the deadline was left (deadline).",
            ["cause"],
            registry=r,
        )
        self.listener_refused = Counter(
            "seawall_listener_refused_connections",
            "Connections a listener closed at once: over its connection cap, or out of file descriptors.",
            ["listener", "reason"],
            registry=r,
        )
        self.in_flight = Gauge(
            "seawall_in_flight_requests",
            "Bot requests being handled.",
            registry=r,
        )
