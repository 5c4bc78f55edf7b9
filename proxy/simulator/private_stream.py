"""The private WebSocket, on the simulator's own port: `/v2/ws/private/stream/{id}`.

`{id}` is the Orderly account id or the WOO X application id (the simulator's WOO X account id). Guarantees:
- nothing but `auth`, `ping` and `pong` is served before a valid `auth`
  (`{"id", "event": "auth", "params": {...}}`, signed as auth.py `verify_stream` says, by a key of the
  account the URL names); a subscribe before it is answered `errorMsg: "Auth is needed."`. Success is
  `{"id", "event": "auth", "success": true, "ts"}`; a refusal is the same with `success: false`,
  `errorMsg: "auth failed"`, and the connection is then closed (Orderly: "disconnected if authentication
  fails"; assumed the same on WOO X). Orderly also takes the auth params in the URL query
  (`?orderly_key=&timestamp=&sign=`): valid ones authenticate at connect, silently;
- topics `executionreport` (Orderly's `params.symbol`, comma separated, narrows it), `balance`,
  `position`, and the algo report topic ccxt subscribes for trigger orders (silent: no algo orders);
- every change of the account's orders (placed, cancelled, filled over REST or the control API) is
  pushed at once, in order, to every authenticated connection of that account subscribed to it: an
  `executionreport` per change, a `balance` after it, a `position` after a fill of a perpetual. Another
  account's connections never hear of it;
- caps, pings, slow readers and bad input as stream_socket.py says. Payloads: private_messages.py.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from proxy.simulator import private_messages as push
from proxy.simulator.auth import Authenticator
from proxy.simulator.book import Book, Order
from proxy.simulator.errors import SimError
from proxy.simulator.stream_messages import answer
from proxy.simulator.stream_socket import Connection, SocketCounters, StreamServer, StreamSettings
from proxy.simulator.tape import Trade

log = logging.getLogger("seawall.simulator")
PRIVATE_PATH = "/v2/ws/private/stream/{stream_id:.+}"
AUTH_NEEDED = "Auth is needed."  # ccxt.pro maps exactly this text to AuthenticationError
AUTH_FAILED = "auth failed"  # Orderly's documented WebSocket error text


@dataclass(slots=True)
class PrivateCounters:
    auth_ok: int = 0
    auth_failures: Counter[str] = field(default_factory=Counter)  # by reason
    subscribes: Counter[str] = field(default_factory=Counter)
    unsubscribes: Counter[str] = field(default_factory=Counter)


class PrivateStreamHub(StreamServer):
    """Every open private stream connection of one simulator, fed by its book's order changes."""

    def __init__(
        self, book: Book, auth: Authenticator, profile: str, settings: StreamSettings | None = None
    ) -> None:
        super().__init__(book.now_ms, settings)
        self.book = book
        self.auth = auth
        self.profile = profile
        self.topics = (push.EXECUTION_REPORT, push.BALANCE, push.POSITION, push.ALGO_REPORTS[profile])
        self.counters = PrivateCounters()
        self._versions: Counter[str] = Counter()  # per account: the `version` of balance/position pushes
        book.order_listeners.append(self._on_order)

    def snapshot(self) -> dict[str, Any]:
        open_topics = Counter(topic for c in self.connections for topic in c.topics)
        return {
            **self.socket_snapshot(),
            "authenticated_open": sum(1 for c in self.connections if c.account_id is not None),
            "auth_ok": self.counters.auth_ok,
            "auth_failures": sum(self.counters.auth_failures.values()),
            "auth_failures_by_reason": dict(self.counters.auth_failures),
            "subscriptions_open": sum(open_topics.values()),
            "subscriptions_by_topic": dict(open_topics),
            "subscribes": dict(self.counters.subscribes),
            "unsubscribes": dict(self.counters.unsubscribes),
        }

    def reset(self) -> None:
        self.counters = PrivateCounters()
        self.sockets = SocketCounters()

    # --- commands ----------------------------------------------------------------------------------

    def _opened(self, connection: Connection, request: web.Request) -> None:
        if self.profile == "orderly" and "orderly_key" in request.query:
            self._auth(connection, None, dict(request.query), answer_success=False)

    def _event(self, connection: Connection, event: Any, request_id: Any, message: dict[str, Any]) -> None:
        if event == "auth":
            params = message.get("params")
            self._auth(connection, request_id, params if isinstance(params, dict) else {})
        elif event in ("subscribe", "unsubscribe"):
            if connection.account_id is None:
                self.send(connection, answer(event, request_id, self.now(), error=AUTH_NEEDED))
            elif event == "subscribe":
                self._subscribe(connection, request_id, message.get("topic"), message.get("params"))
            else:
                topic = message.get("topic")
                if isinstance(topic, str) and topic in connection.topics:
                    del connection.topics[topic]
                    self.counters.unsubscribes[topic] += 1
                self.send(connection, answer("unsubscribe", request_id, self.now(), topic=str(topic)))
        else:
            error = f"Unknown event {str(event)[:40]!r} on the private stream."
            self.send(connection, answer(str(event)[:40], request_id, self.now(), error=error))

    def _auth(
        self, connection: Connection, request_id: Any, params: dict[str, Any], answer_success: bool = True
    ) -> None:
        try:
            account = self.auth.verify_stream(connection.stream_id, params)
        except SimError as refused:
            reason = refused.message or str(refused.code)
            self.counters.auth_failures[reason] += 1
            # The reason goes to the log and the counters only: no key or signature is ever logged.
            log.info("private stream auth refused on %s: %s", connection.stream_id[:12], reason)
            refusal = answer("auth", request_id, self.now(), error=AUTH_FAILED)
            self.send_and_close(connection, refusal, "auth_failed")
            return
        connection.account_id = account.account_id
        self.counters.auth_ok += 1
        if answer_success:
            self.send(connection, answer("auth", request_id, self.now()))

    def _subscribe(self, connection: Connection, request_id: Any, topic: Any, params: Any) -> None:
        if not isinstance(topic, str) or topic not in self.topics:
            error = f"invalid topic {str(topic)[:80]}"
            self.send(connection, answer("subscribe", request_id, self.now(), error=error))
            return
        symbols: frozenset[str] | None = None
        wanted = params.get("symbol") if isinstance(params, dict) else None
        if topic == push.EXECUTION_REPORT and isinstance(wanted, str) and wanted.strip():
            symbols = frozenset(name.strip() for name in wanted.split(",") if name.strip())
            unknown = sorted(symbols - set(self.book.symbols))
            if unknown:
                error = f"invalid symbol {unknown[0][:40]}"
                self.send(connection, answer("subscribe", request_id, self.now(), error=error))
                return
        self.counters.subscribes[topic] += 1
        connection.topics[topic] = symbols
        self.send(connection, answer("subscribe", request_id, self.now()))

    # --- pushes ------------------------------------------------------------------------------------

    def _on_order(self, order: Order, trade: Trade | None) -> None:
        """Called by the book inside the request that changed the order: never raise into it."""
        try:
            self._push_order(order, trade)
        except Exception:
            log.exception("private stream push failed for order %s", order.order_id)

    def _push_order(self, order: Order, trade: Trade | None) -> None:
        listeners = [c for c in self.connections if c.account_id == order.account_id and c.topics]
        if not listeners:
            return
        ts = self.now()
        report = push.execution_report(self.profile, order, trade, ts)
        balance: dict[str, Any] | None = None
        position: dict[str, Any] | None = None
        perp_fill = trade is not None and self.book.symbols[order.symbol].kind == "PERP"
        for connection in listeners:
            if push.EXECUTION_REPORT in connection.topics:
                symbols = connection.topics[push.EXECUTION_REPORT]
                if symbols is None or order.symbol in symbols:
                    self.send(connection, report, push.EXECUTION_REPORT)
            if push.BALANCE in connection.topics:
                balance = balance or push.balance(self.book, order.account_id, self._version(order), ts)
                self.send(connection, balance, push.BALANCE)
            if perp_fill and push.POSITION in connection.topics:
                position = position or push.position(
                    self.profile, self.book, order.account_id, order.symbol, self._version(order), ts
                )
                self.send(connection, position, push.POSITION)

    def _version(self, order: Order) -> int:
        self._versions[order.account_id] += 1
        return self._versions[order.account_id]
