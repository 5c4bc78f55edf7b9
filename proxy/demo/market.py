"""The demo's market-data act: a fleet of bots after the same market data, straight vs through Seawall.

REST polling: every bot refreshes the instrument list (`GET /v1/public/info`) and the tickers
(`GET /v1/public/futures`) as fast as answers come, unsigned, as a ccxt client does for public
endpoints. The exchange counts public GETs per IP — 10 a second for the whole fleet behind one address —
so straight to it almost every request is refused; through Seawall the instrument list is answered from
its micro-cache and the tickers are coalesced into one call per round.

The act is built to take more parts: each part is one job of `market_data` that fills its own fields of
`MarketResult` (a stream part — bots subscribed to the public WebSocket stream — adds its job next to
`poll_rest` and its fields next to the REST ones), and `report.market_rows` renders every field.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from proxy.demo.bots import Bot, Tally

REST_PATHS = ("/v1/public/info", "/v1/public/futures")


@dataclass
class MarketResult:
    """What the market-data act cost the exchange and what the bots got, per part."""

    bots: int
    seconds: float
    rest_requests: int  # bot requests for REST market data
    rest_with_data: int  # of those, answered 200 with the exchange's success payload
    rest_upstream_calls: int  # requests the exchange had to answer for them

    @property
    def rest_data_share(self) -> float:
        return self.rest_with_data / self.rest_requests if self.rest_requests else 0.0


async def poll_rest(bot: Bot, stop_at: float) -> None:
    """Refresh instruments and tickers, one after the other, as fast as the answers come."""
    while time.monotonic() < stop_at:
        for path in REST_PATHS:
            await bot.call("GET", path, signed=False)


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
        await asyncio.gather(*(poll_rest(bot, stop_at) for bot in fleet))
    finally:
        for bot in fleet:
            await bot.close()
    after = sim.snapshot()
    return MarketResult(
        bots=bots,
        seconds=seconds,
        rest_requests=tally.sent,
        rest_with_data=tally.ok,
        rest_upstream_calls=_upstream_calls(after, REST_PATHS) - _upstream_calls(before, REST_PATHS),
    )
