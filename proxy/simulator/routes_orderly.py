"""The Orderly REST surface: paths, limits and answer shapes (docs/exchanges.md, Orderly).

Success answers are ``{"success": true, "data": {...}, "timestamp": <ms>}``. Limits are counted per
Orderly key ("Rate limits are counted per Orderly Key", ORDERLY-DOCS introduction), public ones per IP.
These cover what ccxt `woofipro` calls for markets, currencies, balance and the order life cycle;
market data (order book, trades, klines, futures tickers) comes from routes_market.py.
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
from proxy.simulator.placement import ORDERLY, client_order_id, order_request
from proxy.simulator.routes_market import ORDERLY_RULES as MARKET_RULES
from proxy.simulator.routes_market import orderly_routes as market_routes
from proxy.simulator.routing import Route, RuleUse, SimRequest
from proxy.simulator.signing import now_ms

MAX_BATCH = 10  # "POST /v1/batch-order (≤10 orders; each counts toward the create-order limit)"

RULES = [
    LimitRule("public", 10, 1.0, "ip"),
    LimitRule("public_system_info", 1, 1.0, "ip"),
    LimitRule("order_create", 10, 1.0, "key"),
    LimitRule("order_batch", 1, 1.0, "key"),
    LimitRule("order_cancel", 10, 1.0, "key"),
    LimitRule("orders_cancel_all", 10, 1.0, "key"),
    LimitRule("order_get", 10, 1.0, "key"),
    LimitRule("orders_get", 10, 1.0, "key"),
    LimitRule("holding", 10, 1.0, "key"),
    LimitRule("client_info", 10, 60.0, "key"),
    LimitRule("positions", 30, 10.0, "key"),
    # Not in the published table (an assumption): a generous default so they are limited at all.
    LimitRule("settlement", 10, 1.0, "key"),
    LimitRule("liquidation", 10, 1.0, "key"),
    *MARKET_RULES,
]

_TOKEN_ROW = {
    "token": "USDC",
    "decimals": 6,
    "minimum_withdraw_amount": 0.000001,
    "token_hash": "0xd6aca1be9729c13d677335161321649cccae6a591554772516700f986f942eaa",
    "chain_details": [
        {
            "chain_id": 42161,
            "contract_address": "0xaf88d065e77c8cc2239327c5edb3a432268e5831",
            "cross_chain_withdrawal_fee": 0,
            "decimals": 6,
            "withdraw_fee": 1,
        }
    ],
}
_CHAIN_ROW = {
    "name": "Arbitrum",
    "public_rpc_url": "https://arb1.arbitrum.io/rpc",
    "chain_id": 42161,
    "currency_symbol": "ETH",
    "currency_decimal": 18,
    "explorer_base_url": "https://arbiscan.io",
}


def envelope(data: Any) -> dict[str, Any]:
    return {"success": True, "data": data, "timestamp": now_ms()}


def order_body(order: Order) -> dict[str, Any]:
    """`GET /v1/order/{id}` row; both `executed` and `total_executed_quantity` as clients read either."""
    return {
        "order_id": order.order_id,
        "symbol": order.symbol,
        "side": order.side,
        "type": order.order_type,
        "status": order.status,
        "price": p.number(order.price),
        "quantity": p.number(order.quantity),
        "amount": p.number(order.amount),
        "executed": p.number(order.executed),
        "total_executed_quantity": p.number(order.executed),
        "visible": p.number(order.visible),
        "average_executed_price": p.number(order.average_price),
        "total_fee": 0,
        "fee_asset": order.symbol.split("_")[2],
        "client_order_id": order.client_order_id,
        "reduce_only": order.reduce_only,
        "order_tag": order.order_tag,
        "realized_pnl": 0,
        "created_time": order.created_ms,
        "updated_time": order.updated_ms,
    }


def placed_body(order: Order, error_message: str = "none") -> dict[str, Any]:
    return {
        "order_id": order.order_id,
        "client_order_id": order.client_order_id,
        "order_type": order.order_type,
        "order_price": p.number(order.price),
        "order_quantity": p.number(order.quantity),
        "order_amount": p.number(order.amount),
        "error_message": error_message,
    }


def build_routes(book: Book, ledger: Ledger) -> list[Route]:
    def account(request: SimRequest) -> str:
        assert request.account is not None
        return request.account.account_id

    def public_info(request: SimRequest) -> dict[str, Any]:
        return envelope({"rows": [info.filter_fields() for info in book.symbols.values()]})

    def public_info_symbol(request: SimRequest) -> dict[str, Any]:
        return envelope(book.symbol(request.path_params["symbol"]).filter_fields())

    def place(request: SimRequest) -> dict[str, Any]:
        return envelope(placed_body(book.place(account(request), order_request(request.params, ORDERLY))))

    def batch_place(request: SimRequest) -> dict[str, Any]:
        rows = []
        for item in _batch(request):
            try:
                rows.append(placed_body(book.place(account(request), order_request(item, ORDERLY))))
            except SimError as exc:
                rows.append(
                    {
                        "order_id": None,
                        "client_order_id": item.get("client_order_id"),
                        "error_code": exc.code,
                        "error_message": exc.message or str(exc.code),
                    }
                )
        return envelope({"rows": rows})

    def cancel(request: SimRequest) -> dict[str, Any]:
        p.check_known(request.params, ("order_id", "symbol"))
        symbol = p.text(request.params, "symbol", required=True)
        order_id = p.integer(request.params, "order_id", required=True)
        book.cancel(account(request), symbol=symbol, order_id=order_id)
        return envelope({"status": "CANCEL_SENT"})

    def cancel_by_client_id(request: SimRequest) -> dict[str, Any]:
        p.check_known(request.params, ("client_order_id", "symbol"))
        symbol = p.text(request.params, "symbol", required=True)
        cid = client_order_id(p.text(request.params, "client_order_id", required=True), "string")
        book.cancel(account(request), symbol=symbol, client_order_id=cid)
        return envelope({"status": "CANCEL_SENT"})

    def cancel_all(request: SimRequest) -> dict[str, Any]:
        book.cancel_all(account(request), p.text(request.params, "symbol"))
        return envelope({"status": "CANCEL_ALL_SENT"})

    def get_order(request: SimRequest) -> dict[str, Any]:
        oid = request.path_params["oid"]
        if not oid.isdigit():
            raise SimError(-1005, "order_id must be an integer")
        return envelope(order_body(book.get(account(request), order_id=int(oid))))

    def get_by_client_id(request: SimRequest) -> dict[str, Any]:
        cid = request.path_params["client_order_id"]
        return envelope(order_body(book.get(account(request), client_order_id=cid)))

    def list_orders(request: SimRequest) -> dict[str, Any]:
        rows = book.orders(
            account(request), p.text(request.params, "symbol"), p.text(request.params, "status")
        )
        size = p.integer(request.params, "size") or 25
        page = p.integer(request.params, "page") or 1
        newest = list(reversed(rows))[(page - 1) * size : page * size]
        meta = {"total": len(rows), "records_per_page": size, "current_page": page}
        return envelope({"meta": meta, "rows": [order_body(o) for o in newest]})

    def holding(request: SimRequest) -> dict[str, Any]:
        frozen = book.frozen(account(request))
        rows = [
            {
                "token": token,
                "holding": float(amount),
                "frozen": float(frozen.get(token, Decimal(0))),
                "pending_short": 0,
                "updated_time": now_ms(),
            }
            for token, amount in book.account(account(request)).holdings.items()
        ]
        return envelope({"holding": rows})

    def client_info(request: SimRequest) -> dict[str, Any]:
        return envelope(
            {
                "account_id": account(request),
                "account_mode": "FUTURES",
                "max_leverage": 10,
                "taker_fee_rate": 5,
                "maker_fee_rate": 2,
                "futures_taker_fee_rate": 5,
                "futures_maker_fee_rate": 2,
            }
        )

    def positions(request: SimRequest) -> dict[str, Any]:
        rows = [
            _position(book, s, pos.quantity, pos.average_open_price)
            for s, pos in book.account(account(request)).positions.items()
            if pos.quantity != 0
        ]
        holdings = book.account(account(request)).holdings
        collateral = float(holdings.get("USDC", Decimal(0)))
        return envelope(
            {
                "rows": rows,
                "total_collateral_value": collateral,
                "free_collateral": collateral,
                "margin_ratio": 10,
                "initial_margin_ratio": 0.1,
                "maintenance_margin_ratio": 0.05,
            }
        )

    def position(request: SimRequest) -> dict[str, Any]:
        symbol = book.symbol(request.path_params["symbol"]).symbol
        found = book.account(account(request)).positions.get(symbol)
        if found is None or found.quantity == 0:
            raise SimError(-1000, "The data does not exist")
        return envelope(_position(book, symbol, found.quantity, found.average_open_price))

    def withdraw(request: SimRequest) -> dict[str, Any]:
        message = request.params.get("message")
        source = message if isinstance(message, dict) else request.params
        token = p.text(source, "token", required=True) or ""
        amount = p.decimal(source, "amount", required=True) or Decimal(0)
        ledger.withdraw(account(request), token, amount)
        return envelope({"withdraw_id": now_ms()})

    def settle_pnl(request: SimRequest) -> dict[str, Any]:
        ledger.settle_pnl(account(request))
        return envelope({"settle_pnl_id": now_ms()})

    def liquidation(request: SimRequest) -> dict[str, Any]:
        p.check_known(request.params, ("liquidation_id", "ratio_qty_request", "extra_liquidation_ratio"))
        claimed = ledger.claim_liquidation(
            account(request),
            p.integer(request.params, "liquidation_id", required=True) or 0,
            p.ratio(request.params, "ratio_qty_request", "1"),
            p.ratio(request.params, "extra_liquidation_ratio", "0"),
        )
        return envelope({"liquidation_id": claimed.liquidation_id, "symbol": claimed.symbol})

    def static(data: dict[str, Any]) -> Any:
        return lambda request: envelope(data)

    public = (RuleUse("public"),)
    return [
        Route("GET", "/v1/public/info", "public.info", public_info, False, public),
        Route("GET", "/v1/public/info/{symbol}", "public.info", public_info_symbol, False, public),
        Route("GET", "/v1/public/token", "public.token", static({"rows": [_TOKEN_ROW]}), False, public),
        Route(
            "GET", "/v1/public/chain_info", "public.chain_info", static({"rows": [_CHAIN_ROW]}), False, public
        ),
        Route(
            "GET",
            "/v1/public/system_info",
            "public.system_info",
            static({"status": 0, "msg": "System is functioning properly."}),
            False,
            (RuleUse("public_system_info"),),
        ),
        Route("POST", "/v1/order", "order.place", place, limits=(RuleUse("order_create"),)),
        Route(
            "POST",
            "/v1/batch-order",
            "order.batch",
            batch_place,
            limits=(RuleUse("order_batch"), RuleUse("order_create", lambda r: max(1, len(_batch(r))))),
        ),
        Route("DELETE", "/v1/order", "order.cancel", cancel, limits=(RuleUse("order_cancel"),)),
        Route(
            "DELETE",
            "/v1/client/order",
            "order.cancel",
            cancel_by_client_id,
            limits=(RuleUse("order_cancel"),),
        ),
        Route("DELETE", "/v1/orders", "order.cancel_all", cancel_all, limits=(RuleUse("orders_cancel_all"),)),
        Route("GET", "/v1/order/{oid}", "order.get", get_order, limits=(RuleUse("order_get"),)),
        Route(
            "GET",
            "/v1/client/order/{client_order_id}",
            "order.get",
            get_by_client_id,
            limits=(RuleUse("order_get"),),
        ),
        Route("GET", "/v1/orders", "orders.list", list_orders, limits=(RuleUse("orders_get"),)),
        Route("GET", "/v1/client/holding", "account.holding", holding, limits=(RuleUse("holding"),)),
        Route("GET", "/v1/client/info", "account.info", client_info, limits=(RuleUse("client_info"),)),
        Route("GET", "/v1/positions", "positions", positions, limits=(RuleUse("positions"),)),
        Route("GET", "/v1/position/{symbol}", "positions", position, limits=(RuleUse("positions"),)),
        Route(
            "POST", "/v1/withdraw_request", "settlement.withdraw", withdraw, limits=(RuleUse("settlement"),)
        ),
        Route("POST", "/v1/settle_pnl", "settlement.settle_pnl", settle_pnl, limits=(RuleUse("settlement"),)),
        Route("POST", "/v1/liquidation", "liquidation.claim", liquidation, limits=(RuleUse("liquidation"),)),
        *market_routes(Market(book)),
    ]


def _batch(request: SimRequest) -> list[dict[str, Any]]:
    orders = request.params.get("orders")
    if not isinstance(orders, list) or not orders or not all(isinstance(o, dict) for o in orders):
        raise SimError(-1005, "orders must be a non-empty list of orders")
    if len(orders) > MAX_BATCH:
        raise SimError(-1005, f"a batch carries at most {MAX_BATCH} orders")
    return orders


def _position(book: Book, symbol: str, quantity: Decimal, average: Decimal) -> dict[str, Any]:
    mid = book.symbols[symbol].mid
    return {
        "symbol": symbol,
        "position_qty": float(quantity),
        "average_open_price": float(average),
        "cost_position": float(quantity * average),
        "mark_price": float(mid),
        "unsettled_pnl": float((mid - average) * quantity),
        "pending_long_qty": 0,
        "pending_short_qty": 0,
        "settle_price": float(average),
        "timestamp": now_ms(),
    }
