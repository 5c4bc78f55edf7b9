"""A scriptable exchange stream on loopback, for what the simulator cannot be told to do: refuse
handshakes over a strict rate, record every frame byte for byte, send WebSocket-level pings, close with
a chosen code, or push a burst of large frames on command.

It speaks the exchanges' public protocol well enough for Seawall's fan-out (subscribe answers, pushes)
and records everything a private pass-through must carry unchanged.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import WSMsgType, web


@dataclass
class Handshake:
    at: float  # time.monotonic() when the exchange saw it
    path_qs: str
    refused: bool


@dataclass
class Session:
    """One accepted connection: every frame it received, in order, as (type, payload bytes)."""

    ws: web.WebSocketResponse
    path_qs: str
    frames: list[tuple[WSMsgType, bytes]] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)


class StreamExchange:
    def __init__(self, handshakes_per_second: int | None = None) -> None:
        self.limit = handshakes_per_second  # strict sliding 1-second window; over it: 429 + -1003
        self.handshakes: list[Handshake] = []
        self.sessions: list[Session] = []
        self._recent: deque[float] = deque()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def refused(self) -> int:
        return sum(1 for handshake in self.handshakes if handshake.refused)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        for session in self.sessions:
            await session.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        now = time.monotonic()
        while self._recent and self._recent[0] <= now - 1.0:
            self._recent.popleft()
        refused = self.limit is not None and len(self._recent) >= self.limit
        self.handshakes.append(Handshake(now, request.path_qs, refused))
        if refused:
            payload = {"success": False, "code": -1003, "message": "Too many new connections."}
            return web.json_response(payload, status=429)
        self._recent.append(now)
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        session = Session(ws, request.path_qs)
        self.sessions.append(session)
        try:
            async for message in ws:
                raw = message.data
                data = bytes(raw) if isinstance(raw, (bytes, bytearray)) else str(raw).encode()
                session.frames.append((message.type, data))
                if message.type == WSMsgType.TEXT:
                    try:
                        command = orjson.loads(data)
                    except orjson.JSONDecodeError:
                        continue
                    await self._command(ws, command)
        finally:
            session.closed.set()
        return ws

    async def _command(self, ws: web.WebSocketResponse, message: Any) -> None:
        """Public-stream commands: subscribes and unsubscribes succeed (a topic starting `BAD` fails)."""
        if not isinstance(message, dict):
            return
        event, request_id, topic = message.get("event"), message.get("id"), message.get("topic")
        if event in ("subscribe", "unsubscribe"):
            answer: dict[str, Any] = {"id": request_id, "event": event, "success": True, "ts": 1}
            if str(topic).startswith("BAD"):
                answer.update(success=False, errorMsg=f"invalid topic {topic}")
            await ws.send_str(orjson.dumps(answer).decode())

    async def push(self, topic: str, count: int, size: int, first: int = 0) -> None:
        """`count` pushes of `topic` (numbered from `first`), each about `size` bytes, to every open
        connection, at once."""
        filler = "x" * size
        for session in self.sessions:
            if session.ws.closed:
                continue
            for index in range(first, first + count):
                frame = orjson.dumps({"topic": topic, "ts": index, "data": {"n": index, "pad": filler}})
                await session.ws.send_str(frame.decode())
