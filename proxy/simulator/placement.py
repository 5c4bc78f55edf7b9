"""Turning placement parameters into an `OrderRequest`, for every dialect the exchanges speak.

Orderly and WOO X v1 use snake_case (`order_type`, `order_price`, `order_quantity`, `client_order_id`);
WOO X v3 uses camelCase (`type`, `price`, `quantity`, `clientOrderId`). Client ids differ too
(docs/exchanges.md): Orderly takes a string of at most 36 characters not starting with '-'; WOO X an
integer 0…2^63-1 where 0 means "none".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from proxy.simulator import params as p
from proxy.simulator.book import ORDER_TYPES, OrderRequest
from proxy.simulator.errors import SimError

_PRICED = frozenset({"LIMIT", "IOC", "FOK", "POST_ONLY"})
_QUOTE_SIZED = frozenset({"MARKET", "ASK", "BID"})
_MAX_WOO_CLIENT_ID = 9_223_372_036_854_775_807


@dataclass(frozen=True, slots=True)
class Dialect:
    order_type: str
    price: str
    quantity: str
    amount: str
    client_order_id: str
    reduce_only: str
    order_tag: str
    visible_quantity: str
    client_ids: Literal["string", "integer"]
    extra: frozenset[str]

    @property
    def allowed(self) -> frozenset[str]:
        core = {
            self.order_type,
            self.price,
            self.quantity,
            self.amount,
            self.client_order_id,
            self.reduce_only,
            self.order_tag,
            self.visible_quantity,
            "symbol",
            "side",
        }
        return frozenset(core) | self.extra


ORDERLY = Dialect(
    "order_type",
    "order_price",
    "order_quantity",
    "order_amount",
    "client_order_id",
    "reduce_only",
    "order_tag",
    "visible_quantity",
    "string",
    frozenset({"slippage", "level", "post_only_adjust", "margin_mode"}),
)
# WOO X v1 names its fields as Orderly does; only its client ids and its extra fields differ.
WOOX_V1 = replace(ORDERLY, client_ids="integer", extra=frozenset({"margin_mode", "position_side"}))
WOOX_V3 = Dialect(
    "type",
    "price",
    "quantity",
    "amount",
    "clientOrderId",
    "reduceOnly",
    "orderTag",
    "visibleQuantity",
    "integer",
    frozenset({"marginMode", "positionSide", "bidAskLevel"}),
)


def client_order_id(value: Any, kind: Literal["string", "integer"]) -> str | None:
    """Normalized client id (None when absent, or 0 on WOO X); -1005 when malformed."""
    if value is None or value == "":
        return None
    text = str(value)
    if kind == "string":
        if len(text) > 36 or text.startswith("-"):
            raise SimError(-1005, "client_order_id must be at most 36 characters and not start with '-'")
        return text
    if not text.isdigit() or int(text) > _MAX_WOO_CLIENT_ID:
        raise SimError(-1005, "client_order_id must be an integer between 0 and 9223372036854775807")
    return None if int(text) == 0 else str(int(text))


def order_request(params: Mapping[str, Any], dialect: Dialect) -> OrderRequest:
    """Validate like the exchange: -1004 for an unknown parameter, -1005 for a malformed one."""
    p.check_known(params, dialect.allowed)
    symbol = p.text(params, "symbol", required=True) or ""
    side = p.choice(params, "side", ("BUY", "SELL"))
    order_type = p.choice(params, dialect.order_type, ORDER_TYPES)
    price = p.decimal(params, dialect.price)
    quantity = p.decimal(params, dialect.quantity)
    amount = p.decimal(params, dialect.amount)
    if order_type in _PRICED and price is None:
        raise SimError(-1005, f"{dialect.price} must be a positive number")
    if quantity is not None and amount is not None:
        raise SimError(-1005, f"{dialect.quantity} and {dialect.amount} can not be sent together")
    if amount is not None and order_type not in _QUOTE_SIZED:
        raise SimError(-1005, f"{dialect.amount} is only for MARKET, ASK and BID orders")
    if quantity is None and amount is None:
        raise SimError(-1005, f"{dialect.quantity} must be a positive number")
    return OrderRequest(
        symbol=symbol,
        side=side,
        order_type=order_type,
        quantity=quantity,
        price=price,
        amount=amount,
        client_order_id=client_order_id(params.get(dialect.client_order_id), dialect.client_ids),
        reduce_only=p.boolean(params, dialect.reduce_only),
        order_tag=p.text(params, dialect.order_tag) or "default",
        visible_quantity=_visible(params.get(dialect.visible_quantity), dialect.visible_quantity),
    )


def _visible(value: Any, name: str) -> Decimal | None:
    # 0 is meaningful here (a hidden order), unlike price and quantity.
    if value is None or value == "":
        return None
    try:
        visible = Decimal(str(value))
    except InvalidOperation:
        raise SimError(-1005, f"{name} must be a number") from None
    if not visible.is_finite() or visible < 0:
        raise SimError(-1005, f"{name} must not be negative")
    return visible
