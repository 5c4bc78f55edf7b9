"""What the public stream says: command answers (the private stream's too) and market pushes, in the
shape both exchanges use.

Orderly's `/ws/stream/{account_id}` and WOO X's `/ws/stream/{application_id}` share the protocol:
`{"id", "event": "subscribe"|"unsubscribe", "topic"}` in, `{"id", "event", "success", "ts"}` back (with
`errorMsg` on failure), `{"event": "ping"}` / `{"event": "pong", "ts"}` both ways, and pushes
`{"topic": "<symbol>@<kind>", "ts", "data": {...}}` with prices and sizes as JSON numbers.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from proxy.simulator.market import Depth, Ticker
from proxy.simulator.tape import Trade

TOPIC_KINDS = ("orderbook", "orderbookupdate", "ticker", "trade")

Levels = dict[Decimal, Decimal]


def answer(
    event: str, request_id: Any, ts: int, topic: str | None = None, error: str | None = None
) -> dict[str, Any]:
    message: dict[str, Any] = {"id": request_id, "event": event, "success": error is None, "ts": ts}
    if topic is not None:
        message["data"] = topic  # WOO X names the topic an unsubscribe answer is about
    if error is not None:
        message["errorMsg"] = error
    return message


def orderbook(topic: str, symbol: str, depth: Depth) -> dict[str, Any]:
    return {
        "topic": topic,
        "ts": depth.timestamp_ms,
        "data": {"symbol": symbol, "bids": _pairs(depth.bids), "asks": _pairs(depth.asks)},
    }


def orderbook_update(
    topic: str,
    symbol: str,
    ts: int,
    prev_ts: int,
    bids: list[tuple[Decimal, Decimal]],
    asks: list[tuple[Decimal, Decimal]],
) -> dict[str, Any]:
    """A delta: each changed level with its new size, size 0 for a level that is gone."""
    data = {"symbol": symbol, "prevTs": prev_ts, "bids": _pairs(bids), "asks": _pairs(asks)}
    return {"topic": topic, "ts": ts, "data": data}


def changes(before: Levels, after: Levels) -> list[tuple[Decimal, Decimal]]:
    gone = [(price, Decimal(0)) for price in before if price not in after]
    moved = [(price, size) for price, size in after.items() if before.get(price) != size]
    return sorted(gone + moved)


def ticker(topic: str, value: Ticker) -> dict[str, Any]:
    data = {
        "symbol": value.symbol,
        "open": float(value.open),
        "close": float(value.close),
        "high": float(value.high),
        "low": float(value.low),
        "volume": float(value.volume),
        "amount": float(value.amount),
        "count": value.count,
    }
    return {"topic": topic, "ts": value.timestamp_ms, "data": data}


def trade(topic: str, value: Trade, with_source: bool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "symbol": value.symbol,
        "price": float(value.price),
        "size": float(value.quantity),
        "side": value.side,
    }
    if with_source:
        data["source"] = 1  # WOO X: 1 = traded on WOO X itself
    return {"topic": topic, "ts": value.timestamp_ms, "data": data}


def _pairs(levels: list[tuple[Decimal, Decimal]]) -> list[list[float]]:
    return [[float(price), float(size)] for price, size in levels]
