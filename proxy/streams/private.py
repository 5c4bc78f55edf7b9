"""Private streams, one to one: each bot's connection gets its own upstream connection.

Guarantees:
- the upstream URL is the private stream host plus the bot's own path and query, as received (Orderly
  takes its auth in the query); the bot's auth message and every frame after it pass untouched both ways
  — text as the same bytes, binary, and the WebSocket pings and pongs of either end — and Seawall never
  signs, reads or logs them;
- the bot's handshake is answered only once the exchange's is: if the exchange refuses, the bot gets the
  same HTTP status with an error payload in the exchange's format (429: -1003); if it cannot be reached,
  -1011; if the connect rate has no turn for it within `connects.max_wait`, a local 429 -1003 with
  Retry-After, and nothing was sent;
- at most `max_private_per_id` streams per path id (the account or application id the exchange caps
  connections by) are open or opening: one more is refused with 429 -1003 before anything is sent;
- when either end closes, the other is closed with the same code and reason, after the frames the
  exchange sent before closing (an end without a sendable code closes the bot with 1012, "reconnect");
  frames to a bot go through its bounded buffer (bots.py), so a bot that stops reading is cut off rather
  than holding the exchange's connection back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import Any

from aiohttp import WSMsgType, web

from proxy.catalog import ErrorCatalog
from proxy.config import StreamsConfig
from proxy.errors import Congested, SeawallError, UpstreamUnreached, local_answer
from proxy.logs import log
from proxy.metrics import Metrics
from proxy.streams import wire
from proxy.streams.admission import ConnectThrottled
from proxy.streams.bots import BotSocket, bot_websocket
from proxy.streams.dial import Dialer, HandshakeFailed, HandshakeRefused, Upstream


class TooManyStreams(SeawallError):
    """A bot's private stream over the per-id cap: refused before anything is sent."""

    code = -1003
    policy = "stream-cap"
    outcome = "throttled"


class StreamRefused(SeawallError):
    """The exchange refused the stream's handshake; the bot gets the same status."""

    policy = "upstream-refused"
    outcome = "upstream_error"


def refusal(error: SeawallError, catalog: ErrorCatalog, status: int | None = None) -> web.Response:
    """A handshake answered with the exchange's error payload (`status` overrides the table's)."""
    answer = local_answer(error, catalog)
    return web.Response(status=status or answer.status, body=answer.body, headers=answer.headers)


TICKET_GRACE = 5.0


class Ticket:
    """A place under the per-id cap, held from the listener's decision until the stream ends."""

    def __init__(self, bridge: PrivateBridge, stream_id: str, expires_in: float) -> None:
        self._bridge: PrivateBridge | None = bridge
        self.stream_id = stream_id
        self._expiry: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            expires_in, self.release
        )

    def taken(self) -> None:
        """The stream's handler runs: it releases the place itself."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def release(self) -> None:
        """Free the place (once)."""
        self.taken()
        bridge, self._bridge = self._bridge, None
        if bridge is not None:
            bridge._release(self.stream_id)


class PrivateBridge:
    def __init__(
        self, config: StreamsConfig, base_url: str, dialer: Dialer, metrics: Metrics, catalog: ErrorCatalog
    ) -> None:
        self._config = config
        self._base_url = base_url
        self._dialer = dialer
        self._metrics = metrics
        self._catalog = catalog
        self.open_by_id: Counter[str] = Counter()
        self._sockets: set[BotSocket] = set()
        self._no_bots = asyncio.Event()
        self._open = metrics.ws_connections.labels("bot", "private")

    # -- the cap, decided before the handshake is taken over --------------------------------------
    def reserve(self, stream_id: str) -> Ticket | SeawallError:
        """A place for a stream of `stream_id`, or why there is none."""
        cap = self._config.max_private_per_id
        if self.open_by_id[stream_id] >= cap:
            return TooManyStreams(f"{cap} private streams open for this id (streams.max_private_per_id)")
        self.open_by_id[stream_id] += 1
        # Released by the stream when it ends; if its handler never runs (the connection died between
        # the listener and aiohttp), by the expiry.
        return Ticket(self, stream_id, self._config.handshake_timeout + TICKET_GRACE)

    def _release(self, stream_id: str) -> None:
        self.open_by_id[stream_id] -= 1
        if self.open_by_id[stream_id] <= 0:
            del self.open_by_id[stream_id]

    def status(self) -> dict[str, Any]:
        return {"bots": len(self._sockets), "ids": len(self.open_by_id)}

    async def stop(self, timeout: float) -> None:  # noqa: ASYNC109 - a drain budget, not a call timeout
        for socket in list(self._sockets):
            socket.end(wire.CLOSE_GOING_AWAY, "seawall shutting down", "shutdown")
        if self._sockets:
            self._no_bots.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._no_bots.wait()

    # -- a bot's stream ----------------------------------------------------------------------------
    async def serve(self, request: web.BaseRequest, ticket: Ticket) -> web.StreamResponse:
        """The stream `ticket` holds a place for, from the handshake to the end (then the place is free)."""
        ticket.taken()
        try:
            return await self._serve(request)
        finally:
            ticket.release()

    async def _serve(self, request: web.BaseRequest) -> web.StreamResponse:
        config = self._config
        url = self._base_url + request.raw_path  # path and query as the bot sent them
        try:
            upstream = await self._dialer.dial(
                url, "private", max_wait=config.connects.max_wait, heartbeat=False
            )
        except ConnectThrottled as throttled:
            busy = Congested("the stream connect rate has no turn in time", retry_after=throttled.wait)
            return refusal(busy, self._catalog)
        except HandshakeRefused as refused:
            code = -1003 if refused.status == 429 else -1000
            error = StreamRefused(f"the exchange refused the stream (HTTP {refused.status})", code=code)
            return refusal(error, self._catalog, refused.status)
        except HandshakeFailed:
            return refusal(UpstreamUnreached("the exchange's stream cannot be reached"), self._catalog)
        ws = bot_websocket(config.max_message_bytes, autoping=False)
        try:
            await ws.prepare(request)
        except ConnectionError:  # the bot left while the exchange was dialled: nothing to serve
            await upstream.close()
            self._dialer.closed("private")
            return web.Response()
        except BaseException:
            await upstream.close()
            self._dialer.closed("private")
            raise
        socket = BotSocket(request, ws, "private", config.bot_buffer_bytes, self._metrics)
        self._sockets.add(socket)
        self._open.inc()
        down = asyncio.get_running_loop().create_task(self._downstream(upstream, socket))
        reason = "bot_closed"
        try:
            reason = await self._upstream(ws, upstream, socket)
        finally:
            down.cancel()  # first: the exchange's side must not read our own close as its loss
            await asyncio.gather(down, return_exceptions=True)
            if not upstream.closed:
                with contextlib.suppress(Exception):
                    await upstream.close(code=wire.sendable_close(ws.close_code, wire.CLOSE_NORMAL))
            self._dialer.closed("private")
            await socket.finish()
            self._sockets.discard(socket)
            if not self._sockets:
                self._no_bots.set()
            self._open.dec()
            self._metrics.ws_disconnects.labels(socket.ended or reason).inc()
        return ws

    async def _upstream(self, ws: web.WebSocketResponse[bool], upstream: Upstream, socket: BotSocket) -> str:
        """Bot -> exchange, until the bot's side ends (or is closed because the exchange's did); the
        disconnect reason if the bot ended it."""
        received = self._metrics.ws_messages.labels("from_bot", "private")
        sent = self._metrics.ws_messages.labels("to_upstream", "private")
        async for message in ws:
            received.inc()
            if message.type == WSMsgType.ERROR:
                return "error"
            if message.type in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.PING, WSMsgType.PONG):
                try:
                    await upstream.send_frame(message.data, message.type)
                except ConnectionError:
                    self._exchange_ended(upstream, socket, "")
                    break
                sent.inc()
        return "bot_closed"

    async def _downstream(self, upstream: Upstream, socket: BotSocket) -> None:
        """Exchange -> bot, until the exchange's side ends; then the bot is closed with its code."""
        received = self._metrics.ws_messages.labels("from_upstream", "private")
        while True:
            message = await upstream.receive()
            if message.type in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.PING, WSMsgType.PONG):
                received.inc()
                socket.send(message.data, message.type)
            elif message.type == WSMsgType.CLOSE:  # the exchange's reason goes to the bot too
                self._exchange_ended(upstream, socket, message.extra or "")
                return
            else:  # closed, closing, an error: no close frame to pass on
                self._exchange_ended(upstream, socket, "")
                return

    def _exchange_ended(self, upstream: Upstream, socket: BotSocket, reason: str) -> None:
        """The exchange's side ended without Seawall closing it: close the bot with its code."""
        if socket.ended:
            return
        self._metrics.ws_disconnects.labels("upstream_lost").inc()
        code = wire.sendable_close(upstream.close_code, wire.CLOSE_UPSTREAM_LOST)
        log.info("private stream ended by the exchange", extra={"fields": {"close_code": code}})
        socket.end(code, reason or "exchange stream lost", "upstream_closed", flush=True)
