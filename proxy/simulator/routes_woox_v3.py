"""WOO X v3 endpoints (developer.woox.io): JSON bodies, camelCase, ``{success, data, timestamp}``.

What ccxt `woo` calls (docs/exchanges.md): `/v3/public/instruments`, `/v3/public/systemInfo`,
`/v3/trade/order` (POST/GET/DELETE), `/v3/trade/orders`, `/v3/trade/allOrders`, `/v3/asset/balances`,
`/v3/futures/positions`, `/v3/account/info`. Order times are seconds strings as in ccxt's recorded answers.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from proxy.simulator import params as p
from proxy.simulator.book import Book, Order
from proxy.simulator.errors import SimError
from proxy.simulator.placement import WOOX_V3, client_order_id, order_request
from proxy.simulator.routing import Route, RuleUse, SimRequest
from proxy.simulator.signing import now_ms


def envelope(data: Any) -> dict[str, Any]:
    return {"success": True, "data": data, "timestamp": now_ms()}


def v3_order(order: Order) -> dict[str, Any]:
    return {
        "orderId": order.order_id,
        "clientOrderId": int(order.client_order_id or 0),
        "symbol": order.symbol,
        "orderTag": order.order_tag,
        "side": order.side,
        "quantity": p.number(order.quantity),
        "amount": p.number(order.amount),
        "type": order.order_type,
        "status": order.status,
        "price": p.number(order.price),
        "executed": p.number(order.executed),
        "visible": p.number(order.visible),
        "averageExecutedPrice": p.number(order.average_price) or 0,
        "totalFee": 0,
        "feeAsset": order.symbol.split("_")[1],
        "totalRebate": 0,
        "rebateAsset": order.symbol.split("_")[2],
        "reduceOnly": order.reduce_only,
        "createdTime": f"{order.created_ms / 1000:.3f}",
        "updatedTime": f"{order.updated_ms / 1000:.3f}",
        "realizedPnl": None,
        "positionSide": "BOTH",
        "bidAskLevel": None,
    }


def v3_routes(book: Book, account: Callable[[SimRequest], str]) -> list[Route]:
    def instruments(request: SimRequest) -> dict[str, Any]:
        rows = [
            {
                "symbol": s.symbol,
                "status": "TRADING",
                "baseAsset": s.base,
                "quoteAsset": s.quote,
                "baseMin": str(s.base_min),
                "baseMax": str(s.base_max),
                "baseTick": str(s.base_tick),
                "quoteMin": str(s.quote_min),
                "quoteMax": str(s.quote_max),
                "quoteTick": str(s.quote_tick),
                "minNotional": str(s.min_notional),
                "priceRange": str(s.price_range),
                "priceScope": str(s.price_scope),
                "isAllowedRpi": False,
            }
            for s in book.symbols.values()
        ]
        return envelope({"rows": rows})

    def system_info(request: SimRequest) -> dict[str, Any]:
        return envelope({"status": 0, "msg": "System is functioning properly."})

    def place(request: SimRequest) -> dict[str, Any]:
        order = book.place(account(request), order_request(request.params, WOOX_V3))
        return envelope(
            {
                "orderId": order.order_id,
                "type": order.order_type,
                "price": p.number(order.price),
                "quantity": p.number(order.quantity),
                "amount": p.number(order.amount),
                "clientOrderId": int(order.client_order_id or 0),
                "bidAskLevel": None,
            }
        )

    def identity(request: SimRequest) -> tuple[int | None, str | None]:
        order_id = p.integer(request.params, "orderId")
        cid = client_order_id(p.text(request.params, "clientOrderId"), "integer")
        if order_id is None and cid is None:
            raise SimError(-1005, "orderId or clientOrderId is required")
        return order_id, cid

    def cancel(request: SimRequest) -> dict[str, Any]:
        p.check_known(request.params, ("symbol", "orderId", "clientOrderId"))
        symbol = p.text(request.params, "symbol", required=True)
        order_id, cid = identity(request)
        book.cancel(account(request), symbol=symbol, order_id=order_id, client_order_id=cid)
        return envelope({"status": "CANCEL_SENT"})

    def cancel_all(request: SimRequest) -> dict[str, Any]:
        book.cancel_all(account(request), p.text(request.params, "symbol"))
        return envelope({"status": "CANCEL_ALL_SENT"})

    def get_order(request: SimRequest) -> dict[str, Any]:
        order_id, cid = identity(request)
        return envelope(v3_order(book.get(account(request), order_id=order_id, client_order_id=cid)))

    def list_orders(request: SimRequest) -> dict[str, Any]:
        rows = book.orders(
            account(request), p.text(request.params, "symbol"), p.text(request.params, "status")
        )
        size = min(p.integer(request.params, "size") or 25, 500)
        page = p.integer(request.params, "page") or 1
        newest = list(reversed(rows))[(page - 1) * size : page * size]
        meta = {"total": len(rows), "recordsPerPage": size, "currentPage": page}
        return envelope({"rows": [v3_order(o) for o in newest], "meta": meta})

    def balances(request: SimRequest) -> dict[str, Any]:
        frozen = book.frozen(account(request))
        rows = []
        for token, amount in book.account(account(request)).holdings.items():
            held = frozen.get(token, Decimal(0))
            rows.append(
                {
                    "token": token,
                    "holding": float(amount),
                    "frozen": float(held),
                    "staked": 0,
                    "unbonding": 0,
                    "vault": 0,
                    "interest": 0,
                    "pendingShortQty": 0,
                    "pendingLongQty": 0,
                    "availableBalance": float(amount - held),
                    "averageOpenPrice": 0,
                    "markPrice": 0,
                    "updatedTime": now_ms() / 1000,
                }
            )
        return envelope({"holding": rows, "userId": account(request)})

    def positions(request: SimRequest) -> dict[str, Any]:
        rows = [
            {
                "symbol": symbol,
                "holding": float(pos.quantity),
                "pendingLongQty": 0,
                "pendingShortQty": 0,
                "settlePrice": float(pos.average_open_price),
                "averageOpenPrice": float(pos.average_open_price),
                "markPrice": float(book.symbols[symbol].mid),
                "pnl24H": 0,
                "fee24H": 0,
                "timestamp": now_ms(),
            }
            for symbol, pos in book.account(account(request)).positions.items()
            if pos.quantity != 0
        ]
        return envelope({"positions": rows})

    def account_info(request: SimRequest) -> dict[str, Any]:
        return envelope(
            {
                "applicationId": account(request),
                "account": account(request),
                "accountMode": "MARGIN",
                "positionMode": "ONE_WAY",
                "leverage": 10,
                "makerFeeRate": 2,
                "takerFeeRate": 5,
            }
        )

    public = (RuleUse("public"),)
    return [
        Route("GET", "/v3/public/instruments", "public.info", instruments, False, public),
        Route("GET", "/v3/public/systemInfo", "public.system_info", system_info, False, public),
        Route("POST", "/v3/trade/order", "order.place", place, limits=(RuleUse("v3_order_create"),)),
        Route("DELETE", "/v3/trade/order", "order.cancel", cancel, limits=(RuleUse("v3_order_cancel"),)),
        Route(
            "DELETE",
            "/v3/trade/orders",
            "order.cancel_all",
            cancel_all,
            limits=(RuleUse("v3_orders_cancel_all"),),
        ),
        Route(
            "DELETE",
            "/v3/trade/allOrders",
            "order.cancel_all",
            cancel_all,
            limits=(RuleUse("v3_orders_cancel_all"),),
        ),
        Route("GET", "/v3/trade/order", "order.get", get_order, limits=(RuleUse("v3_order_get"),)),
        Route("GET", "/v3/trade/orders", "orders.list", list_orders, limits=(RuleUse("v3_orders_get"),)),
        Route("GET", "/v3/asset/balances", "account.holding", balances, limits=(RuleUse("v3_balances"),)),
        Route("GET", "/v3/futures/positions", "positions", positions, limits=(RuleUse("positions"),)),
        Route("GET", "/v3/account/info", "account.info", account_info, limits=(RuleUse("client_info"),)),
    ]
