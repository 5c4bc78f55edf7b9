"""A lean keep-alive HTTP/1.1 client for the one upstream: bytes out as given, the answer's bytes back.

Why not aiohttp's client (the stack's choice): in the overhead benchmark (BENCHMARKS.md) the aiohttp
client's per-request work was a third of Seawall's CPU (~43 µs of ~130 µs a request; py-spy), which alone
kept Seawall under the bar of 0.85x a bare aiohttp proxy's throughput. And each of its conveniences is a
trap for a byte-exact proxy (PITFALLS.md: URL re-quoting, auto headers, silent resends, decompression).
This client does one thing: it writes the request head and body it is given, and parses the answer with
httptools (llhttp, the parser under uvicorn and Node.js). It never resends, never decodes a body, keeps
at most `limit` connections, and bounds connecting and the whole exchange by the caller's deadline.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from typing import cast

import httptools

from proxy.errors import UpstreamInvalid, UpstreamUnavailable, UpstreamUnreached

# An idle connection older than this is closed rather than reused: servers drop idle keep-alive
# connections on their own schedule, and a request written into one being dropped is lost (aiohttp's
# connector keeps the same 15 s default for the same reason).
IDLE_REUSE_SECONDS = 15.0
# Status line and headers of one answer: aiohttp's parser allowed ~8 KiB a field; an exchange's answers
# carry well under 4 KiB in all. Anything larger is not an exchange answer.
MAX_HEAD_BYTES = 64 * 1024


class UpstreamAnswer:
    """The parsed answer: status, reason phrase, raw header pairs in order, body bytes as received."""

    __slots__ = ("body", "headers", "reason", "status")

    def __init__(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body


class _ExtraMessage(Exception):
    """Bytes after a complete answer that nobody asked for."""


class _Connection(asyncio.Protocol):
    """One connection; carries one request at a time and reads exactly one answer for it."""

    def __init__(self, max_body: int) -> None:
        self._max_body = max_body
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.open = False
        self.reusable = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._head_request = False
        self._reset()

    def _reset(self) -> None:
        self._reason = b""
        self._head_size = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []
        self._size = 0
        self._headers_done = False
        self._complete = False

    # -- the exchange ------------------------------------------------------------------------------
    def begin(self, data: bytes, head_request: bool) -> asyncio.Future[None]:
        """Write one request; the future resolves when its answer is complete."""
        self._reset()
        self.reusable = False
        self._head_request = head_request
        self._waiter = asyncio.get_running_loop().create_future()
        cast(asyncio.Transport, self.transport).write(data)
        return self._waiter

    def answer(self) -> UpstreamAnswer:
        return UpstreamAnswer(
            self._parser.get_status_code(), self._reason, self._headers, b"".join(self._chunks)
        )

    def fail(self, error: Exception) -> None:
        """End the exchange with `error` (timeout, oversize, garbage) and drop the connection."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self.close()

    def close(self) -> None:
        self.open = False
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    # -- asyncio.Protocol --------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports don't subclass asyncio's
        self.open = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self.reusable = False
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if exc is None and self._headers_done and self._reads_to_close():
            # An answer with no length ends where the connection ends, if it ends cleanly (FIN, not RST).
            waiter.set_result(None)
        else:
            waiter.set_exception(UpstreamUnavailable("the exchange closed the connection mid-answer"))

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self.close()  # bytes nobody asked for: this connection's framing cannot be trusted
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail(UpstreamInvalid("the exchange tried to switch protocols"))
        except httptools.HttpParserError as error:
            if self._complete:  # the answer is whole; only what followed it was wrong
                self.close()
                return
            cause = error.__context__
            self.fail(
                cause
                if isinstance(cause, UpstreamInvalid)
                else UpstreamInvalid("the exchange sent an invalid response")
            )

    # -- httptools callbacks -----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._complete:
            raise _ExtraMessage

    def on_status(self, reason: bytes) -> None:
        self._count_head(len(reason))
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._headers_done:
            return  # a chunked answer's trailer fields: framing detail, not headers for the bot
        self._count_head(len(name) + len(value))
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._headers_done = True
        status = self._parser.get_status_code()
        if status == 101:
            # llhttp completes an upgrade before it reports it: refuse here, before the answer counts.
            raise UpstreamInvalid("the exchange tried to switch protocols")
        if self._head_request and status >= 200:
            # llhttp would wait for a HEAD answer's announced body; it has none. The connection is not
            # reused, so its parser state does not matter after this.
            self._finish(reusable=False)

    def _count_head(self, size: int) -> None:
        self._head_size += size
        if self._head_size > MAX_HEAD_BYTES:
            raise UpstreamInvalid(f"the exchange's answer headers exceed {MAX_HEAD_BYTES} bytes")

    def on_body(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self._max_body:
            raise UpstreamInvalid(f"the exchange's answer exceeds {self._max_body} bytes")
        self._chunks.append(chunk)

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            self._reset()  # an interim answer (100 Continue, 103 Early Hints): the real one follows
            return
        if not self._complete:
            self._finish(reusable=self._parser.should_keep_alive())

    def _finish(self, reusable: bool) -> None:
        self._complete = True
        # An answer can come before the whole request went out (an early error): bytes still queued
        # would then arrive as the start of the next request, so such a connection is not reused.
        transport = self.transport
        self.reusable = (
            reusable and self.open and transport is not None and transport.get_write_buffer_size() == 0
        )
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _reads_to_close(self) -> bool:
        # RFC 9112 §6.3: a Transfer-Encoding whose last coding is not chunked, or no Content-Length,
        # means the answer ends at connection close (as llhttp reads it).
        length = False
        for name, value in self._headers:
            lowered = name.lower()
            if lowered == b"transfer-encoding":
                return not value.rstrip().lower().endswith(b"chunked")
            if lowered == b"content-length":
                length = True
        return not length


def _time_out(connection: _Connection) -> None:
    connection.fail(UpstreamUnavailable("the exchange did not answer in time"))


class UpstreamClient:
    """A pool of keep-alive connections to one origin, at most `limit` of them at a time."""

    def __init__(
        self,
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        limit: int,
        connect_timeout: float,
        max_body: int,
    ) -> None:
        self._host = host
        self._port = port
        self._ssl = tls
        self._limit = limit
        self._connect_timeout = connect_timeout
        self._max_body = max_body
        self._idle: deque[_Connection] = deque()
        self._count = 0  # open or opening connections, idle or busy
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self.closed = False

    async def request(
        self,
        head: bytes,
        body: bytes,
        head_request: bool,
        timeout: float,  # noqa: ASYNC109 - one deadline also bounds pool waits and connecting
    ) -> UpstreamAnswer:
        """Send one request (head and body bytes as given) and read its answer within `timeout` seconds.

        Raises UpstreamUnreached whenever nothing was sent (no connection, none free in time, shutting
        down), UpstreamUnavailable on timeout or a dropped connection after sending, UpstreamInvalid on an
        answer that is not valid HTTP/1.x.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        connection = self._reuse() or await self._connect(deadline)
        timer = loop.call_at(deadline, _time_out, connection)
        try:
            if not connection.open:  # a new connection lost before its first request: nothing was sent
                raise UpstreamUnreached("the exchange closed the connection before the request went out")
            await connection.begin(head + body if body else head, head_request)
        except BaseException:  # timeout, bad answer, or the caller cancelled: the connection is spent
            connection.close()
            self._release(connection)
            raise
        finally:
            timer.cancel()
        answer = connection.answer()
        self._release(connection)
        return answer

    def stats(self) -> dict[str, int]:
        """Connections now: open (busy or idle), idle and ready for reuse, and the cap."""
        idle = sum(1 for connection in self._idle if connection.open)
        dropped = len(self._idle) - idle  # closed by the server while idle, not yet swept
        return {"open": self._count - dropped, "idle": idle, "limit": self._limit}

    async def close(self) -> None:
        self.closed = True
        while self._idle:
            self._idle.pop().close()
            self._count -= 1
        for waiter in self._slot_waiters:
            if not waiter.done():
                waiter.set_exception(UpstreamUnreached("proxy is shutting down"))

    # -- the pool ----------------------------------------------------------------------------------
    def _reuse(self) -> _Connection | None:
        idle = self._idle
        if not idle:
            return None
        oldest_allowed = time.monotonic() - IDLE_REUSE_SECONDS
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to be dropped
            if connection.open and connection.idle_since >= oldest_allowed:
                return connection
            connection.close()
            self._count -= 1
        return None

    async def _connect(self, deadline: float) -> _Connection:
        # Every failure here comes before a byte was written: UpstreamUnreached lets dedup allow a retry.
        if self.closed:
            raise UpstreamUnreached("proxy is shutting down")
        loop = asyncio.get_running_loop()
        while self._count >= self._limit:  # every connection is busy: wait for one to come back
            slot: asyncio.Future[None] = loop.create_future()
            self._slot_waiters.append(slot)
            try:
                async with asyncio.timeout_at(deadline):
                    await slot
            except BaseException as error:  # out of time, cancelled by the caller, or shutting down
                if slot.done() and not slot.cancelled():
                    self._wake_one()  # woken just as this waiter left: pass the wake-up on
                else:
                    slot.cancel()
                if isinstance(error, TimeoutError):
                    raise UpstreamUnreached("no upstream connection came free in time") from None
                raise
            if self.closed:
                raise UpstreamUnreached("proxy is shutting down")
            connection = self._reuse()
            if connection is not None:
                return connection
        self._count += 1
        try:
            async with asyncio.timeout_at(min(deadline, loop.time() + self._connect_timeout)):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(self._max_body),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
        except BaseException as error:  # refused, out of time, TLS failure, or the caller cancelled
            self._count -= 1
            self._wake_one()
            if isinstance(error, OSError | TimeoutError):
                raise UpstreamUnreached("the exchange could not be reached") from None
            raise
        return protocol

    def _release(self, connection: _Connection) -> None:
        if connection.reusable and not self.closed:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            connection.close()
            self._count -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        waiters = self._slot_waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
