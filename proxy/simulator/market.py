"""Market data the simulated exchange publishes: order book, trades, klines, 24 h tickers.

Guarantees:
- the book is the simulator's own resting orders (every account's open LIMIT / POST_ONLY orders, at
  their visible quantity; hidden ones — visible 0 — are left out) merged with a synthetic depth of
  `SYNTHETIC_LEVELS` levels a side around the symbol's mid: bid i at mid - i * step rounded down to the
  tick, ask i at mid + i * step rounded up, step = max(tick, 1 bp of the mid), about i * 1000 quote units
  a level. So bids are always below the mid and asks above it (a LIMIT crossing the mid fills at once),
  and a resting order's price level shows with its quantity added. Should a moved mid leave a resting
  order across it, that side's synthetic levels start beyond the order instead: synthetic depth never
  crosses a resting order and neither side runs empty.
- trades are the fills on the tape (tape.py), newest first; klines are built from them (candles.py);
- a ticker's 24 h figures come from the tape's last 24 h (flat at the last price when there were no
  trades); mark and index price are the mid; funding is a constant 0.01 % with 8-hourly funding times.
Everything is a pure function of the book, the tape and the clock, so tests can assert exact values.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, Decimal

from proxy.simulator.book import Book
from proxy.simulator.candles import Candle, Interval, build
from proxy.simulator.errors import SimError
from proxy.simulator.symbols import SymbolInfo
from proxy.simulator.tape import Trade

SYNTHETIC_LEVELS = 25
LEVEL_NOTIONAL = Decimal(1000)
STEP_FRACTION = Decimal("0.0001")
FUNDING_RATE = Decimal("0.0001")
FUNDING_PERIOD_MS = 8 * 3600 * 1000
DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class Depth:
    bids: list[tuple[Decimal, Decimal]]  # (price, quantity), best (highest) first
    asks: list[tuple[Decimal, Decimal]]  # best (lowest) first
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class Ticker:
    symbol: str
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    amount: Decimal
    count: int
    mark_price: Decimal
    index_price: Decimal
    funding_rate: Decimal
    next_funding_ms: int
    open_interest: Decimal
    timestamp_ms: int


class Market:
    def __init__(self, book: Book) -> None:
        self.book = book

    def symbol(self, symbol: str | None) -> SymbolInfo:
        """The listed symbol (-1005 when blank or unknown)."""
        return self.book.symbol(symbol or "")

    def perpetual(self, symbol: str | None) -> SymbolInfo:
        info = self.symbol(symbol)
        if info.kind != "PERP":
            raise SimError(-1005, f"The symbol {info.symbol} is not a futures symbol.")
        return info

    def perpetuals(self) -> list[SymbolInfo]:
        return [info for info in self.book.symbols.values() if info.kind == "PERP"]

    def depth(self, symbol: str, max_level: int) -> Depth:
        info = self.symbol(symbol)
        bids: dict[Decimal, Decimal] = {}
        asks: dict[Decimal, Decimal] = {}
        for order in self.book.all_orders():
            shown = min(order.visible, order.quantity - order.executed)
            if order.symbol != info.symbol or not order.is_open or order.price is None or shown <= 0:
                continue
            side = bids if order.side == "BUY" else asks
            side[order.price] = side.get(order.price, Decimal(0)) + shown
        # Synthetic levels start at the mid, or beyond a resting order a moved mid left across it.
        bid_anchor = min(info.mid, min(asks, default=info.mid))
        ask_anchor = max(info.mid, max(bids, default=info.mid))
        step = max(info.quote_tick, _to_tick(info.mid * STEP_FRACTION, info.quote_tick, ROUND_FLOOR))
        for level in range(1, SYNTHETIC_LEVELS + 1):
            quantity = self._level_quantity(info, level)
            bid = _to_tick(bid_anchor - step * level, info.quote_tick, ROUND_FLOOR)
            ask = _to_tick(ask_anchor + step * level, info.quote_tick, ROUND_CEILING)
            if bid > 0:
                bids[bid] = bids.get(bid, Decimal(0)) + quantity
            asks[ask] = asks.get(ask, Decimal(0)) + quantity
        return Depth(
            bids=sorted(bids.items(), reverse=True)[:max_level],
            asks=sorted(asks.items())[:max_level],
            timestamp_ms=self.book.now_ms(),
        )

    def trades(self, symbol: str, limit: int) -> list[Trade]:
        return self.book.tape.latest(self.symbol(symbol).symbol, limit)

    def klines(
        self,
        symbol: str,
        interval: Interval,
        limit: int,
        *,
        before_ms: int | None = None,
        after_ms: int | None = None,
    ) -> list[Candle]:
        info = self.symbol(symbol)
        return build(
            self.book.tape,
            info.symbol,
            interval,
            self.book.now_ms(),
            info.mid,
            limit,
            before_ms=before_ms,
            after_ms=after_ms,
        )

    def ticker(self, symbol: str) -> Ticker:
        info = self.symbol(symbol)
        now = self.book.now_ms()
        day = self.book.tape.between(info.symbol, now - DAY_MS, now + 1)
        earlier = self.book.tape.last_before(info.symbol, now - DAY_MS)
        last = day[-1].price if day else earlier.price if earlier else info.mid
        prices = [trade.price for trade in day] or [last]
        return Ticker(
            symbol=info.symbol,
            open=prices[0],
            high=max(prices),
            low=min(prices),
            close=last,
            volume=sum((trade.quantity for trade in day), Decimal(0)),
            amount=sum((trade.quantity * trade.price for trade in day), Decimal(0)),
            count=len(day),
            mark_price=info.mid,
            index_price=info.mid,
            funding_rate=FUNDING_RATE,
            next_funding_ms=(now // FUNDING_PERIOD_MS + 1) * FUNDING_PERIOD_MS,
            open_interest=self.book.open_interest(info.symbol),
            timestamp_ms=now,
        )

    @staticmethod
    def _level_quantity(info: SymbolInfo, level: int) -> Decimal:
        wanted = _to_tick(LEVEL_NOTIONAL * level / info.mid, info.base_tick, ROUND_DOWN)
        return min(max(wanted, info.base_min, info.base_tick), info.base_max)


def _to_tick(value: Decimal, tick: Decimal, rounding: str) -> Decimal:
    return (value / tick).to_integral_value(rounding=rounding) * tick
