"""A bot's side of a stream: its aiohttp WebSocket, written through a bounded buffer.

Guarantees:
- `send` never waits: a frame is queued and one writer task per bot writes the queue in order, so a
  fan-out to many bots, or the reader of an upstream connection, never waits for one of them;
- a bot whose unwritten frames would exceed `limit` bytes is cut off — closed with 1013 ("try again
  later"), its queue dropped — so one stuck reader holds at most `limit` bytes and slows no one else;
- closing (a cut-off, shutdown, a lost upstream) sends a close frame with a code that says why — after
  the frames already queued when the exchange ended the stream (its last words, e.g. a refused auth),
  before them otherwise; a bot that does not take it within CLOSE_TIMEOUT is disconnected with a reset.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from aiohttp import WSMsgType, web

from proxy.metrics import Metrics
from proxy.streams.wire import CLOSE_TOO_SLOW

CLOSE_TIMEOUT = 1.0  # for the bot's answer to a close frame, and for a close frame stuck behind a full buffer

BotWebSocket = web.WebSocketResponse[bool]


def bot_websocket(max_message_bytes: int, autoping: bool) -> BotWebSocket:
    """The server side of a bot's stream. No compression: bot and Seawall share a host (a sidecar), where
    deflate costs CPU per bot and saves nothing; text arrives as bytes, passed on as received."""
    return web.WebSocketResponse(
        timeout=CLOSE_TIMEOUT,
        autoping=autoping,
        compress=False,
        max_msg_size=max_message_bytes,
        decode_text=False,
    )


class BotSocket:
    def __init__(
        self, request: web.BaseRequest, ws: BotWebSocket, kind: str, limit: int, metrics: Metrics
    ) -> None:
        self.ws = ws
        self.kind = kind
        self._transport = request.transport
        self._limit = limit
        self._sent = metrics.ws_messages.labels("to_bot", kind)
        self._frames: deque[tuple[bytes, WSMsgType]] = deque()
        self._queued = 0
        self._more = asyncio.Event()
        self.ended: str | None = None  # why Seawall ended the connection (a disconnect reason)
        self._closing: asyncio.Task[None] | None = None
        self._writer = asyncio.get_running_loop().create_task(self._write())

    @property
    def queued_bytes(self) -> int:
        return self._queued

    def send(self, data: bytes, opcode: WSMsgType = WSMsgType.TEXT) -> bool:
        """Queue one frame; False if the bot is gone or was cut off by it."""
        if self.ended is not None:
            return False
        if self._queued + len(data) > self._limit:
            self.end(CLOSE_TOO_SLOW, "too slow: frames not read", "slow")
            return False
        self._frames.append((data, opcode))
        self._queued += len(data)
        self._more.set()
        return True

    async def _write(self) -> None:
        frames = self._frames
        with contextlib.suppress(ConnectionError):
            while True:
                if not frames:
                    if self.ended is not None:
                        return  # flushed: the close may go
                    self._more.clear()
                    await self._more.wait()
                    continue
                data, opcode = frames.popleft()
                self._queued -= len(data)
                await self.ws.send_frame(data, opcode)  # waits only while the transport is full
                self._sent.inc()

    def end(self, code: int, message: str, reason: str, flush: bool = False) -> None:
        """Close the bot's connection with `code` (once): after the frames still queued if `flush`, else
        dropping them. `reason` is the disconnect reason counted when the bot's serving ends."""
        if self.ended is not None:
            return
        self.ended = reason
        if flush:
            self._more.set()  # the writer ends once the queue is written
        else:
            self._frames.clear()
            self._queued = 0
            self._writer.cancel()
        self._closing = asyncio.get_running_loop().create_task(self._close(code, message))

    async def _close(self, code: int, message: str) -> None:
        await asyncio.wait({self._writer}, timeout=CLOSE_TIMEOUT)
        if not self._writer.done():  # stuck behind a bot that does not read
            self._writer.cancel()
        # Its own task: a close stuck behind a full buffer can end cancelled (aiohttp shares one drain
        # waiter between writers), which must read as "not closed in time", not as our cancellation.
        closing = asyncio.ensure_future(self.ws.close(code=code, message=message.encode()))
        await asyncio.wait({closing}, timeout=CLOSE_TIMEOUT)
        if closing.done() and not closing.cancelled() and closing.exception() is None:
            return
        closing.cancel()
        if self._transport is not None:
            self._transport.abort()  # a reset: what was buffered for the bot is freed

    async def finish(self) -> None:
        """After the bot's connection ended: stop writing, and let a close in progress complete."""
        self._writer.cancel()
        tasks = [self._writer] if self._closing is None else [self._writer, self._closing]
        await asyncio.gather(*tasks, return_exceptions=True)
