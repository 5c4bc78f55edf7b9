"""The control API under ``/__sim/`` on the exchange's own port (JSON in, JSON out).

| method | path | body / query | answer |
|---|---|---|---|
| GET | /__sim/info | | profile, accounts, rules, symbols |
| GET | /__sim/counters | | `Simulator.snapshot()` |
| GET/POST/DELETE | /__sim/faults | POST: a fault (see faults.py) | list / `{"id"}` / cleared |
| DELETE | /__sim/faults/{id} | | removed |
| POST | /__sim/reset | | orders, balances, windows, counters, faults back to start |
| GET | /__sim/orders | `?account_id=` | orders |
| POST | /__sim/orders/fill | `{"order_id"}` or `{"client_order_id", "account_id"?}` | the filled order |
| POST | /__sim/mid | `{"symbol", "price"}` | |
| POST | /__sim/balances | `{"account_id", "token", "amount"}` | |

Control requests are never counted, limited or faulted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from typing import Any, Protocol

import orjson
from aiohttp import web

from proxy.simulator.book import Order
from proxy.simulator.errors import SimError
from proxy.simulator.faults import Fault, FaultInjector


class ControlledSimulator(Protocol):
    """What the control API drives (proxy/simulator/server.py implements it).

    Declared here, so this module does not import the server that mounts it.
    """

    faults: FaultInjector

    def info(self) -> dict[str, Any]: ...
    def snapshot(self) -> dict[str, Any]: ...
    def add_fault(self, fault: Fault | Mapping[str, Any]) -> str: ...
    def remove_fault(self, fault_id: str) -> bool: ...
    def clear_faults(self) -> None: ...
    def reset(self) -> None: ...
    def orders(self, account_id: str | None = None) -> list[Order]: ...
    def fill_order(
        self,
        *,
        order_id: int | None = None,
        client_order_id: str | None = None,
        account_id: str | None = None,
    ) -> Order: ...
    def set_mid(self, symbol: str, price: Decimal | str | float) -> None: ...
    def set_balance(self, account_id: str, token: str, amount: Decimal | str | float) -> None: ...
    @staticmethod
    def describe(order: Order) -> dict[str, Any]: ...


PREFIX = "/__sim/"


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def handle_control(sim: ControlledSimulator, request: web.Request) -> web.Response:
    """Dispatch one control request; 400 with `{"ok": false, "error"}` on bad input."""
    action = request.path.removeprefix(PREFIX).rstrip("/")
    try:
        body: dict[str, Any] = {}
        if request.can_read_body:
            raw = await request.read()
            body = orjson.loads(raw) if raw.strip() else {}
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
        handler = _ROUTES.get((request.method, action))
        if handler is None and action.startswith("faults/") and request.method == "DELETE":
            removed = sim.remove_fault(action.removeprefix("faults/"))
            return _json({"ok": removed}, 200 if removed else 404)
        if handler is None:
            return _json({"ok": False, "error": f"no control endpoint {request.method} {request.path}"}, 404)
        return _json({"ok": True, **await handler(sim, body, request)})
    except SimError as exc:
        return _json({"ok": False, "code": exc.code, "error": exc.message}, 404)
    except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
        return _json({"ok": False, "error": str(exc)}, 400)


async def _info(sim: ControlledSimulator, body: dict[str, Any], request: web.Request) -> dict[str, Any]:
    return sim.info()


async def _counters(sim: ControlledSimulator, body: dict[str, Any], request: web.Request) -> dict[str, Any]:
    return sim.snapshot()


async def _list_faults(
    sim: ControlledSimulator, body: dict[str, Any], request: web.Request
) -> dict[str, Any]:
    return {"faults": [fault.to_dict() for fault in sim.faults.active()]}


async def _add_fault(sim: ControlledSimulator, body: dict[str, Any], request: web.Request) -> dict[str, Any]:
    return {"id": sim.add_fault(body)}


async def _clear_faults(
    sim: ControlledSimulator, body: dict[str, Any], request: web.Request
) -> dict[str, Any]:
    sim.clear_faults()
    return {}


async def _reset(sim: ControlledSimulator, body: dict[str, Any], request: web.Request) -> dict[str, Any]:
    sim.reset()
    return {}


async def _orders(sim: ControlledSimulator, body: dict[str, Any], request: web.Request) -> dict[str, Any]:
    return {"orders": [sim.describe(order) for order in sim.orders(request.query.get("account_id"))]}


async def _fill(sim: ControlledSimulator, body: dict[str, Any], request: web.Request) -> dict[str, Any]:
    order = sim.fill_order(
        order_id=None if body.get("order_id") is None else int(body["order_id"]),
        client_order_id=None if body.get("client_order_id") is None else str(body["client_order_id"]),
        account_id=body.get("account_id"),
    )
    return {"order": sim.describe(order)}


async def _mid(sim: ControlledSimulator, body: dict[str, Any], request: web.Request) -> dict[str, Any]:
    sim.set_mid(str(body["symbol"]), str(body["price"]))
    return {}


async def _balances(sim: ControlledSimulator, body: dict[str, Any], request: web.Request) -> dict[str, Any]:
    sim.set_balance(str(body["account_id"]), str(body["token"]), str(body["amount"]))
    return {}


Action = Callable[[ControlledSimulator, dict[str, Any], web.Request], Awaitable[dict[str, Any]]]
_ROUTES: dict[tuple[str, str], Action] = {
    ("GET", "info"): _info,
    ("GET", "counters"): _counters,
    ("GET", "faults"): _list_faults,
    ("POST", "faults"): _add_fault,
    ("DELETE", "faults"): _clear_faults,
    ("POST", "reset"): _reset,
    ("GET", "orders"): _orders,
    ("POST", "orders/fill"): _fill,
    ("POST", "mid"): _mid,
    ("POST", "balances"): _balances,
}
