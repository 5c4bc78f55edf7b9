"""Orders, balances and positions per account: the exchange's matching rules, simplified.

Guarantees (the exchanges' documented order rules, see docs/exchanges.md):
- a `client_order_id` is unique among an account's OPEN orders (-1007 otherwise) and may be reused once
  the earlier order completed; get/cancel by client id act on the latest order with that id;
- cancelling an unknown or completed order is -1006; a cancel takes effect at once (the answer is
  CANCEL_SENT, as the exchange's asynchronous cancel would say);
- LIMIT rests unless it crosses the mid (then fills at the mid); MARKET/ASK/BID fill at once; IOC/FOK fill
  if they cross, else are cancelled; POST_ONLY is cancelled if it would take — all of those complete;
- an order whose margin (perps) or cost (spot) exceeds what the account has free is -1101;
- every fill goes on the public trade tape (`Book.tape`) with the taker's side;
- every change of an order is told, as it happens and in order, to each of `order_listeners` (the
  private stream): NEW on acceptance, then CANCELLED or FILLED (with the fill's trade) — so an order
  that fills at once is heard as NEW, then FILLED.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal

from proxy.simulator.errors import SimError
from proxy.simulator.symbols import SymbolInfo
from proxy.simulator.tape import Tape, Trade

OPEN_STATUSES = frozenset({"NEW", "PARTIAL_FILLED"})
# Aggregate filters every list endpoint understands (the documented status groups).
STATUS_GROUPS = {"INCOMPLETE": OPEN_STATUSES, "COMPLETED": frozenset({"CANCELLED", "FILLED", "REJECTED"})}
ORDER_TYPES = frozenset({"LIMIT", "MARKET", "IOC", "FOK", "POST_ONLY", "ASK", "BID"})
_TAKES_AT_ONCE = frozenset({"MARKET", "ASK", "BID"})
_DUPLICATE = "The client_order_id is already used by an open order."


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)
class OrderRequest:
    symbol: str
    side: str
    order_type: str
    quantity: Decimal | None = None
    price: Decimal | None = None
    amount: Decimal | None = None
    client_order_id: str | None = None
    reduce_only: bool = False
    order_tag: str = "default"
    visible_quantity: Decimal | None = None


@dataclass(slots=True)
class Order:
    order_id: int
    account_id: str
    symbol: str
    side: str
    order_type: str
    price: Decimal | None
    quantity: Decimal
    amount: Decimal | None
    client_order_id: str | None
    reduce_only: bool
    order_tag: str
    visible: Decimal
    created_ms: int
    updated_ms: int
    status: str = "NEW"
    executed: Decimal = Decimal(0)
    average_price: Decimal | None = None

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


@dataclass(slots=True)
class Position:
    quantity: Decimal = Decimal(0)
    average_open_price: Decimal = Decimal(0)


@dataclass(slots=True)
class AccountBook:
    holdings: dict[str, Decimal]
    orders: list[Order] = field(default_factory=list)
    positions: dict[str, Position] = field(default_factory=dict)


class Book:
    def __init__(
        self,
        symbols: dict[str, SymbolInfo],
        initial_balances: dict[str, Decimal],
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        self.symbols = symbols
        self._initial = dict(initial_balances)
        self._clock_ms = clock_ms
        self._accounts: dict[str, AccountBook] = {}
        self._by_id: dict[int, Order] = {}
        self._ids = itertools.count(1_000_001)
        self.tape = Tape()
        self.order_listeners: list[Callable[[Order, Trade | None], None]] = []

    # --- accounts -------------------------------------------------------------------------------

    def open_account(self, account_id: str, balances: dict[str, Decimal] | None = None) -> None:
        self._accounts[account_id] = AccountBook(holdings=dict(balances or self._initial))

    def account(self, account_id: str) -> AccountBook:
        if account_id not in self._accounts:
            self.open_account(account_id)
        return self._accounts[account_id]

    def reset(self) -> None:
        for account_id in list(self._accounts):
            self.open_account(account_id)
        self._by_id.clear()
        self.tape.reset()

    def set_balance(self, account_id: str, token: str, amount: Decimal) -> None:
        self.account(account_id).holdings[token] = amount

    def frozen(self, account_id: str) -> dict[str, Decimal]:
        """What open orders hold: margin in the settle token (perps), cost or base quantity (spot)."""
        frozen: dict[str, Decimal] = {}
        for order in self.account(account_id).orders:
            if order.is_open:
                token, value = self._reservation(order.symbol, order.side, order.price, order.quantity)
                frozen[token] = frozen.get(token, Decimal(0)) + value
        return frozen

    # --- orders ---------------------------------------------------------------------------------

    def symbol(self, symbol: str) -> SymbolInfo:
        if not symbol:
            raise SimError(-1005, "symbol must not be blank")
        if symbol not in self.symbols:
            raise SimError(-1005, f"The symbol {symbol} is not supported.")
        return self.symbols[symbol]

    def place(self, account_id: str, request: OrderRequest) -> Order:
        info = self.symbol(request.symbol)
        quantity = self._quantity(info, request)
        price = None if request.order_type in _TAKES_AT_ONCE else request.price
        info.check_order(request.side, price, quantity)
        book = self.account(account_id)
        if request.client_order_id and any(
            o.is_open and o.client_order_id == request.client_order_id for o in book.orders
        ):
            raise SimError(-1007, _DUPLICATE)
        self._check_risk(account_id, info, request.side, price, quantity)
        stamp = self._clock_ms()
        order = Order(
            order_id=next(self._ids),
            account_id=account_id,
            symbol=info.symbol,
            side=request.side,
            order_type=request.order_type,
            price=request.price,
            quantity=quantity,
            amount=request.amount,
            client_order_id=request.client_order_id,
            reduce_only=request.reduce_only,
            order_tag=request.order_tag,
            visible=quantity if request.visible_quantity is None else request.visible_quantity,
            created_ms=stamp,
            updated_ms=stamp,
        )
        book.orders.append(order)
        self._by_id[order.order_id] = order
        self._notify(order, None)
        self._match(order, info)
        return order

    def get(
        self, account_id: str, *, order_id: int | None = None, client_order_id: str | None = None
    ) -> Order:
        """By exchange id, or the latest order carrying `client_order_id`; -1006 when there is none."""
        if order_id is not None:
            order = self._by_id.get(order_id)
            if order is not None and order.account_id == account_id:
                return order
        elif client_order_id:
            for order in reversed(self.account(account_id).orders):
                if order.client_order_id == client_order_id:
                    return order
        raise SimError(-1006, "The order can not be found.")

    def cancel(
        self,
        account_id: str,
        *,
        symbol: str | None,
        order_id: int | None = None,
        client_order_id: str | None = None,
    ) -> Order:
        try:
            order = self.get(account_id, order_id=order_id, client_order_id=client_order_id)
        except SimError:
            order = None
        # The real message names both: "Your order and symbol are not valid or already canceled."
        if order is None or not order.is_open or (symbol and order.symbol != symbol):
            raise SimError(-1006, "Your order and symbol are not valid or already canceled.")
        self._complete(order, "CANCELLED")
        return order

    def cancel_all(self, account_id: str, symbol: str | None = None) -> int:
        cancelled = 0
        for order in self.account(account_id).orders:
            if order.is_open and (not symbol or order.symbol == symbol):
                self._complete(order, "CANCELLED")
                cancelled += 1
        return cancelled

    def orders(self, account_id: str, symbol: str | None = None, status: str | None = None) -> list[Order]:
        wanted = STATUS_GROUPS.get(status or "", frozenset({status}) if status else None)
        return [
            o
            for o in self.account(account_id).orders
            if (not symbol or o.symbol == symbol) and (wanted is None or o.status in wanted)
        ]

    def fill(self, order: Order) -> Order:
        """Fill an open order completely at its limit price (or the mid), e.g. from the control API.
        The resting order is the maker, so the tape shows the opposite side as the taker."""
        if not order.is_open:
            raise SimError(-1006, "The order is already completed.")
        info = self.symbols[order.symbol]
        taker = "SELL" if order.side == "BUY" else "BUY"
        self._execute(order, order.price if order.price is not None else info.mid, taker)
        return order

    def now_ms(self) -> int:
        return self._clock_ms()

    def open_interest(self, symbol: str) -> Decimal:
        """The long side of all positions in `symbol` (equal to the short side on a real venue)."""
        positions = (book.positions.get(symbol) for book in self._accounts.values())
        return sum((p.quantity for p in positions if p is not None and p.quantity > 0), Decimal(0))

    def find(self, order_id: int) -> Order | None:
        return self._by_id.get(order_id)

    def all_orders(self) -> list[Order]:
        return list(self._by_id.values())

    # --- internals ------------------------------------------------------------------------------

    def _quantity(self, info: SymbolInfo, request: OrderRequest) -> Decimal:
        if request.quantity is not None:
            return request.quantity
        if request.amount is not None:
            # A quote-sized market order buys what the amount affords at the mid.
            return (request.amount / info.mid).quantize(info.base_tick, rounding=ROUND_DOWN)
        raise SimError(-1005, "order_quantity must be a positive number")

    def _reservation(
        self, symbol: str, side: str, price: Decimal | None, quantity: Decimal
    ) -> tuple[str, Decimal]:
        info = self.symbols[symbol]
        notional = (info.mid if price is None else price) * quantity
        if info.kind == "PERP":
            return info.quote, notional / info.leverage
        return (info.quote, notional) if side == "BUY" else (info.base, quantity)

    def _check_risk(
        self, account_id: str, info: SymbolInfo, side: str, price: Decimal | None, quantity: Decimal
    ) -> None:
        token, needed = self._reservation(info.symbol, side, price, quantity)
        held = self.account(account_id).holdings.get(token, Decimal(0))
        used = self.frozen(account_id).get(token, Decimal(0))
        if info.kind == "PERP":
            for symbol, position in self.account(account_id).positions.items():
                other = self.symbols[symbol]
                if other.quote == token:
                    used += abs(position.quantity) * other.mid / other.leverage
        if needed + used > held:
            raise SimError(-1101, "The margin will be insufficient after.")

    def _match(self, order: Order, info: SymbolInfo) -> None:
        if order.order_type in _TAKES_AT_ONCE:
            self._execute(order, info.mid, order.side)
            return
        assert order.price is not None
        crosses = order.price >= info.mid if order.side == "BUY" else order.price <= info.mid
        if order.order_type == "POST_ONLY":
            if crosses:
                self._complete(order, "CANCELLED")
        elif crosses:
            self._execute(order, info.mid, order.side)
        elif order.order_type in ("IOC", "FOK"):
            self._complete(order, "CANCELLED")

    def _execute(self, order: Order, price: Decimal, taker_side: str) -> None:
        info = self.symbols[order.symbol]
        book = self.account(order.account_id)
        signed = order.quantity if order.side == "BUY" else -order.quantity
        if info.kind == "PERP":
            position = book.positions.setdefault(order.symbol, Position())
            total = position.quantity + signed
            if total != 0 and (position.quantity == 0 or (position.quantity > 0) == (signed > 0)):
                cost = position.average_open_price * abs(position.quantity) + price * abs(signed)
                position.average_open_price = cost / abs(total)
            position.quantity = total
        else:
            zero = Decimal(0)
            book.holdings[info.base] = book.holdings.get(info.base, zero) + signed
            book.holdings[info.quote] = book.holdings.get(info.quote, zero) - signed * price
        order.executed = order.quantity
        order.average_price = price
        order.status = "FILLED"
        order.updated_ms = self._clock_ms()
        trade = self.tape.record(order.symbol, taker_side, price, order.quantity, order.updated_ms)
        self._notify(order, trade)

    def _complete(self, order: Order, status: str) -> None:
        order.status = status
        order.updated_ms = self._clock_ms()
        self._notify(order, None)

    def _notify(self, order: Order, trade: Trade | None) -> None:
        for listener in self.order_listeners:
            listener(order, trade)
