"""Public topics fanned out: many bots, one upstream subscription per topic, a few upstream connections.

Guarantees, for every bot on the public stream path:
- Seawall answers the bot's commands itself, in the exchange's format and with the bot's own request id:
  a subscribe to a topic already held is answered at once (and, for a snapshot kind — `@orderbook`,
  `@ticker` by default — followed at once by the latest push); a subscribe to a new topic is sent to the
  exchange once, and its answer, success or error, goes to every bot that asked meanwhile (no answer
  within `subscribe_timeout`: a failure answer); an unsubscribe is answered at once; `{"event": "ping"}`
  gets a pong. Other commands are relayed to the exchange and its answer returned to the bot.
- Every push of a topic goes, byte for byte, to every bot subscribed to it, through each bot's bounded
  buffer (bots.py): a slow bot is cut off, never slowing the others.
- When the last bot leaves a topic, Seawall unsubscribes it upstream. Topics are packed onto upstream
  connections of at most `topics_per_connection`; at most `max_topics` are held at once.
- A lost upstream connection is re-made and its topics re-subscribed while the bots stay connected
  (`on_upstream_loss: resubscribe`), or its bots are closed with 1012 so they restart their streams
  (`close`). A topic the exchange refuses on re-subscribe closes its bots the same way.
- Seawall pings every bot every `ping_interval` and closes one it has not heard from for
  `max_missed_pings` intervals.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from proxy.config import StreamsConfig
from proxy.logs import log
from proxy.metrics import Metrics
from proxy.streams import wire
from proxy.streams.bots import BotSocket, bot_websocket
from proxy.streams.dial import Dialer
from proxy.streams.link import UpstreamLink

MAX_RELAYS = 10_000


class PublicBot:
    __slots__ = ("heard", "socket", "stream_id", "topics")

    def __init__(self, socket: BotSocket, stream_id: str) -> None:
        self.socket = socket
        self.stream_id = stream_id
        self.topics: set[str] = set()
        self.heard = time.monotonic()


@dataclass(eq=False)
class Topic:
    name: str
    kind: str  # the metric label
    snapshot: bool
    link: UpstreamLink
    subscribers: set[PublicBot] = field(default_factory=set)
    waiting: list[tuple[PublicBot, Any]] = field(default_factory=list)  # (bot, its request id)
    confirmed: dict[str, Any] | None = None  # the exchange's success answer, once held
    latest: bytes | None = None  # the last push, for a snapshot kind
    timer: asyncio.TimerHandle | None = None


class PublicHub:
    def __init__(
        self, config: StreamsConfig, url_for: Callable[[str], str], dialer: Dialer, metrics: Metrics
    ) -> None:
        self._config = config
        self._url_for = url_for  # a stream id -> the exchange's public stream URL for it
        self._dialer = dialer
        self._metrics = metrics
        self.bots: set[PublicBot] = set()
        self.topics: dict[str, Topic] = {}
        self.links: list[UpstreamLink] = []
        self._relays: dict[int, tuple[PublicBot, Any, float]] = {}
        self._tokens = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pinger: asyncio.Task[None] | None = None
        self._stopping = False
        self._no_bots = asyncio.Event()
        self._from_bot = metrics.ws_messages.labels("from_bot", "public")
        self._open = metrics.ws_connections.labels("bot", "public")

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._pinger = asyncio.get_running_loop().create_task(self._ping_bots())

    async def stop(self, timeout: float) -> None:  # noqa: ASYNC109 - a drain budget, not a call timeout
        """Close every bot (1001) and every upstream connection."""
        self._stopping = True
        if self._pinger is not None:
            self._pinger.cancel()
        for bot in list(self.bots):
            bot.socket.end(wire.CLOSE_GOING_AWAY, "seawall shutting down", "shutdown")
        if self.bots:
            self._no_bots.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._no_bots.wait()
        await asyncio.gather(*(link.stop() for link in list(self.links)), return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def status(self) -> dict[str, Any]:
        return {
            "bots": len(self.bots),
            "upstream_connections": [
                {"connected": link.connected, "topics": link.topics, "connects": link.connects}
                for link in self.links
            ],
            "topics": {
                name: {"bots": len(topic.subscribers), "held": topic.confirmed is not None}
                for name, topic in sorted(self.topics.items())
            },
        }

    # -- a bot's connection ------------------------------------------------------------------------
    async def serve(self, request: web.BaseRequest, stream_id: str) -> web.StreamResponse:
        """A bot's public stream, from the handshake to the end."""
        config = self._config
        ws = bot_websocket(config.max_message_bytes, autoping=True)
        try:
            await ws.prepare(request)
        except ConnectionError:  # the bot left before its handshake was answered
            return web.Response()
        bot = PublicBot(BotSocket(request, ws, "public", config.bot_buffer_bytes, self._metrics), stream_id)
        self.bots.add(bot)
        self._open.inc()
        reason = "bot_closed"
        try:
            async for message in ws:
                bot.heard = time.monotonic()
                self._from_bot.inc()
                if message.type == WSMsgType.TEXT:
                    try:
                        await self._command(bot, message.data)
                    except Exception:  # a bug costs one answer, never the bot's connection
                        log.exception("public stream command failed")
                        bot.socket.send(wire.answer("error", None, error="internal error in seawall"))
                elif message.type == WSMsgType.BINARY:
                    bot.socket.send(wire.answer("error", None, error="Send JSON text."))
                elif message.type == WSMsgType.ERROR:
                    reason = "error"
        finally:
            self.bots.discard(bot)
            if not self.bots:
                self._no_bots.set()
            self._open.dec()
            await self._leave(bot)
            await bot.socket.finish()
            self._metrics.ws_disconnects.labels(bot.socket.ended or reason).inc()
        return ws

    async def _command(self, bot: PublicBot, frame: bytes) -> None:
        message = wire.parse(frame)
        if message is None:
            bot.socket.send(wire.answer("error", None, error="Send a JSON object."))
            return
        event = message.get("event")
        if event == "ping":
            bot.socket.send(wire.pong())
            return
        if event == "pong":
            return
        topic = message.get("topic")
        if event == "subscribe" and isinstance(topic, str) and topic:
            await self._subscribe(bot, message, topic)
        elif event == "unsubscribe" and isinstance(topic, str) and topic:
            await self._unsubscribe(bot, message.get("id"), topic)
        else:
            await self._relay(bot, message)

    async def _subscribe(self, bot: PublicBot, message: dict[str, Any], name: str) -> None:
        request_id = message.get("id")
        topic = self.topics.get(name)
        if topic is not None and topic.confirmed is not None:
            self._join(topic, bot, request_id)
            return
        if topic is not None:
            topic.waiting.append((bot, request_id))  # answered with the exchange's answer
            return
        if len(self.topics) >= self._config.max_topics:
            error = f"too many topics through seawall (streams.max_topics: {self._config.max_topics})"
            bot.socket.send(wire.answer("subscribe", request_id, error=error))
            return
        kind = wire.topic_kind(name)
        snapshot = name.rpartition("@")[2] in self._config.snapshot_kinds
        link = self._link_for(bot.stream_id)
        topic = Topic(name, kind, snapshot, link, waiting=[(bot, request_id)])
        self.topics[name] = topic
        loop = asyncio.get_running_loop()
        topic.timer = loop.call_later(self._config.subscribe_timeout, self._unanswered, topic)
        command = {key: value for key, value in message.items() if key != "id"}
        await link.subscribe(name, command)
        link.ensure_running()

    def _join(self, topic: Topic, bot: PublicBot, request_id: Any) -> None:
        assert topic.confirmed is not None
        topic.subscribers.add(bot)
        bot.topics.add(topic.name)
        bot.socket.send(wire.with_id({**topic.confirmed, "ts": wire.now_ms()}, request_id))
        if topic.snapshot and topic.latest is not None:
            bot.socket.send(topic.latest)

    async def _unsubscribe(self, bot: PublicBot, request_id: Any, name: str) -> None:
        bot.socket.send(wire.answer("unsubscribe", request_id, topic=name))
        bot.topics.discard(name)
        topic = self.topics.get(name)
        if topic is not None:
            topic.subscribers.discard(bot)
            topic.waiting = [(b, i) for b, i in topic.waiting if b is not bot]
            await self._release(topic)

    async def _leave(self, bot: PublicBot) -> None:
        for topic in list(self.topics.values()):
            if bot in topic.subscribers or any(waiting is bot for waiting, _ in topic.waiting):
                topic.subscribers.discard(bot)
                topic.waiting = [(b, i) for b, i in topic.waiting if b is not bot]
                await self._release(topic)
        bot.topics.clear()

    async def _release(self, topic: Topic) -> None:
        """Forget a topic no bot wants any more, and unsubscribe it upstream."""
        if topic.subscribers or topic.waiting or self.topics.get(topic.name) is not topic:
            return
        if topic.confirmed is None and topic.timer is not None:
            return  # its subscribe is in flight: the answer (or the timeout) releases it
        self._forget(topic)
        if not self._stopping:
            await topic.link.unsubscribe(topic.name)

    def _forget(self, topic: Topic) -> None:
        del self.topics[topic.name]
        if topic.timer is not None:
            topic.timer.cancel()
            topic.timer = None
        if topic.confirmed is not None:
            self._metrics.ws_subscriptions.labels(topic.kind).dec()

    def _unanswered(self, topic: Topic) -> None:
        """The exchange did not answer a new topic's subscribe in time."""
        topic.timer = None
        if topic.confirmed is not None:
            return
        waiting, topic.waiting = topic.waiting, []
        error = "no answer from the exchange in time (seawall)"
        for bot, request_id in waiting:
            bot.socket.send(wire.answer("subscribe", request_id, error=error))
        self._spawn(self._release(topic))

    async def _relay(self, bot: PublicBot, message: dict[str, Any]) -> None:
        link = next((link for link in self.links if link.connected), None)
        request_id = message.get("id")
        if link is None:
            event = str(message.get("event"))[:40]
            error = "the exchange's stream is not connected through seawall; retry"
            bot.socket.send(wire.answer(event, request_id, error=error))
            return
        now = time.monotonic()
        if len(self._relays) >= MAX_RELAYS:
            self._relays.pop(next(iter(self._relays)))
        while self._relays:
            oldest = next(iter(self._relays))
            if now - self._relays[oldest][2] < self._config.subscribe_timeout:
                break
            del self._relays[oldest]
        token = next(self._tokens)
        self._relays[token] = (bot, request_id, now)
        if not await link.relay({key: value for key, value in message.items() if key != "id"}, token):
            del self._relays[token]
            event = str(message.get("event"))[:40]
            error = "the exchange's stream is not connected through seawall; retry"
            bot.socket.send(wire.answer(event, request_id, error=error))

    # -- what the upstream links report ------------------------------------------------------------
    def pushed(self, link: UpstreamLink, name: str, frame: bytes) -> None:
        topic = self.topics.get(name)
        if topic is None or topic.link is not link:
            return
        if topic.snapshot:
            topic.latest = frame
        for bot in topic.subscribers:
            bot.socket.send(frame)

    async def subscribed(self, link: UpstreamLink, name: str, answer: dict[str, Any]) -> None:
        topic = self.topics.get(name)
        if topic is None or topic.link is not link:
            return
        held = topic.confirmed is not None
        waiting, topic.waiting = topic.waiting, []
        if answer.get("success") is True:
            if topic.timer is not None:
                topic.timer.cancel()
                topic.timer = None
            topic.confirmed = {key: value for key, value in answer.items() if key != "id"}
            if not held:
                self._metrics.ws_subscriptions.labels(topic.kind).inc()
            for bot, request_id in waiting:
                if bot in self.bots:
                    self._join(topic, bot, request_id)
            await self._release(topic)
            return
        # Refused: the bots that asked get the exchange's own answer; bots that held it (a re-subscribe
        # after a reconnect) must restart their stream to hear why.
        for bot, request_id in waiting:
            bot.socket.send(wire.with_id(answer, request_id))
        for bot in topic.subscribers:
            bot.socket.end(wire.CLOSE_UPSTREAM_LOST, "topic refused by the exchange", "upstream_closed")
        self._forget(topic)
        await link.unsubscribe(name, tell_exchange=False)

    def relayed(self, token: int, answer: dict[str, Any]) -> None:
        asked = self._relays.pop(token, None)
        if asked is not None:
            bot, request_id, _ = asked
            bot.socket.send(wire.with_id(answer, request_id))

    def lost(self, link: UpstreamLink) -> None:
        """An upstream connection ended; the link reconnects while it has topics."""
        for name in list(link.commands):
            topic = self.topics.get(name)
            if topic is None:
                continue
            topic.latest = None  # stale after a gap: a joiner waits for the next push
            if self._config.on_upstream_loss == "close":
                for bot in topic.subscribers:
                    bot.socket.end(wire.CLOSE_UPSTREAM_LOST, "exchange stream lost", "upstream_closed")
                for bot, request_id in topic.waiting:
                    bot.socket.send(wire.answer("subscribe", request_id, error="exchange stream lost"))
                self._forget(topic)
                link.commands.pop(name, None)

    def ended(self, link: UpstreamLink) -> None:
        if link in self.links:
            self.links.remove(link)
        for topic in list(self.topics.values()):
            if topic.link is link:  # only if it ended while still holding topics (stopping)
                self._forget(topic)

    # -- internals ---------------------------------------------------------------------------------
    def _link_for(self, stream_id: str) -> UpstreamLink:
        limit = self._config.topics_per_connection
        for link in self.links:
            if not link.closing and link.topics < limit:
                return link
        url = self._url_for(self._config.public_id or stream_id)
        link = UpstreamLink(self, url, self._config, self._dialer, self._metrics)
        self.links.append(link)
        return link

    async def _ping_bots(self) -> None:
        config = self._config
        silence = config.ping_interval * config.max_missed_pings
        while True:
            await asyncio.sleep(config.ping_interval)
            now = time.monotonic()
            frame = wire.ping()
            for bot in list(self.bots):
                if now - bot.heard > silence:
                    bot.socket.end(wire.CLOSE_NORMAL, "no answer to pings", "unresponsive")
                else:
                    bot.socket.send(frame)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
