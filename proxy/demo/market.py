"""The demo's market-data act: a fleet of bots after the same market data, straight vs through Seawall.

REST polling: every bot refreshes the instrument list (`GET /v1/public/info`) and the tickers
(`GET /v1/public/futures`) as fast as answers come, unsigned, as a ccxt client does for public
endpoints. The exchange counts public GETs per IP — 10 a second for the whole fleet behind one address —
so straight to it almost every request is refused; through Seawall the instrument list is answered from
its micro-cache and the tickers are coalesced into one call per round.

Streaming, side by side with the polling: every bot also holds the exchange's public WebSocket stream
(streaming.py) with the same order book and ticker subscribed. Straight, the exchange holds one
connection per bot and serves every topic once per bot; through Seawall it holds one connection with one
subscription per topic, and Seawall fans each push out to every bot.

Each part is one job of `market_data` that fills its own fields of `MarketResult`, and
`report.market_rows` renders every field.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from proxy.demo.bots import Bot, Tally
from proxy.demo.streaming import STREAM_TOPICS, stream_fleet

REST_PATHS = ("/v1/public/info", "/v1/public/futures")


@dataclass
class MarketResult:
    """What the market-data act cost the exchange and what the bots got, per part."""

    bots: int
    seconds: float
    rest_requests: int  # bot requests for REST market data
    rest_with_data: int  # of those, answered 200 with the exchange's success payload
    rest_upstream_calls: int  # requests the exchange had to answer for them
    stream_frames: int  # pushes with data the streaming bots received
    stream_bots_with_data: int  # bots that received at least one
    stream_upstream_connections: int  # public stream connections the exchange accepted
    stream_upstream_subscriptions: int  # subscriptions to the act's topics the exchange served
    stream_topics: int = len(STREAM_TOPICS)  # topics each bot subscribed to

    @property
    def rest_data_share(self) -> float:
        return self.rest_with_data / self.rest_requests if self.rest_requests else 0.0


async def poll_rest(bot: Bot, stop_at: float) -> None:
    """Refresh instruments and tickers, one after the other, as fast as the answers come."""
    while time.monotonic() < stop_at:
        for path in REST_PATHS:
            await bot.call("GET", path, signed=False)


def _stream_counts(snapshot: dict[str, Any]) -> tuple[int, int]:
    """(connections accepted, subscriptions to the act's topics) on the exchange's public stream."""
    stream = snapshot["stream"]
    subscribes = stream["subscribes"]
    return int(stream["connections_total"]), sum(int(subscribes.get(topic, 0)) for topic in STREAM_TOPICS)


def _upstream_calls(snapshot: dict[str, Any], paths: tuple[str, ...]) -> int:
    return sum(int(snapshot["requests_by_path"].get(path, 0)) for path in paths)


async def market_data(
    sim: Any, base_url: str, account_id: str, secret: str, bots: int, seconds: float, tally: Tally
) -> MarketResult:
    """Run the act's parts side by side for `seconds` and read what the exchange saw (`sim` is the
    simulator: its counters are the exchange's view)."""
    fleet = [Bot(base_url, account_id, secret, tally) for _ in range(bots)]
    before = sim.snapshot()
    stop_at = time.monotonic() + seconds
    try:
        # A part that fails stops the others: nothing outlives the act.
        async with asyncio.TaskGroup() as parts:
            streaming = parts.create_task(stream_fleet(base_url, account_id, bots, stop_at))
            for bot in fleet:
                parts.create_task(poll_rest(bot, stop_at))
        streams = streaming.result()
    finally:
        for bot in fleet:
            await bot.close()
    after = sim.snapshot()
    connections_before, subscriptions_before = _stream_counts(before)
    connections_after, subscriptions_after = _stream_counts(after)
    return MarketResult(
        bots=bots,
        seconds=seconds,
        rest_requests=tally.sent,
        rest_with_data=tally.ok,
        rest_upstream_calls=_upstream_calls(after, REST_PATHS) - _upstream_calls(before, REST_PATHS),
        stream_frames=streams.frames_with_data,
        stream_bots_with_data=streams.bots_with_data,
        stream_upstream_connections=connections_after - connections_before,
        stream_upstream_subscriptions=subscriptions_after - subscriptions_before,
    )
