"""`Simulator`: an Orderly- or WOO X-shaped exchange on loopback, for tests, the demo and users' bots.

    async with Simulator("orderly") as sim:          # or: await sim.start(); ...; await sim.stop()
        creds = sim.demo_credentials                  # generated when no accounts are given
        ... point a client at sim.base_url ...
        sim.add_fault({"kind": "error", "code": -1011, "routes": ["order.*"], "count": 3})
        sim.snapshot()["max_in_window"]["order_create"]

Everything the control API (`/__sim/...`, control.py) offers is also a method here. The simulator knows
nothing of the proxy: it imports only `proxy.catalog` (the shared error table).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any

from aiohttp import web

from proxy.catalog import ErrorCatalog, default_catalog
from proxy.simulator import routes_orderly, routes_woox
from proxy.simulator.accounts import Account, AccountRegistry, Credentials, generate_account
from proxy.simulator.auth import Authenticator
from proxy.simulator.book import Book, Order
from proxy.simulator.control import PREFIX, handle_control
from proxy.simulator.counters import Counters
from proxy.simulator.errors import SimError
from proxy.simulator.faults import Fault, FaultInjector
from proxy.simulator.ledger import Ledger
from proxy.simulator.limits import SlidingWindowLimiter, apply_overrides
from proxy.simulator.market import Market
from proxy.simulator.pipeline import handle
from proxy.simulator.private_stream import PRIVATE_PATH, PrivateStreamHub
from proxy.simulator.routing import Router
from proxy.simulator.stream import PATH as STREAM_PATH
from proxy.simulator.stream import StreamHub, StreamSettings
from proxy.simulator.symbols import SymbolInfo, default_balances, default_symbols


class Simulator:
    """The exchange. `limits` overrides documented limits by rule name (`{"order_create": 3}` or
    `{"order_create": (3, 0.5)}`); `clock` (monotonic seconds) drives rate windows and fault durations;
    `stream` sets the WebSockets' intervals and caps (stream_socket.py): the public market-data stream
    (stream.py) and the private order stream (private_stream.py)."""

    def __init__(
        self,
        profile: str = "orderly",
        accounts: Iterable[Account] | None = None,
        *,
        limits: Mapping[str, int | tuple[int, float]] | None = None,
        symbols: Mapping[str, SymbolInfo] | None = None,
        balances: Mapping[str, Decimal] | None = None,
        timestamp_window_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        catalog: ErrorCatalog | None = None,
        stream: StreamSettings | None = None,
    ) -> None:
        self.demo_credentials: Credentials | None = None
        if accounts is None:
            demo, self.demo_credentials = generate_account(profile)
            accounts = [demo]
        self.profile = profile
        self.registry = AccountRegistry(profile, accounts)
        self.catalog = catalog or default_catalog()
        module = routes_orderly if profile == "orderly" else routes_woox
        self.book = Book(
            dict(symbols or default_symbols(profile)), dict(balances or default_balances(profile))
        )
        self._initial_mids = {name: info.mid for name, info in self.book.symbols.items()}
        for account_id in self.registry.accounts:
            self.book.open_account(account_id)
        self.ledger = Ledger(self.book)
        self.router = Router(module.build_routes(self.book, self.ledger))
        self.limiter = SlidingWindowLimiter(apply_overrides(module.RULES, limits), clock)
        self.faults = FaultInjector(clock)
        self.auth = Authenticator(self.registry, int(timestamp_window_s * 1000))
        self.counters = Counters()
        self.stream = StreamHub(Market(self.book), profile, stream)
        self.private_stream = PrivateStreamHub(self.book, self.auth, profile, stream)
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None

    # --- lifecycle --------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the simulator is not started")
        return f"http://{self.host}:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on host:port (0 = an ephemeral port, then read `.port` / `.base_url`)."""
        app = web.Application()
        app.router.add_get(STREAM_PATH, self.stream.handle)
        app.router.add_get(PRIVATE_PATH, self.private_stream.handle)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        app.on_shutdown.append(lambda _app: self.stream.close_all())
        app.on_shutdown.append(lambda _app: self.private_stream.close_all())
        self.stopping = asyncio.Event()
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.host = host
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop listening; requests held by a `hang` fault are released (their connections dropped)."""
        self.stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith(PREFIX):
            return await handle_control(self, request)
        return await handle(self, request)

    # --- control (Python API; control.py serves the same over HTTP) -------------------------------

    def add_fault(self, fault: Fault | Mapping[str, Any]) -> str:
        """Install a fault (a `Fault` or its JSON dict); returns its id."""
        return self.faults.add(fault if isinstance(fault, Fault) else Fault.from_dict(fault))

    def remove_fault(self, fault_id: str) -> bool:
        return self.faults.remove(fault_id)

    def clear_faults(self) -> None:
        self.faults.clear()

    def reset(self) -> None:
        """Back to the starting state: orders, balances, mids, liquidations, windows, counters, faults."""
        self.book.reset()
        for name, mid in self._initial_mids.items():
            self.book.symbols[name].mid = mid
        self.ledger.reset()
        self.limiter.reset()
        self.faults.clear()
        self.faults.applied.clear()
        self.counters.reset()
        self.stream.reset()
        self.private_stream.reset()

    def orders(self, account_id: str | None = None) -> list[Order]:
        return [o for o in self.book.all_orders() if account_id is None or o.account_id == account_id]

    def fill_order(
        self,
        *,
        order_id: int | None = None,
        client_order_id: str | None = None,
        account_id: str | None = None,
    ) -> Order:
        """Fill an open order now (by exchange id, or the latest with `client_order_id`), completing it
        so its client id may be reused. -1006 (as SimError) when there is no such open order."""
        order: Order | None = None
        if order_id is not None:
            order = self.book.find(order_id)
        elif client_order_id is not None:
            owners = [account_id] if account_id else list(self.registry.accounts)
            candidates = [
                o
                for o in self.book.all_orders()
                if o.client_order_id == client_order_id and o.account_id in owners
            ]
            order = candidates[-1] if candidates else None
        if order is None:
            raise SimError(-1006, "The order can not be found.")
        return self.book.fill(order)

    def orders_accepted(self, account_id: str, client_order_id: str) -> int:
        """How many orders the exchange accepted with this identity (several once each completed)."""
        return sum(
            1
            for order in self.book.all_orders()
            if order.account_id == account_id and order.client_order_id == client_order_id
        )

    def set_mid(self, symbol: str, price: Decimal | str | float) -> None:
        self.book.symbol(symbol).mid = Decimal(str(price))

    def set_balance(self, account_id: str, token: str, amount: Decimal | str | float) -> None:
        self.book.set_balance(account_id, token, Decimal(str(amount)))

    def snapshot(self) -> dict[str, Any]:
        """Counters as JSON-ready data (what GET /__sim/counters answers)."""
        accepted: dict[tuple[str, str], int] = {}
        for order in self.book.all_orders():
            if order.client_order_id:
                identity = (order.account_id, order.client_order_id)
                accepted[identity] = accepted.get(identity, 0) + 1
        return {
            "answers_by_code": {str(code): n for code, n in sorted(self.counters.answers_by_code.items())},
            "answers_by_status": {
                str(status): n for status, n in sorted(self.counters.answers_by_status.items())
            },
            "requests_by_path": dict(self.counters.requests_by_path),
            "requests_by_route": dict(self.counters.requests_by_route),
            "dropped": dict(self.counters.dropped),
            "faults_applied": dict(self.faults.applied),
            "orders_accepted_total": len(self.book.all_orders()),
            "orders_accepted": [
                {"account_id": account, "client_order_id": cid, "count": n}
                for (account, cid), n in accepted.items()
            ],
            "max_in_window": self.limiter.max_in_window(),
            "max_attempted_in_window": self.limiter.max_attempted_in_window(),
            "rejected_by_rule": self.limiter.rejected(),
            "stream": self.stream.snapshot(),
            "private_stream": self.private_stream.snapshot(),
        }

    def info(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "base_url": self.base_url if self.port else None,
            "accounts": {a.account_id: sorted(a.keys) for a in self.registry.accounts.values()},
            "rules": [
                {"name": r.name, "limit": r.limit, "window": r.window, "scope": r.scope}
                for r in self.limiter.rules.values()
            ],
            "symbols": {
                name: {**info.filter_fields(), "mid": float(info.mid)}
                for name, info in self.book.symbols.items()
            },
            "stream": {"path": "/ws/stream/{id}", **dataclasses.asdict(self.stream.settings)},
            "private_stream": {
                "path": "/v2/ws/private/stream/{id}",
                "topics": list(self.private_stream.topics),
            },
        }

    @staticmethod
    def describe(order: Order) -> dict[str, Any]:
        return {
            "order_id": order.order_id,
            "account_id": order.account_id,
            "symbol": order.symbol,
            "side": order.side,
            "type": order.order_type,
            "status": order.status,
            "price": None if order.price is None else str(order.price),
            "quantity": str(order.quantity),
            "executed": str(order.executed),
            "client_order_id": order.client_order_id,
            "created_ms": order.created_ms,
            "updated_ms": order.updated_ms,
        }
