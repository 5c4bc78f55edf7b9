"""The exchange's public trade tape: every fill the book makes, per symbol, oldest first.

Guarantee: a fill is on the tape as soon as the request that caused it is answered, with the taker's
side (the side that crossed the book), its price and quantity, and the book's time in milliseconds; every
listener (the public stream) hears of it at once. The tape keeps the latest `per_symbol` trades of each
symbol, so a long run does not grow without bound.
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class Trade:
    trade_id: int
    symbol: str
    side: str  # the taker's side: BUY lifted an ask, SELL hit a bid
    price: Decimal
    quantity: Decimal
    timestamp_ms: int


class Tape:
    def __init__(self, per_symbol: int = 10_000) -> None:
        self._per_symbol = per_symbol
        self._trades: dict[str, deque[Trade]] = {}
        self._ids = itertools.count(1)
        self.listeners: list[Callable[[Trade], None]] = []

    def record(self, symbol: str, side: str, price: Decimal, quantity: Decimal, timestamp_ms: int) -> Trade:
        trades = self._trades.setdefault(symbol, deque(maxlen=self._per_symbol))
        if trades:  # kept in time order even if the wall clock steps back
            timestamp_ms = max(timestamp_ms, trades[-1].timestamp_ms)
        trade = Trade(next(self._ids), symbol, side, price, quantity, timestamp_ms)
        trades.append(trade)
        for listener in self.listeners:
            listener(trade)
        return trade

    def latest(self, symbol: str, limit: int) -> list[Trade]:
        """The newest `limit` trades of `symbol`, newest first (how the exchanges list them)."""
        trades = self._trades.get(symbol, ())
        return list(itertools.islice(reversed(trades), limit))

    def between(self, symbol: str, start_ms: int, end_ms: int) -> list[Trade]:
        """Trades with start_ms <= time < end_ms, oldest first."""
        trades = list(self._trades.get(symbol, ()))
        stamps = [trade.timestamp_ms for trade in trades]
        return trades[bisect.bisect_left(stamps, start_ms) : bisect.bisect_left(stamps, end_ms)]

    def last_before(self, symbol: str, when_ms: int) -> Trade | None:
        """The newest trade strictly before `when_ms`, if the tape still holds one."""
        for trade in reversed(self._trades.get(symbol, ())):
            if trade.timestamp_ms < when_ms:
                return trade
        return None

    def reset(self) -> None:
        self._trades.clear()
