"""The WOO X REST surface, v1 (flat answers, seconds-string timestamps) and v3 ({success, data, timestamp}).

Limits (docs/exchanges.md): public per IP; private per account — every key of an account shares
them; order placement also per symbol (v1 10/s, v3 5/s); the v1 cancels by id and by client id share
one 10/s bucket. Paths cover ccxt `woo` (v3 trading, v1 token lists) and hummingbot (v1 trading);
market data in both versions comes from routes_market.py.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from proxy.simulator import params as p
from proxy.simulator.book import Book, Order
from proxy.simulator.errors import SimError
from proxy.simulator.ledger import Ledger
from proxy.simulator.limits import LimitRule
from proxy.simulator.market import Market
from proxy.simulator.placement import WOOX_V1, client_order_id, order_request
from proxy.simulator.routes_market import woox_v1_routes, woox_v3_routes
from proxy.simulator.routes_woox_v3 import v3_routes
from proxy.simulator.routing import Route, RuleUse, SimRequest
from proxy.simulator.signing import now_ms

RULES = [
    LimitRule("public", 10, 1.0, "ip"),
    LimitRule("v1_order_create", 10, 1.0, "account_symbol"),
    LimitRule("v3_order_create", 5, 1.0, "account_symbol"),
    LimitRule("v1_order_cancel", 10, 1.0, "account"),
    LimitRule("v3_order_cancel", 10, 1.0, "account"),
    LimitRule("v1_orders_cancel_all", 10, 1.0, "account"),
    LimitRule("v3_orders_cancel_all", 10, 1.0, "account"),
    LimitRule("v1_order_get", 10, 1.0, "account"),
    LimitRule("v3_order_get", 5, 1.0, "account"),
    LimitRule("v1_orders_get", 10, 1.0, "account"),
    LimitRule("v3_orders_get", 10, 1.0, "account"),
    LimitRule("holding", 10, 1.0, "account"),
    LimitRule("v3_balances", 10, 1.0, "account"),
    LimitRule("positions", 30, 10.0, "account"),
    LimitRule("client_info", 10, 60.0, "account"),
    LimitRule("withdraw", 10, 1.0, "account"),  # not published: an assumption
]

_TOKENS = {"BTC": ("Bitcoin", "BTC", 8), "ETH": ("Ethereum", "ETH", 18), "USDT": ("Tether", "ETH", 6)}


def seconds(ms: int) -> str:
    """v1 times are seconds with decimals, as strings: "1639980423.855"."""
    return f"{ms / 1000:.3f}"


def woo_client_id(order: Order) -> int:
    return int(order.client_order_id) if order.client_order_id else 0


def v1_order(order: Order) -> dict[str, Any]:
    return {
        "symbol": order.symbol,
        "status": order.status,
        "side": order.side,
        "created_time": seconds(order.created_ms),
        "updated_time": seconds(order.updated_ms),
        "order_id": order.order_id,
        "order_tag": order.order_tag,
        "price": p.number(order.price),
        "type": order.order_type,
        "quantity": p.number(order.quantity),
        "amount": p.number(order.amount),
        "visible": p.number(order.visible),
        "executed": p.number(order.executed),
        "total_fee": 0,
        "fee_asset": order.symbol.split("_")[1],
        "client_order_id": woo_client_id(order),
        "reduce_only": order.reduce_only,
        "average_executed_price": p.number(order.average_price),
        "realized_pnl": None,
        "position_side": "BOTH",
    }


def build_routes(book: Book, ledger: Ledger) -> list[Route]:
    def account(request: SimRequest) -> str:
        assert request.account is not None
        return request.account.account_id

    def ok(**fields: Any) -> dict[str, Any]:
        return {"success": True, **fields}

    def info(request: SimRequest) -> dict[str, Any]:
        return ok(rows=[row.filter_fields() for row in book.symbols.values()])

    def info_symbol(request: SimRequest) -> dict[str, Any]:
        return ok(info=book.symbol(request.path_params["symbol"]).filter_fields())

    def tokens(request: SimRequest) -> dict[str, Any]:
        rows = [
            {
                "token": t,
                "fullname": name,
                "network": net,
                "decimals": str(dec),
                "delisted": False,
                "balance_token": t,
                "created_time": "1710123395",
                "updated_time": "1746528601",
                "can_collateral": True,
                "can_short": True,
            }
            for t, (name, net, dec) in _TOKENS.items()
        ]
        return ok(rows=rows)

    def token_networks(request: SimRequest) -> dict[str, Any]:
        rows = [
            {
                "protocol": net,
                "network": net,
                "token": t,
                "name": name,
                "minimum_withdrawal": "0.001",
                "withdrawal_fee": "0.0005",
                "allow_deposit": "1",
                "allow_withdraw": "1",
            }
            for t, (name, net, _dec) in _TOKENS.items()
        ]
        return ok(rows=rows)

    def system_info(request: SimRequest) -> dict[str, Any]:
        return ok(data={"status": 0, "msg": "System is functioning properly."}, timestamp=now_ms())

    def place(request: SimRequest) -> dict[str, Any]:
        order = book.place(account(request), order_request(request.params, WOOX_V1))
        return ok(
            order_id=order.order_id,
            client_order_id=woo_client_id(order),
            order_type=order.order_type,
            order_price=p.number(order.price),
            order_quantity=p.number(order.quantity),
            order_amount=p.number(order.amount),
            reduce_only=order.reduce_only,
            timestamp=seconds(order.created_ms),
        )

    def cancel(request: SimRequest) -> dict[str, Any]:
        p.check_known(request.params, ("order_id", "symbol"))
        symbol = p.text(request.params, "symbol", required=True)
        book.cancel(
            account(request), symbol=symbol, order_id=p.integer(request.params, "order_id", required=True)
        )
        return ok(status="CANCEL_SENT")

    def cancel_by_client_id(request: SimRequest) -> dict[str, Any]:
        p.check_known(request.params, ("client_order_id", "symbol"))
        symbol = p.text(request.params, "symbol", required=True)
        cid = client_order_id(p.text(request.params, "client_order_id", required=True), "integer")
        book.cancel(account(request), symbol=symbol, client_order_id=cid)
        return ok(status="CANCEL_SENT")

    def cancel_all(request: SimRequest) -> dict[str, Any]:
        book.cancel_all(account(request), p.text(request.params, "symbol", required=True))
        return ok(status="CANCEL_ALL_SENT")

    def get_order(request: SimRequest) -> dict[str, Any]:
        oid = request.path_params["oid"]
        if not oid.isdigit():
            raise SimError(-1005, "order_id must be an integer")
        return ok(**v1_order(book.get(account(request), order_id=int(oid))))

    def get_by_client_id(request: SimRequest) -> dict[str, Any]:
        cid = client_order_id(request.path_params["client_order_id"], "integer")
        return ok(**v1_order(book.get(account(request), client_order_id=cid)))

    def list_orders(request: SimRequest) -> dict[str, Any]:
        rows = book.orders(
            account(request), p.text(request.params, "symbol"), p.text(request.params, "status")
        )
        size = min(p.integer(request.params, "size") or 100, 500)
        page = p.integer(request.params, "page") or 1
        newest = list(reversed(rows))[(page - 1) * size : page * size]
        meta = {"total": len(rows), "records_per_page": size, "current_page": page}
        return ok(meta=meta, rows=[v1_order(o) for o in newest])

    def holding_v1(request: SimRequest) -> dict[str, Any]:
        holdings = book.account(account(request)).holdings
        return ok(holding={token: float(amount) for token, amount in holdings.items()})

    def holding_v2(request: SimRequest) -> dict[str, Any]:
        frozen = book.frozen(account(request))
        rows = [
            {
                "token": token,
                "holding": float(amount),
                "frozen": float(frozen.get(token, Decimal(0))),
                "interest": 0,
                "outstanding_holding": 0,
                "pending_exposure": 0,
                "opening_cost": 0,
                "holding_cost": 0,
                "realised_pnl": 0,
                "settled_pnl": 0,
                "fee_24_h": 0,
                "settled_pnl_24_h": 0,
                "updated_time": seconds(now_ms()),
            }
            for token, amount in book.account(account(request)).holdings.items()
        ]
        return ok(holding=rows)

    def client_info(request: SimRequest) -> dict[str, Any]:
        return ok(
            application={
                "application_id": account(request),
                "account": account(request),
                "account_mode": "MARGIN",
                "leverage": 10,
                "taker_fee_rate": 5,
                "maker_fee_rate": 2,
                "futures_leverage": 10,
            }
        )

    def position(request: SimRequest) -> dict[str, Any]:
        symbol = book.symbol(request.path_params["symbol"]).symbol
        found = book.account(account(request)).positions.get(symbol)
        if found is None or found.quantity == 0:
            raise SimError(-1000, "The data does not exist")
        return ok(
            symbol=symbol,
            holding=float(found.quantity),
            pending_long_qty=0,
            pending_short_qty=0,
            settle_price=float(found.average_open_price),
            average_open_price=float(found.average_open_price),
            mark_price=float(book.symbols[symbol].mid),
            timestamp=seconds(now_ms()),
        )

    def withdraw(request: SimRequest) -> dict[str, Any]:
        token = p.text(request.params, "token", required=True) or ""
        ledger.withdraw(
            account(request), token, p.decimal(request.params, "amount", required=True) or Decimal(0)
        )
        return ok(withdraw_id=str(now_ms()))

    public = (RuleUse("public"),)
    v1 = [
        Route("GET", "/v1/public/info", "public.info", info, False, public),
        Route("GET", "/v1/public/info/{symbol}", "public.info", info_symbol, False, public),
        Route("GET", "/v1/public/token", "public.token", tokens, False, public),
        Route("GET", "/v1/public/token_network", "public.token", token_networks, False, public),
        Route("GET", "/v1/public/system_info", "public.system_info", system_info, False, public),
        Route("POST", "/v1/order", "order.place", place, limits=(RuleUse("v1_order_create"),)),
        Route("DELETE", "/v1/order", "order.cancel", cancel, limits=(RuleUse("v1_order_cancel"),)),
        Route(
            "DELETE",
            "/v1/client/order",
            "order.cancel",
            cancel_by_client_id,
            limits=(RuleUse("v1_order_cancel"),),
        ),
        Route(
            "DELETE", "/v1/orders", "order.cancel_all", cancel_all, limits=(RuleUse("v1_orders_cancel_all"),)
        ),
        Route("GET", "/v1/order/{oid}", "order.get", get_order, limits=(RuleUse("v1_order_get"),)),
        Route(
            "GET",
            "/v1/client/order/{client_order_id}",
            "order.get",
            get_by_client_id,
            limits=(RuleUse("v1_order_get"),),
        ),
        Route("GET", "/v1/orders", "orders.list", list_orders, limits=(RuleUse("v1_orders_get"),)),
        Route("GET", "/v1/client/holding", "account.holding", holding_v1, limits=(RuleUse("holding"),)),
        Route("GET", "/v2/client/holding", "account.holding", holding_v2, limits=(RuleUse("holding"),)),
        Route("GET", "/v1/client/info", "account.info", client_info, limits=(RuleUse("client_info"),)),
        Route("GET", "/v1/position/{symbol}", "positions", position, limits=(RuleUse("positions"),)),
        Route("POST", "/v1/asset/withdraw", "settlement.withdraw", withdraw, limits=(RuleUse("withdraw"),)),
    ]
    market = Market(book)
    return v1 + v3_routes(book, account) + woox_v1_routes(market) + woox_v3_routes(market)
