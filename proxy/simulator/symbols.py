"""Symbols with the exchange's published filter fields, and the order filters they imply.

Field names and rules are the ones `GET /v1/public/info` documents (docs/exchanges.md): price within
[quote_min, quote_max] on the quote_tick grid (-1103), quantity within [base_min, base_max] on base_tick
(-1104), price * quantity >= min_notional (-1102), price no further than price_range beyond the mid on
the taking side and no further than price_scope from the mid either way (-1105). The numbers below are
realistic for each market but not copied from a live exchange.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from proxy.simulator.errors import SimError

_CREATED_MS = 1_684_140_107_326


@dataclass(slots=True)
class SymbolInfo:
    symbol: str
    quote_min: Decimal
    quote_max: Decimal
    quote_tick: Decimal
    base_min: Decimal
    base_max: Decimal
    base_tick: Decimal
    min_notional: Decimal
    price_range: Decimal
    price_scope: Decimal
    mid: Decimal
    leverage: Decimal = field(default=Decimal(10))

    @property
    def kind(self) -> str:
        return self.symbol.split("_")[0]

    @property
    def base(self) -> str:
        return self.symbol.split("_")[1]

    @property
    def quote(self) -> str:
        return self.symbol.split("_")[2]

    def filter_fields(self) -> dict[str, str | float | int]:
        """The v1 / Orderly snake_case row (numbers as JSON numbers, like the real answer)."""
        return {
            "symbol": self.symbol,
            "quote_min": float(self.quote_min),
            "quote_max": float(self.quote_max),
            "quote_tick": float(self.quote_tick),
            "base_min": float(self.base_min),
            "base_max": float(self.base_max),
            "base_tick": float(self.base_tick),
            "min_notional": float(self.min_notional),
            "price_range": float(self.price_range),
            "price_scope": float(self.price_scope),
            "created_time": _CREATED_MS,
            "updated_time": _CREATED_MS,
        }

    def check_order(self, side: str, price: Decimal | None, quantity: Decimal) -> None:
        """Raise the exchange's filter error for a price (None for market orders) and quantity."""
        if price is not None:
            if price < self.quote_min or price > self.quote_max:
                raise SimError(-1103, f"The order price is not within [{self.quote_min}, {self.quote_max}].")
            if price % self.quote_tick != 0:
                raise SimError(-1103, f"The order price does not follow the tick size {self.quote_tick}.")
        if quantity < self.base_min or quantity > self.base_max:
            raise SimError(-1104, f"The order quantity is not within [{self.base_min}, {self.base_max}].")
        if quantity % self.base_tick != 0:
            raise SimError(-1104, f"The order quantity does not follow the step size {self.base_tick}.")
        effective = self.mid if price is None else price
        if effective * quantity < self.min_notional:
            raise SimError(-1102)
        if price is not None:
            too_high = side == "BUY" and price > self.mid * (1 + self.price_range)
            too_low = side == "SELL" and price < self.mid * (1 - self.price_range)
            out_of_scope = abs(price - self.mid) > self.mid * self.price_scope
            if too_high or too_low or out_of_scope:
                raise SimError(-1105, f"Price is too far from the mid price {self.mid}.")


def _symbol(symbol: str, tick: str, base_min: str, base_max: str, mid: str, quote_max: str) -> SymbolInfo:
    return SymbolInfo(
        symbol=symbol,
        quote_min=Decimal(0),
        quote_max=Decimal(quote_max),
        quote_tick=Decimal(tick),
        base_min=Decimal(base_min),
        base_max=Decimal(base_max),
        base_tick=Decimal(base_min),
        min_notional=Decimal(10),
        price_range=Decimal("0.03"),
        price_scope=Decimal("0.4"),
        mid=Decimal(mid),
    )


def default_symbols(profile: str) -> dict[str, SymbolInfo]:
    """A few markets per profile, each with a mid price the simulator fills against."""
    if profile == "orderly":
        rows = [
            _symbol("PERP_ETH_USDC", "0.01", "0.001", "2000", "3000", "100000"),
            _symbol("PERP_BTC_USDC", "0.1", "0.00001", "20", "60000", "500000"),
            _symbol("PERP_SOL_USDC", "0.001", "0.01", "50000", "150", "10000"),
        ]
    else:
        rows = [
            _symbol("SPOT_BTC_USDT", "0.01", "0.0001", "20", "60000", "500000"),
            _symbol("PERP_BTC_USDT", "0.1", "0.0001", "20", "60000", "500000"),
            _symbol("SPOT_ETH_USDT", "0.01", "0.001", "500", "3000", "100000"),
        ]
    return {row.symbol: row for row in rows}


def default_balances(profile: str) -> dict[str, Decimal]:
    """What each account starts with: collateral for perps, plus some base assets for WOO X spot."""
    if profile == "orderly":
        return {"USDC": Decimal(100_000)}
    return {"USDT": Decimal(100_000), "BTC": Decimal(2), "ETH": Decimal(20)}


def resting_order(
    client_order_id: str | None = None, symbol: str = "PERP_ETH_USDC", **fields: Any
) -> dict[str, Any]:
    """An Orderly placement that passes the default symbol filters and rests open (a BUY LIMIT below
    the 3000 mid): what tests, benchmarks and users' bots send when the order itself does not matter.
    `fields` override or add parameters; a field set to None is left out."""
    body: dict[str, Any] = {
        "symbol": symbol,
        "order_type": "LIMIT",
        "side": "BUY",
        "order_price": 2900,
        "order_quantity": 0.01,
        "client_order_id": client_order_id,
        **fields,
    }
    return {name: value for name, value in body.items() if value is not None}
