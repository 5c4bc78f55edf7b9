"""Market-data routes in each dialect: order book, market trades, klines, futures tickers.

What the real clients call: ccxt `woofipro` — `GET /v1/orderbook/{symbol}` and `GET /v1/kline` (both
signed on Orderly, 10/s per key), `/v1/public/market_trades`, `/v1/public/futures[/{symbol}]`; ccxt
`woo` — `/v3/public/orderbook`, `/v3/public/marketTrades`, `/v3/public/klineHistory`,
`/v3/public/futures`; older WOO X clients the v1 public paths (plus the legacy aliases
`/v1/orderbook/{symbol}` and `/v1/kline`, public on WOO X). Public routes draw from the per-IP
`public` budget like every other public route. Shapes follow the documented answers: Orderly wraps
in `data` with JSON numbers and ms times; WOO X v1 is flat with seconds-string trade times; WOO X v3
wraps in `data` with decimal strings.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from proxy.simulator import params as p
from proxy.simulator.candles import V1_TYPES, V3_TYPES, Candle, Interval
from proxy.simulator.errors import SimError
from proxy.simulator.limits import LimitRule
from proxy.simulator.market import Depth, Market, Ticker
from proxy.simulator.routing import Route, RuleUse, SimRequest
from proxy.simulator.signing import now_ms
from proxy.simulator.tape import Trade

ORDERLY_RULES = [LimitRule("orderbook", 10, 1.0, "key"), LimitRule("kline", 10, 1.0, "key")]
DEFAULT_LEVELS = 100
MAX_LEVELS = 1000
_LATEST_MS = 253_402_300_799_999  # 9999-12-31: a cursor beyond it is not a time


def orderly_routes(market: Market) -> list[Route]:
    def data(value: Any) -> dict[str, Any]:
        return {"success": True, "data": value, "timestamp": now_ms()}

    def book(request: SimRequest) -> dict[str, Any]:
        depth = market.depth(request.path_params["symbol"], _levels(request, "max_level"))
        return data({**_book_sides(depth, p.number), "timestamp": depth.timestamp_ms})

    def klines(request: SimRequest) -> dict[str, Any]:
        return data({"rows": _klines(market, request, V1_TYPES, _snake_candle)})

    def trades(request: SimRequest) -> dict[str, Any]:
        rows = [_snake_trade(t, t.timestamp_ms) for t in _trades(market, request, maximum=500)]
        return data({"rows": rows})

    def futures(request: SimRequest) -> dict[str, Any]:
        return data({"rows": [_snake_ticker(market.ticker(s.symbol)) for s in market.perpetuals()]})

    def futures_one(request: SimRequest) -> dict[str, Any]:
        info = market.perpetual(request.path_params["symbol"])
        return data(_snake_ticker(market.ticker(info.symbol)))

    public = (RuleUse("public"),)
    return [
        Route("GET", "/v1/orderbook/{symbol}", "market.orderbook", book, limits=(RuleUse("orderbook"),)),
        Route("GET", "/v1/kline", "market.kline", klines, limits=(RuleUse("kline"),)),
        Route("GET", "/v1/public/market_trades", "market.trades", trades, False, public),
        Route("GET", "/v1/public/futures", "market.futures", futures, False, public),
        Route("GET", "/v1/public/futures/{symbol}", "market.futures", futures_one, False, public),
    ]


def woox_v1_routes(market: Market) -> list[Route]:
    def book(request: SimRequest) -> dict[str, Any]:
        depth = market.depth(request.path_params["symbol"], _levels(request, "max_level"))
        return {"success": True, **_book_sides(depth, p.number), "timestamp": depth.timestamp_ms}

    def klines(request: SimRequest) -> dict[str, Any]:
        return {"success": True, "rows": _klines(market, request, V1_TYPES, _snake_candle)}

    def trades(request: SimRequest) -> dict[str, Any]:
        rows = [
            {**_snake_trade(t, f"{t.timestamp_ms / 1000:.3f}"), "source": 1}
            for t in _trades(market, request, maximum=500)
        ]
        return {"success": True, "rows": rows}

    def futures(request: SimRequest) -> dict[str, Any]:
        rows = [_woo_v1_ticker(market.ticker(s.symbol)) for s in market.perpetuals()]
        return {"success": True, "rows": rows, "timestamp": now_ms()}

    def futures_one(request: SimRequest) -> dict[str, Any]:
        info = market.perpetual(request.path_params["symbol"])
        return {"success": True, "info": _woo_v1_ticker(market.ticker(info.symbol)), "timestamp": now_ms()}

    public = (RuleUse("public"),)
    return [
        Route("GET", "/v1/public/orderbook/{symbol}", "market.orderbook", book, False, public),
        Route("GET", "/v1/orderbook/{symbol}", "market.orderbook", book, False, public),
        Route("GET", "/v1/public/kline", "market.kline", klines, False, public),
        Route("GET", "/v1/kline", "market.kline", klines, False, public),
        Route("GET", "/v1/public/market_trades", "market.trades", trades, False, public),
        Route("GET", "/v1/public/futures", "market.futures", futures, False, public),
        Route("GET", "/v1/public/futures/{symbol}", "market.futures", futures_one, False, public),
    ]


def woox_v3_routes(market: Market) -> list[Route]:
    def data(value: Any) -> dict[str, Any]:
        return {"success": True, "data": value, "timestamp": now_ms()}

    def book(request: SimRequest) -> dict[str, Any]:
        symbol = p.text(request.params, "symbol", required=True) or ""
        depth = market.depth(symbol, _levels(request, "maxLevel"))
        return data(_book_sides(depth, _text))

    def klines(request: SimRequest) -> dict[str, Any]:
        return data({"rows": _klines(market, request, V3_TYPES, _camel_candle)})

    def trades(request: SimRequest) -> dict[str, Any]:
        rows = [
            {
                "symbol": t.symbol,
                "side": t.side,
                "source": 1,
                "executedPrice": _text(t.price),
                "executedQuantity": _text(t.quantity),
                "executedTimestamp": t.timestamp_ms,
            }
            for t in _trades(market, request, maximum=500)
        ]
        return data({"rows": rows})

    def futures(request: SimRequest) -> dict[str, Any]:
        wanted = p.text(request.params, "symbol")
        symbols = [market.perpetual(wanted)] if wanted else market.perpetuals()
        return data({"rows": [_woo_v3_ticker(market.ticker(s.symbol)) for s in symbols]})

    public = (RuleUse("public"),)
    return [
        Route("GET", "/v3/public/orderbook", "market.orderbook", book, False, public),
        Route("GET", "/v3/public/kline", "market.kline", klines, False, public),
        Route("GET", "/v3/public/klineHistory", "market.kline", klines, False, public),
        Route("GET", "/v3/public/marketTrades", "market.trades", trades, False, public),
        Route("GET", "/v3/public/futures", "market.futures", futures, False, public),
    ]


# --- reading the query ------------------------------------------------------------------------------


def _count(request: SimRequest, name: str, default: int, maximum: int) -> int:
    value = p.integer(request.params, name)
    if value is None:
        return default
    if value < 1:
        raise SimError(-1005, f"{name} must be a positive integer")
    return min(value, maximum)


def _levels(request: SimRequest, name: str) -> int:
    return _count(request, name, DEFAULT_LEVELS, MAX_LEVELS)


def _cursor(request: SimRequest, name: str) -> int | None:
    value = p.integer(request.params, name)
    if value is not None and not 0 <= value <= _LATEST_MS:
        raise SimError(-1005, f"{name} must be a 13-digit millisecond timestamp")
    return value


def _trades(market: Market, request: SimRequest, maximum: int) -> list[Trade]:
    symbol = p.text(request.params, "symbol", required=True) or ""
    return market.trades(symbol, _count(request, "limit", 10, maximum))


def _klines(
    market: Market, request: SimRequest, types: tuple[str, ...], shape: Callable[[str, str, Candle], Any]
) -> list[Any]:
    symbol = p.text(request.params, "symbol", required=True) or ""
    interval = Interval(p.text(request.params, "type", required=True) or "", types)
    candles = market.klines(
        symbol,
        interval,
        _count(request, "limit", 100, 1000),
        before_ms=_cursor(request, "before"),
        after_ms=_cursor(request, "after"),
    )
    listed = market.symbol(symbol).symbol
    return [shape(listed, interval.name, candle) for candle in candles]


# --- answer shapes ----------------------------------------------------------------------------------


def _text(value: Decimal) -> str:
    """A decimal string without exponent or trailing zeros, as WOO X v3 writes numbers."""
    return format(value.normalize(), "f")


def _book_sides(depth: Depth, number: Callable[[Decimal], Any]) -> dict[str, Any]:
    return {
        "asks": [{"price": number(price), "quantity": number(qty)} for price, qty in depth.asks],
        "bids": [{"price": number(price), "quantity": number(qty)} for price, qty in depth.bids],
    }


def _snake_trade(trade: Trade, timestamp: int | str) -> dict[str, Any]:
    return {
        "symbol": trade.symbol,
        "side": trade.side,
        "executed_price": p.number(trade.price),
        "executed_quantity": p.number(trade.quantity),
        "executed_timestamp": timestamp,
    }


def _snake_candle(symbol: str, kind: str, candle: Candle) -> dict[str, Any]:
    return {
        "open": p.number(candle.open),
        "close": p.number(candle.close),
        "low": p.number(candle.low),
        "high": p.number(candle.high),
        "volume": p.number(candle.volume),
        "amount": p.number(candle.amount),
        "symbol": symbol,
        "type": kind,
        "start_timestamp": candle.start_ms,
        "end_timestamp": candle.end_ms,
    }


def _camel_candle(symbol: str, kind: str, candle: Candle) -> dict[str, Any]:
    return {
        "symbol": symbol,
        "open": _text(candle.open),
        "close": _text(candle.close),
        "high": _text(candle.high),
        "low": _text(candle.low),
        "volume": _text(candle.volume),
        "amount": _text(candle.amount),
        "type": kind,
        "startTimestamp": candle.start_ms,
        "endTimestamp": candle.end_ms,
    }


def _woo_v1_ticker(ticker: Ticker) -> dict[str, Any]:
    return {
        "symbol": ticker.symbol,
        "index_price": p.number(ticker.index_price),
        "mark_price": p.number(ticker.mark_price),
        "est_funding_rate": p.number(ticker.funding_rate),
        "last_funding_rate": p.number(ticker.funding_rate),
        "next_funding_time": ticker.next_funding_ms,
        "open_interest": p.number(ticker.open_interest),
        "24h_open": p.number(ticker.open),
        "24h_close": p.number(ticker.close),
        "24h_high": p.number(ticker.high),
        "24h_low": p.number(ticker.low),
        "24h_volume": p.number(ticker.volume),
        "24h_amount": p.number(ticker.amount),
    }


def _snake_ticker(ticker: Ticker) -> dict[str, Any]:
    """Orderly's row: WOO X v1's plus the funding accumulator."""
    return {**_woo_v1_ticker(ticker), "sum_unitary_funding": 0}


def _woo_v3_ticker(ticker: Ticker) -> dict[str, Any]:
    return {
        "symbol": ticker.symbol,
        "indexPrice": _text(ticker.index_price),
        "markPrice": _text(ticker.mark_price),
        "estFundingRate": _text(ticker.funding_rate),
        "lastFundingRate": _text(ticker.funding_rate),
        "openInterest": _text(ticker.open_interest),
        "24hOpen": _text(ticker.open),
        "24hClose": _text(ticker.close),
        "24hHigh": _text(ticker.high),
        "24hLow": _text(ticker.low),
        "24hVolume": _text(ticker.volume),
        "24hAmount": _text(ticker.amount),
        "nextFundingTime": ticker.next_funding_ms,
    }
