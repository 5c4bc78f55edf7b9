"""What the private stream pushes: `executionreport`, `balance` and `position`, per exchange.

Both exchanges push `{"topic", "ts", "data"}` with prices and sizes as JSON numbers (docs/exchanges.md):
- `executionreport`: one order's state after a change. `tradeId`, `executedPrice`, `executedQuantity`
  describe the fill that caused it (0 when none), `totalExecutedQuantity` / `avgPrice` the order so far,
  `maker` whether the order rested. WOO X's `clientOrderId` is an integer (0 = none), Orderly's a
  string ("" = none). The simulator charges no fees, so fees are 0 (as its REST rows say).
- `balance`: every token of the account, `holding` and `frozen` (what open orders hold) among the
  documented fields; `version` grows with each push to the account.
- `position`: WOO X keys positions by symbol (`holding`), Orderly lists them (`positionQty`); pending
  quantities are the open orders' unfilled sizes (Orderly's short side negative).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from proxy.simulator.book import Book, Order, Position
from proxy.simulator.tape import Trade

EXECUTION_REPORT = "executionreport"
BALANCE = "balance"
POSITION = "position"
# ccxt's watch_orders(params={"trigger": True}) subscribes these; the simulator has no algo orders, so
# they are accepted and stay silent.
ALGO_REPORTS = {"orderly": "algoexecutionreport", "woox": "algoexecutionreportv2"}

_ZERO = Decimal(0)


def _number(value: Decimal | None) -> float:
    return 0.0 if value is None else float(value)


def execution_report(profile: str, order: Order, trade: Trade | None, ts: int) -> dict[str, Any]:
    woox = profile == "woox"
    parts = order.symbol.split("_")
    data: dict[str, Any] = {
        "symbol": order.symbol,
        "clientOrderId": int(order.client_order_id or 0) if woox else order.client_order_id or "",
        "orderId": order.order_id,
        "type": order.order_type,
        "side": order.side,
        "quantity": _number(order.quantity),
        "price": _number(order.price),
        "tradeId": trade.trade_id if trade else 0,
        "executedPrice": _number(trade.price if trade else None),
        "executedQuantity": _number(trade.quantity if trade else None),
        "fee": 0.0,
        "feeAsset": parts[1] if woox else parts[2],  # as the REST order rows say
        "totalExecutedQuantity": _number(order.executed),
        "avgPrice": _number(order.average_price),
        "status": order.status,
        "reason": "",
        "totalFee": 0.0,
        "timestamp": order.updated_ms,
        "maker": trade is not None and trade.side != order.side,
    }
    if woox:
        data.update(orderTag=order.order_tag, visible=_number(order.visible), reduceOnly=order.reduce_only)
    else:
        data.update(
            avgExecutedPrice=_number(order.average_price),
            visibleQuantity=_number(order.visible),
            reduceOnly=order.reduce_only,
            marginMode="CROSS",
        )
    return {"topic": EXECUTION_REPORT, "ts": ts, "data": data}


def balance(book: Book, account_id: str, version: int, ts: int) -> dict[str, Any]:
    frozen = book.frozen(account_id)
    rows = {
        token: {
            "holding": float(amount),
            "frozen": _number(frozen.get(token)),
            "interest": 0.0,
            "pendingShortQty": 0.0,
            "pendingExposure": 0.0,
            "pendingLongQty": 0.0,
            "pendingLongExposure": 0.0,
            "version": version,
            "staked": 0.0,
            "unbonding": 0.0,
            "vault": 0.0,
            "averageOpenPrice": 0.0,
            "pnl24H": 0.0,
            "fee24H": 0.0,
            "markPrice": _mark_price(book, token),
        }
        for token, amount in book.account(account_id).holdings.items()
    }
    return {"topic": BALANCE, "ts": ts, "data": {"balances": rows}}


def position(profile: str, book: Book, account_id: str, symbol: str, version: int, ts: int) -> dict[str, Any]:
    held = book.account(account_id).positions.get(symbol, Position())
    mark = book.symbols[symbol].mid
    longs = sum((o.quantity - o.executed for o in _open(book, account_id, symbol, "BUY")), _ZERO)
    shorts = sum((o.quantity - o.executed for o in _open(book, account_id, symbol, "SELL")), _ZERO)
    common = {
        "averageOpenPrice": float(held.average_open_price),
        "pnl24H": 0.0,
        "fee24H": 0.0,
        "settlePrice": float(held.average_open_price),
        "markPrice": float(mark),
        "version": version,
        "timestamp": ts,
    }
    if profile == "woox":
        row = {
            "holding": float(held.quantity),
            "pendingLongQty": float(longs),
            "pendingShortQty": float(shorts),
            **common,
            "openingTime": ts if held.quantity else 0,
            "pnl24HPercentage": 0.0,
            "adlQuantile": 1,
            "positionSide": "BOTH",
        }
        return {"topic": POSITION, "ts": ts, "data": {"positions": {symbol: row}}}
    info = book.symbols[symbol]
    row = {
        "symbol": symbol,
        "positionQty": float(held.quantity),
        "costPosition": float(held.quantity * held.average_open_price),
        "lastSumUnitaryFunding": 0.0,
        "sumUnitaryFundingVersion": 0,
        "pendingLongQty": float(longs),
        "pendingShortQty": -float(shorts),
        **common,
        "unsettledPnl": float((mark - held.average_open_price) * held.quantity) + 0.0,  # no -0.0
        "estLiqPrice": 0.0,
        "imr": float(1 / info.leverage),
        "leverage": float(info.leverage),
        "marginMode": "CROSS",
    }
    return {"topic": POSITION, "ts": ts, "data": {"positions": [row]}}


def _open(book: Book, account_id: str, symbol: str, side: str) -> list[Order]:
    return [
        order
        for order in book.account(account_id).orders
        if order.is_open and order.symbol == symbol and order.side == side
    ]


def _mark_price(book: Book, token: str) -> float:
    """The token's price in its quote: the mid of a market that trades it, 1 for a quote token."""
    for info in book.symbols.values():
        if info.base == token:
            return float(info.mid)
    return 1.0
