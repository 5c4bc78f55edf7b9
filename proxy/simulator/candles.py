"""Kline intervals as the exchanges name them, and candles built from the trade tape.

A candle covers [start, end) of one interval: open/high/low/close of the trades in it, volume in base
and amount in quote. A candle without trades is flat at the last earlier trade's price (or the
reference price when the tape holds none), with zero volume — how the exchanges show a quiet minute.
Weeks start on Monday 00:00 UTC, months and years on the calendar (UTC).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from proxy.simulator.errors import SimError
from proxy.simulator.tape import Tape

_MINUTE = 60_000
_MINUTES = {"1m": 1, "3m": 3, "5m": 5, "15m": 15, "30m": 30, "1h": 60, "2h": 120, "4h": 240, "6h": 360}
_MINUTES |= {"12h": 720, "1d": 1440, "1w": 10_080}
_MONTHS = {"1mon": 1, "1y": 12}
_MONDAY_MS = 4 * 1440 * _MINUTE  # 1970-01-01 was a Thursday; the first Monday came 4 days later

# WOO X v1 and Orderly take these `type`s; WOO X v3 adds 3m, 2h and 6h.
V1_TYPES = ("1m", "5m", "15m", "30m", "1h", "4h", "12h", "1d", "1w", "1mon", "1y")
V3_TYPES = ("1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "12h", "1d", "1w", "1mon", "1y")


@dataclass(frozen=True, slots=True)
class Candle:
    start_ms: int
    end_ms: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    amount: Decimal


class Interval:
    """One kline `type`: where a bucket starts and where its neighbours start."""

    def __init__(self, name: str, allowed: tuple[str, ...] = V3_TYPES) -> None:
        if name not in allowed:
            raise SimError(-1005, f"type must be one of {'/'.join(allowed)}")
        self.name = name
        self._length = _MINUTES.get(name, 0) * _MINUTE
        self._months = _MONTHS.get(name, 0)

    def start(self, ms: int) -> int:
        if self._months:
            moment = datetime.fromtimestamp(ms / 1000, UTC)
            month = moment.month if self._months == 1 else 1
            return _ms(datetime(moment.year, month, 1, tzinfo=UTC))
        offset = _MONDAY_MS if self.name == "1w" else 0
        return (ms - offset) // self._length * self._length + offset

    def shift(self, start_ms: int, count: int) -> int:
        """The start `count` buckets after (negative: before) the bucket starting at `start_ms`."""
        if not self._months:
            return start_ms + count * self._length
        moment = datetime.fromtimestamp(start_ms / 1000, UTC)
        index = moment.year * 12 + moment.month - 1 + count * self._months
        return _ms(datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC))


def build(
    tape: Tape,
    symbol: str,
    interval: Interval,
    now_ms: int,
    reference: Decimal,
    limit: int,
    *,
    before_ms: int | None = None,
    after_ms: int | None = None,
) -> list[Candle]:
    """Up to `limit` candles, newest first, never one that starts after now. `before_ms` (wins over
    `after_ms`): those starting before it; `after_ms`: the earliest ones starting after it; neither:
    the latest, the current (unfinished) one included."""
    current = interval.start(now_ms)
    if before_ms is not None:
        newest = min(current, interval.start(before_ms - 1))
        starts = list(_walk(interval, newest, -1, limit))
    elif after_ms is not None:
        first = interval.start(after_ms)
        first = first if first > after_ms else interval.shift(first, 1)
        starts = [s for s in _walk(interval, first, 1, limit) if s <= current][::-1]
    else:
        starts = list(_walk(interval, current, -1, limit))
    if not starts:
        return []
    oldest, newest_end = starts[-1], interval.shift(starts[0], 1)
    trades = tape.between(symbol, oldest, newest_end)
    stamps = [trade.timestamp_ms for trade in trades]
    earlier = tape.last_before(symbol, oldest)
    price = earlier.price if earlier is not None else reference
    candles = []
    for start in reversed(starts):
        end = interval.shift(start, 1)
        inside = trades[bisect.bisect_left(stamps, start) : bisect.bisect_left(stamps, end)]
        if inside:
            prices = [trade.price for trade in inside]
            volume = sum((trade.quantity for trade in inside), Decimal(0))
            amount = sum((trade.quantity * trade.price for trade in inside), Decimal(0))
            price = prices[-1]
            candles.append(Candle(start, end, prices[0], max(prices), min(prices), price, volume, amount))
        else:
            candles.append(Candle(start, end, price, price, price, price, Decimal(0), Decimal(0)))
    return candles[::-1]


def _walk(interval: Interval, start: int, direction: int, limit: int) -> Iterator[int]:
    for _ in range(limit):
        if start < 0:
            return
        yield start
        start = interval.shift(start, direction)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)
