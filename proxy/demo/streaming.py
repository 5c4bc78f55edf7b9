"""The market-data act's stream part: bots on the exchange's public WebSocket stream.

Each bot opens its own connection to `/ws/stream/{account_id}` — straight to the exchange, or to Seawall,
which takes the stream on the same base URL — subscribes to the same order book and ticker, and counts
the pushes that carry data until the act ends. Every await has a deadline and every connection is closed
before `stream_fleet` returns, whatever happened.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

STREAM_TOPICS = ("PERP_ETH_USDC@orderbook", "PERP_ETH_USDC@ticker")
HANDSHAKE_TIMEOUT = 3.0
CLOSE_TIMEOUT = 1.0  # a close the other side never acknowledges must not hold the demo


@dataclass
class StreamTally:
    """What the streaming bots saw."""

    frames_with_data: int = 0  # pushes of a subscribed topic with a `data` payload
    bots_with_data: int = 0  # bots that received at least one such push


def stream_url(base_url: str, account_id: str) -> str:
    """The public stream on the same host a bot points its REST calls at (http -> ws, https -> wss)."""
    return "ws" + base_url.removeprefix("http") + f"/ws/stream/{account_id}"


async def stream_bot(session: aiohttp.ClientSession, url: str, stop_at: float, tally: StreamTally) -> None:
    """One bot: subscribe to `STREAM_TOPICS`, read until `stop_at` (answering pings), close."""
    frames = 0
    try:
        # The whole life of the bot is bounded: the act's end plus time for the handshake and the close.
        async with asyncio.timeout(max(0.0, stop_at - time.monotonic()) + HANDSHAKE_TIMEOUT + CLOSE_TIMEOUT):
            ws = await session.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_TIMEOUT))
            try:
                for number, topic in enumerate(STREAM_TOPICS):
                    await ws.send_json({"id": f"demo-{number}", "event": "subscribe", "topic": topic})
                while (left := stop_at - time.monotonic()) > 0:
                    try:
                        message = await ws.receive(timeout=left)
                    except TimeoutError:
                        break  # the act is over
                    if message.type != aiohttp.WSMsgType.TEXT:
                        break  # closed or broken by the other side
                    frames += await _handle(ws, message.data)
            finally:
                await ws.close()
    except (aiohttp.ClientError, TimeoutError, ConnectionError):
        pass  # a refused handshake or a broken stream: the bot counts what it got
    tally.frames_with_data += frames
    tally.bots_with_data += int(frames > 0)


async def _handle(ws: aiohttp.ClientWebSocketResponse, text: str) -> int:
    """1 for a data push of a subscribed topic; a ping is answered as the exchange asks."""
    try:
        message: Any = orjson.loads(text)
    except orjson.JSONDecodeError:
        return 0
    if not isinstance(message, dict):
        return 0
    if message.get("event") == "ping":
        await ws.send_json({"event": "pong", "ts": int(time.time() * 1000)})
        return 0
    return int(message.get("topic") in STREAM_TOPICS and "data" in message)


async def stream_fleet(base_url: str, account_id: str, bots: int, stop_at: float) -> StreamTally:
    """`bots` bots streaming side by side until `stop_at`; returns once every connection is closed."""
    tally = StreamTally()
    # One session for the fleet, for the connector only: each WebSocket is its own TCP connection.
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=None, connect=HANDSHAKE_TIMEOUT)
    ) as session:
        url = stream_url(base_url, account_id)
        await asyncio.gather(*(stream_bot(session, url, stop_at, tally) for _ in range(bots)))
    return tally
