"""The public market-data WebSocket, on the simulator's own port: `/ws/stream/{id}`.

`{id}` is the Orderly account id or the WOO X application id (any non-empty text; connections are
capped per id). Topics `{symbol}@orderbook` (full book every `orderbook_interval`), `@orderbookupdate`
(changed levels every `update_interval`, chained by `prevTs`; the REST snapshot is the start),
`@ticker` (24 h figures every `ticker_interval`) and `@trade` (each fill as it happens). A new
`@orderbook` or `@ticker` subscription gets its first push at once. Connection caps, pings, slow
readers and bad input are handled as stream_socket.py says.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from proxy.simulator import stream_messages as say
from proxy.simulator.errors import SimError
from proxy.simulator.market import Market
from proxy.simulator.stream_socket import Connection, SocketCounters, StreamServer, StreamSettings
from proxy.simulator.tape import Trade

__all__ = ["PATH", "StreamHub", "StreamSettings"]

log = logging.getLogger("seawall.simulator")
PATH = "/ws/stream/{stream_id:.+}"  # ids with "/" too: generated WOO X demo ids are base64


@dataclass(slots=True)
class StreamCounters:
    subscribes: Counter[str] = field(default_factory=Counter)
    unsubscribes: Counter[str] = field(default_factory=Counter)


class StreamHub(StreamServer):
    """Every open public stream connection of one simulator, fed by its market and its trade tape."""

    def __init__(self, market: Market, profile: str, settings: StreamSettings | None = None) -> None:
        super().__init__(market.book.now_ms, settings)
        self.market = market
        self.profile = profile
        self.counters = StreamCounters()
        market.book.tape.listeners.append(self._on_trade)

    def snapshot(self) -> dict[str, Any]:
        open_topics = Counter(topic for c in self.connections for topic in c.topics)
        return {
            **self.socket_snapshot(),
            "subscriptions_open": sum(open_topics.values()),
            "subscriptions_by_topic": dict(open_topics),
            "subscribes": dict(self.counters.subscribes),
            "unsubscribes": dict(self.counters.unsubscribes),
        }

    def reset(self) -> None:
        self.counters = StreamCounters()
        self.sockets = SocketCounters()

    # --- commands ----------------------------------------------------------------------------------

    def _event(self, connection: Connection, event: Any, request_id: Any, message: dict[str, Any]) -> None:
        topic = message.get("topic")
        if event == "subscribe":
            self._subscribe(connection, request_id, topic)
        elif event == "unsubscribe":
            if isinstance(topic, str) and connection.topics.pop(topic, None) is not None:
                connection.books.pop(topic, None)
                self.counters.unsubscribes[topic] += 1
            self.send(connection, say.answer("unsubscribe", request_id, self.now(), topic=str(topic)))
        else:
            error = f"Unknown event {str(event)[:40]!r} on the public stream."
            self.send(connection, say.answer(str(event)[:40], request_id, self.now(), error=error))

    def _subscribe(self, connection: Connection, request_id: Any, topic: Any) -> None:
        symbol, _, kind = str(topic).partition("@")
        if not isinstance(topic, str) or kind not in say.TOPIC_KINDS:
            self.send(
                connection,
                say.answer("subscribe", request_id, self.now(), error=f"invalid topic {str(topic)[:80]}"),
            )
            return
        try:
            listed = self.market.symbol(symbol).symbol
        except SimError:
            self.send(
                connection,
                say.answer("subscribe", request_id, self.now(), error=f"invalid symbol {symbol[:40]}"),
            )
            return
        self.counters.subscribes[topic] += 1
        connection.topics[topic] = listed
        self.send(connection, say.answer("subscribe", request_id, self.now()))
        if kind in ("orderbook", "ticker"):
            self._push(connection, topic, kind, listed)
        elif kind == "orderbookupdate":
            depth = self.market.depth(listed, self.settings.levels)
            connection.books[topic] = (depth.timestamp_ms, dict(depth.bids), dict(depth.asks))

    # --- pushes ------------------------------------------------------------------------------------

    def _push(self, connection: Connection, topic: str, kind: str, symbol: str) -> None:
        if kind == "orderbook":
            self.send(
                connection,
                say.orderbook(topic, symbol, self.market.depth(symbol, self.settings.levels)),
                kind,
            )
        elif kind == "ticker":
            self.send(connection, say.ticker(topic, self.market.ticker(symbol)), kind)
        elif kind == "orderbookupdate":
            depth = self.market.depth(symbol, self.settings.levels)
            prev_ts, bids, asks = connection.books[topic]
            ts = max(depth.timestamp_ms, prev_ts + 1)  # a strictly growing chain, even within one ms
            now_bids, now_asks = dict(depth.bids), dict(depth.asks)
            update = say.orderbook_update(
                topic, symbol, ts, prev_ts, say.changes(bids, now_bids), say.changes(asks, now_asks)
            )
            connection.books[topic] = (ts, now_bids, now_asks)
            self.send(connection, update, kind)

    def _on_trade(self, trade: Trade) -> None:
        topic = f"{trade.symbol}@trade"
        for connection in list(self.connections):
            if topic in connection.topics:
                self.send(connection, say.trade(topic, trade, self.profile == "woox"), "trade")

    def _every(self) -> dict[str, float]:
        settings = self.settings
        return {
            "orderbook": settings.orderbook_interval,
            "orderbookupdate": settings.update_interval,
            "ticker": settings.ticker_interval,
        }

    def _periodic(self, connection: Connection, kind: str) -> None:
        for topic, symbol in list(connection.topics.items()):
            if topic.endswith("@" + kind):
                try:
                    self._push(connection, topic, kind, symbol)
                except Exception:  # one bad push must not stop the others
                    log.exception("stream push failed on %s", topic)
