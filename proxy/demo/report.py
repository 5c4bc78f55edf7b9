"""The demo's side-by-side table: the same fleet straight to the exchange versus through Seawall."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.demo.market import MarketResult


@dataclass
class PhaseResult:
    """What one run of the fleet did to the exchange, read from the bots and the simulator."""

    exchange_429: int  # -1003 answers the exchange gave the fleet
    local_429: int  # -1003 answers Seawall gave instead (the exchange never saw those requests)
    duplicate_orders: int  # orders beyond the first for one (account, client_order_id)
    outage_calls_reaching_exchange: int  # requests the exchange had to answer during the -1011 storm
    outage_calls_answered_locally: int
    budget_used: float  # placements the exchange accepted / what its limit allowed in that time
    max_in_window: int  # the most placements the exchange saw in any one window
    median_latency_ms: float | None  # public poller's median round trip
    market: MarketResult | None = None  # the market-data act


NOT_BUILT = "not built yet"


def render(straight: PhaseResult, through: PhaseResult, built: set[str], limit: int, seconds: float) -> str:
    """A plain-text table; rows whose policy is not in `built` say so instead of showing numbers."""

    def latency(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f} ms"

    added = (
        f"+{through.median_latency_ms - straight.median_latency_ms:.2f} ms"
        if through.median_latency_ms is not None and straight.median_latency_ms is not None
        else "-"
    )
    rows = [
        (
            "429s from the exchange (-1003)",
            str(straight.exchange_429),
            str(through.exchange_429),
            "ratelimit",
        ),
        ("  ... answered by Seawall instead", "-", str(through.local_429), "ratelimit"),
        (
            f"busiest {limit}/s window at the exchange",
            str(straight.max_in_window),
            str(through.max_in_window),
            "ratelimit",
        ),
        (
            f"share of the placement budget used ({seconds:.0f}s)",
            f"{straight.budget_used:.0%}",
            f"{through.budget_used:.0%}",
            "ratelimit",
        ),
        (
            "duplicate orders from blind retries",
            str(straight.duplicate_orders),
            str(through.duplicate_orders),
            "dedup",
        ),
        (
            "calls the exchange had to answer in the -1011 outage",
            str(straight.outage_calls_reaching_exchange),
            str(through.outage_calls_reaching_exchange),
            "breaker",
        ),
        ("  ... answered by Seawall instead", "-", str(through.outage_calls_answered_locally), "breaker"),
        (
            "median latency (public poller)",
            latency(straight.median_latency_ms),
            f"{latency(through.median_latency_ms)} ({added})",
            "",
        ),
    ]
    rows += market_rows(straight.market, through.market)
    header = ("", "straight to the exchange", "through Seawall")
    table = [header] + [
        (label, left, right if (policy == "" or policy in built) else NOT_BUILT)
        for label, left, right, policy in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    lines = []
    for index, row in enumerate(table):
        lines.append(
            "  ".join(
                cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
            )
        )
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def market_rows(
    straight: MarketResult | None, through: MarketResult | None
) -> list[tuple[str, str, str, str]]:
    """The market-data act's rows: (label, straight, through, the policy that makes the difference)."""
    if straight is None or through is None:
        return []
    return [
        (
            f"market data: requests from {straight.bots} bots polling ({straight.seconds:.0f}s)",
            str(straight.rest_requests),
            str(through.rest_requests),
            "",
        ),
        (
            "  ... answered with data",
            f"{straight.rest_data_share:.1%}",
            f"{through.rest_data_share:.1%}",
            "cache",
        ),
        (
            "  ... calls the exchange had to answer",
            str(straight.rest_upstream_calls),
            str(through.rest_upstream_calls),
            "cache",
        ),
        (
            f"market data: pushes to {straight.bots} bots streaming {straight.stream_topics} topics "
            f"({straight.seconds:.0f}s)",
            str(straight.stream_frames),
            str(through.stream_frames),
            "",
        ),
        (
            "  ... bots that received data",
            f"{straight.stream_bots_with_data} of {straight.bots}",
            f"{through.stream_bots_with_data} of {through.bots}",
            "",
        ),
        (
            "  ... stream connections the exchange held",
            str(straight.stream_upstream_connections),
            str(through.stream_upstream_connections),
            "",
        ),
        (
            "  ... subscriptions the exchange served",
            str(straight.stream_upstream_subscriptions),
            str(through.stream_upstream_subscriptions),
            "",
        ),
    ]
