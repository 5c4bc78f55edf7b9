"""One of Seawall's own connections to the exchange's public stream, carrying the topics it is given.

Guarantees:
- while it has topics it stays connected: a connection that ends is re-made after a jittered backoff
  (between half and all of `reconnect_min` doubled per failed attempt, at most `reconnect_max`; the count
  restarts only after a connection that lasted `reconnect_max`, so an exchange that accepts and drops at
  once is not hammered), through the connect rate, and every topic is subscribed again;
- aiohttp's heartbeat pings it every `ping_interval`: a dead connection is noticed even when quiet; the
  exchange's own `{"event": "ping"}` is answered with a pong;
- each answer to one of its requests goes back to whoever asked, by Seawall's own request id;
- without topics for `idle_timeout`, it closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from typing import Any, Protocol

from aiohttp import WSMsgType

from proxy.config import StreamsConfig
from proxy.logs import log
from proxy.metrics import Metrics
from proxy.streams import wire
from proxy.streams.dial import Dialer, HandshakeFailed, HandshakeRefused, Upstream

MAX_PENDING = 10_000  # requests awaiting the exchange's answer; the oldest are forgotten past it


class LinkOwner(Protocol):
    """What a link tells the public hub."""

    def pushed(self, link: UpstreamLink, topic: str, frame: bytes) -> None: ...

    async def subscribed(self, link: UpstreamLink, topic: str, answer: dict[str, Any]) -> None: ...

    def relayed(self, token: int, answer: dict[str, Any]) -> None: ...

    def lost(self, link: UpstreamLink) -> None: ...

    def ended(self, link: UpstreamLink) -> None: ...


class UpstreamLink:
    def __init__(
        self, owner: LinkOwner, url: str, config: StreamsConfig, dialer: Dialer, metrics: Metrics
    ) -> None:
        self._owner = owner
        self.url = url
        self._config = config
        self._dialer = dialer
        self.commands: dict[str, dict[str, Any]] = {}  # topic -> its subscribe command (without an id)
        self._pending: dict[str, tuple[str, Any]] = {}  # our request id -> (purpose, topic or token)
        self._ids = itertools.count(1)
        self._ws: Upstream | None = None
        self.connects = 0
        self.closing = False
        self._idle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._received = metrics.ws_messages.labels("from_upstream", "public")
        self._sent = metrics.ws_messages.labels("to_upstream", "public")
        self._lost = metrics.ws_disconnects.labels("upstream_lost")

    @property
    def topics(self) -> int:
        return len(self.commands)

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._ws.closed

    def ensure_running(self) -> None:
        """Connect (once; the link then keeps itself connected while it has topics)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    # -- what the hub asks -------------------------------------------------------------------------
    async def subscribe(self, topic: str, command: dict[str, Any]) -> None:
        self.commands[topic] = command
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        await self._request(command, ("subscribe", topic))

    async def unsubscribe(self, topic: str, tell_exchange: bool = True) -> None:
        """Drop a topic; tell the exchange unless it never took it."""
        if self.commands.pop(topic, None) is not None and tell_exchange:
            await self._request({"event": "unsubscribe", "topic": topic}, ("unsubscribe", topic))
        if not self.commands and not self.closing and self._idle is None:
            self._idle = asyncio.get_running_loop().call_later(self._config.idle_timeout, self._idle_out)

    async def relay(self, command: dict[str, Any], token: int) -> bool:
        """Send a bot's other command (not subscribe/unsubscribe); its answer goes to `relayed`."""
        return await self._request(command, ("relay", token))

    async def stop(self) -> None:
        self.closing = True
        if self._idle is not None:
            self._idle.cancel()
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # -- the connection --------------------------------------------------------------------------
    async def _request(self, command: dict[str, Any], purpose: tuple[str, Any]) -> bool:
        ws = self._ws
        if ws is None or ws.closed:
            return False  # subscribes are sent again on connect; anything else is answered by timeout
        request_id = f"sw-{next(self._ids)}"
        if len(self._pending) >= MAX_PENDING:
            self._pending.pop(next(iter(self._pending)))
        self._pending[request_id] = purpose
        return await self._send(wire.encode({**command, "id": request_id}))

    async def _send(self, frame: bytes) -> bool:
        ws = self._ws
        if ws is None or ws.closed:
            return False
        try:
            await ws.send_frame(frame, WSMsgType.TEXT)
        except ConnectionError:
            return False
        self._sent.inc()
        return True

    def _idle_out(self) -> None:
        self._idle = None
        if not self.commands and not self.closing:
            self.closing = True
            asyncio.get_running_loop().create_task(self.stop())

    def _backoff(self, attempt: int) -> float:
        config = self._config
        ceiling = min(config.reconnect_max, config.reconnect_min * 2 ** max(0, attempt - 1))
        return random.uniform(ceiling / 2, ceiling)

    async def _run(self) -> None:
        attempt = 0
        try:
            while not self.closing and self.commands:
                try:
                    ws = await self._dialer.dial(self.url, "public", max_wait=None, heartbeat=True)
                except (HandshakeRefused, HandshakeFailed):
                    attempt += 1
                    await asyncio.sleep(self._backoff(attempt))
                    continue
                self.connects += 1
                up_since = time.monotonic()
                await self._serve(ws)
                if self.closing:
                    break
                self._lost.inc()
                log.warning(
                    "public stream connection to the exchange lost; reconnecting",
                    extra={"fields": {"topics": len(self.commands), "close_code": ws.close_code}},
                )
                self._owner.lost(self)
                attempt = 1 if time.monotonic() - up_since >= self._config.reconnect_max else attempt + 1
                if self.commands:
                    await asyncio.sleep(self._backoff(attempt))
        finally:
            self.closing = True
            self._owner.ended(self)

    async def _serve(self, ws: Upstream) -> None:
        self._ws = ws
        self._pending.clear()
        try:
            for command in list(self.commands.values()):
                await self._request(command, ("subscribe", command["topic"]))
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    self._received.inc()
                    try:
                        await self._read(message.data)
                    except Exception:  # a bug costs one frame, never the connection every bot shares
                        log.exception("public stream frame from the exchange failed")
        finally:
            self._ws = None
            self._dialer.closed("public")
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await ws.close()

    async def _read(self, frame: bytes) -> None:
        message = wire.parse(frame)
        if message is None:
            return
        event = message.get("event")
        if event is None:
            topic = message.get("topic")
            if isinstance(topic, str):
                self._owner.pushed(self, topic, frame)
            return
        if event == "ping":
            await self._send(wire.pong())
            return
        purpose = self._pending.pop(str(message.get("id")), None)
        if purpose is None:
            return
        what, about = purpose
        if what == "subscribe":
            await self._owner.subscribed(self, about, message)
        elif what == "relay":
            self._owner.relayed(about, message)
