"""The plumbing both simulator streams share: one WebSocket connection's life, pings and writes.

Guarantees, for the public (`/ws/stream/{id}`) and the private (`/v2/ws/private/stream/{id}`) stream:
- at most `max_connections_per_id` open connections per path id; one more is refused with HTTP 429 and
  the exchange's -1003 payload before the upgrade;
- the server pings (`{"event": "ping", "ts"}`) every `ping_interval` and closes a connection that left
  `max_missed_pongs` pings in a row unanswered; a client `{"event": "ping"}` gets `{"event": "pong", "ts"}`;
- everything a connection is sent goes through one bounded queue, in order; a client too slow to take
  `queue_limit` pending messages is closed (`slow_reader`), so one stuck reader cannot hold memory;
- input that is not a JSON object, or a command that fails inside the simulator, costs one error answer
  (`{"id", "event", "success": false, "ts", "errorMsg"}`), never the connection or the simulator.
Subclasses answer the other events (`_event`) and may add periodic pushes (`_every` / `_periodic`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from proxy.simulator.stream_messages import answer

log = logging.getLogger("seawall.simulator")


@dataclass(frozen=True, slots=True)
class StreamSettings:
    ping_interval: float = 10.0
    max_missed_pongs: int = 10
    orderbook_interval: float = 1.0
    update_interval: float = 0.2
    ticker_interval: float = 1.0
    levels: int = 100
    max_connections_per_id: int = 80  # WOO X's documented cap per account [I: Orderly's is not published]
    queue_limit: int = 1000


@dataclass(slots=True)
class SocketCounters:
    connections_total: int = 0
    refused: int = 0
    pushed: Counter[str] = field(default_factory=Counter)
    closed: Counter[str] = field(default_factory=Counter)


class Connection:
    """One client. `topics` maps a subscribed topic to what the stream needs to serve it; `account_id`
    is set once a private connection authenticated."""

    def __init__(self, ws: web.WebSocketResponse, stream_id: str, queue_limit: int) -> None:
        self.ws = ws
        self.stream_id = stream_id
        self.topics: dict[str, Any] = {}
        self.books: dict[str, tuple[int, dict[Decimal, Decimal], dict[Decimal, Decimal]]] = {}
        self.account_id: str | None = None
        # None in the queue means: close once everything before it is written.
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(queue_limit)
        self.missed_pongs = 0
        self.close_reason: str | None = None
        self.closing: asyncio.Task[bool] | None = None


class StreamServer:
    """Every open connection of one stream endpoint."""

    def __init__(self, clock_ms: Callable[[], int], settings: StreamSettings | None) -> None:
        self.settings = settings or StreamSettings()
        self.connections: set[Connection] = set()
        self.sockets = SocketCounters()
        self._clock_ms = clock_ms

    async def handle(self, request: web.Request) -> web.StreamResponse:
        stream_id = request.match_info["stream_id"]
        open_for_id = sum(1 for c in self.connections if c.stream_id == stream_id)
        if open_for_id >= self.settings.max_connections_per_id:
            self.sockets.refused += 1
            payload = {"success": False, "code": -1003, "message": "Too many connections for this id."}
            return web.json_response(payload, status=429)
        # Commands are small; a close the client never acknowledges must not hold a shutdown for long.
        ws = web.WebSocketResponse(timeout=1.0, max_msg_size=64 * 1024)
        connection = Connection(ws, stream_id, self.settings.queue_limit)
        self.connections.add(connection)  # before the handshake's await, so the cap holds under a rush
        try:
            await ws.prepare(request)
        except BaseException:
            self.connections.discard(connection)
            raise
        self.sockets.connections_total += 1
        tasks = [asyncio.create_task(self._write(connection)), asyncio.create_task(self._tick(connection))]
        try:
            self._opened(connection, request)
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    self._command(connection, message.data)
                elif message.type == WSMsgType.BINARY:
                    self.send(connection, answer("error", None, self.now(), error="Send JSON text."))
        finally:
            self.sockets.closed[connection.close_reason or "client"] += 1
            self.connections.discard(connection)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return ws

    async def close_all(self) -> None:
        closing = [c.ws.close(code=1001, message=b"server going away") for c in self.connections]
        await asyncio.gather(*closing, return_exceptions=True)

    def socket_snapshot(self) -> dict[str, Any]:
        return {
            "connections_open": len(self.connections),
            "connections_total": self.sockets.connections_total,
            "connections_refused": self.sockets.refused,
            "connections_by_id": dict(Counter(c.stream_id for c in self.connections)),
            "pushed": dict(self.sockets.pushed),
            "closed": dict(self.sockets.closed),
        }

    def now(self) -> int:
        return self._clock_ms()

    # --- for subclasses ------------------------------------------------------------------------------

    def _opened(self, connection: Connection, request: web.Request) -> None:
        """A connection was upgraded (the private stream authenticates from the URL here)."""

    def _event(self, connection: Connection, event: Any, request_id: Any, message: dict[str, Any]) -> None:
        raise NotImplementedError

    def _every(self) -> dict[str, float]:
        """Periodic push kinds and their intervals, besides the ping."""
        return {}

    def _periodic(self, connection: Connection, kind: str) -> None:
        """One periodic push of `kind` to `connection`."""

    # --- sending -------------------------------------------------------------------------------------

    def send(self, connection: Connection, message: dict[str, Any], kind: str = "answer") -> None:
        if connection.close_reason is not None:
            return
        try:
            connection.queue.put_nowait(message)
        except asyncio.QueueFull:
            connection.close_reason = "slow_reader"
            connection.closing = asyncio.create_task(connection.ws.close(code=1013, message=b"too slow"))
            return
        self.sockets.pushed[kind] += 1

    def send_and_close(self, connection: Connection, message: dict[str, Any], reason: str) -> None:
        """Send a last answer (e.g. a refused auth), then close with `reason`."""
        self.send(connection, message)
        if connection.close_reason is None:
            connection.close_reason = reason
            with contextlib.suppress(asyncio.QueueFull):  # full: already closing as a slow reader
                connection.queue.put_nowait(None)

    # --- internals -----------------------------------------------------------------------------------

    def _command(self, connection: Connection, text: str) -> None:
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError:
            message = None
        if not isinstance(message, dict):
            self.send(connection, answer("error", None, self.now(), error="Send a JSON object."))
            return
        event, request_id = message.get("event"), message.get("id")
        try:
            if event == "ping":
                self.send(connection, {"event": "pong", "ts": self.now()})
            elif event == "pong":
                connection.missed_pongs = 0
            else:
                self._event(connection, event, request_id, message)
        except Exception:  # a bug must cost one answer, not the connection
            log.exception("stream command failed")
            self.send(connection, answer("error", request_id, self.now(), error="Internal error."))

    async def _tick(self, connection: Connection) -> None:
        """Pings and the periodic pushes of one connection, each on its own interval."""
        loop = asyncio.get_running_loop()
        every = {"ping": self.settings.ping_interval, **self._every()}
        due = {kind: loop.time() + interval for kind, interval in every.items()}
        while True:
            kind = min(due, key=due.__getitem__)
            await asyncio.sleep(max(0.0, due[kind] - loop.time()))
            due[kind] = loop.time() + every[kind]
            if kind != "ping":
                self._periodic(connection, kind)
            elif connection.missed_pongs >= self.settings.max_missed_pongs:
                connection.close_reason = "missed_pongs"
                await connection.ws.close(code=1000, message=b"missed_pongs")
                return
            else:
                connection.missed_pongs += 1
                self.send(connection, {"event": "ping", "ts": self.now()}, "ping")

    async def _write(self, connection: Connection) -> None:
        with contextlib.suppress(ConnectionError):
            while not connection.ws.closed:
                message = await connection.queue.get()
                if message is None:
                    reason = (connection.close_reason or "").encode()
                    await connection.ws.close(code=1008, message=reason)
                    return
                await connection.ws.send_str(orjson.dumps(message).decode())
