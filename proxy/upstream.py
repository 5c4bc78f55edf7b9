"""A lean keep-alive HTTP/1.1 client for the one upstream: bytes out as given, the answer's bytes back.

Why not aiohttp's client (the stack's choice): in the overhead benchmark (BENCHMARKS.md) the aiohttp
client's per-request work was a third of Seawall's CPU (~43 µs of ~130 µs a request; py-spy), which alone
kept Seawall under the bar of 0.85x a bare aiohttp proxy's throughput. And each of its conveniences is a
trap for a byte-exact proxy: it re-quotes URLs, adds headers of its own, silently resends a request after
a dropped connection, and decompresses answers. This client does one thing: it writes the request head
and body it is given, and parses the answer with httptools (llhttp, the parser under uvicorn and Node.js).
It never resends and never decodes a body.

Guarantees:
- At most `limit` connections. When all are busy, requests wait in arrival order: a freed connection (or
  the right to open a new one) is handed to the request that has waited longest, never to a newcomer.
- Separate budgets inside one deadline: the wait for a free connection (`pool_timeout`), connecting
  (`connect_timeout`) and the exchange's answer once the request is written (`answer_timeout`), all cut
  short by the request's overall deadline (`timeout`, seconds left when `request` is called).
- A request is never written with less than `min_send_time` of its deadline left: it fails with
  `Congested(cause="deadline")` instead, and a connection it held goes back unused.
- Every failure says whether anything was sent (`UpstreamUnreached` / `Congested`: provably nothing;
  `UpstreamUnavailable` / `UpstreamInvalid`: the request was written, the exchange may have acted on it)
  and why (`cause`: dns, refused, tls, connect_timeout, timeout, reset, closed, invalid, deadline; for
  `Congested`: pool_timeout, deadline, local_resources).
- The exchange is blamed for silence only when it had its full budget: `connect_timeout` for a connect,
  `answer_timeout` for the answer (or, where the deadline never leaves that much, all of it but
  `min_send_time`). A wait the request's own deadline cut shorter is Seawall's: `Congested(deadline)`
  before the request was written, `UpstreamUnavailable(cause="deadline")` after (still "sent").
- Seawall's own lack of resources to connect (file descriptors, kernel memory, local ports) is
  `Congested(cause="local_resources")`, never a failure of the exchange.
- An idle connection is reused only while it is open and younger than IDLE_REUSE_SECONDS and the
  exchange's own `Keep-Alive: timeout=N` (less KEEP_ALIVE_MARGIN).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import math
import select
import socket
import ssl
import time
from collections import deque
from typing import cast

import httptools

from proxy.errors import Congested, UpstreamInvalid, UpstreamUnavailable, UpstreamUnreached

# An idle connection older than this is closed rather than reused: servers drop idle keep-alive
# connections on their own schedule, and a request written into one being dropped is lost (aiohttp's
# connector keeps the same 15 s default for the same reason).
IDLE_REUSE_SECONDS = 15.0
# An exchange that announces `Keep-Alive: timeout=N` closes idle connections after N seconds, counted from
# when it sent the answer: stop reusing one this much earlier, for the answer's travel time and the
# request's on the way back.
KEEP_ALIVE_MARGIN = 1.0
# Status line and headers of one answer: aiohttp's parser allowed ~8 KiB a field; an exchange's answers
# carry well under 4 KiB in all. Anything larger is not an exchange answer.
MAX_HEAD_BYTES = 64 * 1024
# Retry-After of a request answered locally because no connection came free (or none could be opened).
CONGESTED_RETRY_AFTER = 1.0
TOO_LATE = "too little of the request's deadline was left to send it"
CUT_BY_DEADLINE = (
    "the request's deadline ran out before the exchange answered, with less than its full answer time"
)
# A connect that fails for want of Seawall's own resources says nothing about the exchange: out of file
# descriptors (EMFILE, ENFILE), kernel memory (ENOBUFS, ENOMEM) or local ports (EADDRNOTAVAIL). Out of
# descriptors, getaddrinfo fails too: CPython and libuv turn its EAI_SYSTEM into the errno, but a resolver
# may report EAI_SYSTEM or EAI_MEMORY as such.
LOCAL_RESOURCE_ERRNOS = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EADDRNOTAVAIL}
)
LOCAL_RESOLVER_ERRORS = frozenset(
    code for code in (getattr(socket, "EAI_SYSTEM", None), getattr(socket, "EAI_MEMORY", None)) if code
)
OUT_OF_RESOURCES = "Seawall has no local resources left to open a connection to the exchange"
LOCAL_RESOURCES = "local_resources"  # the Congested cause for it


class UpstreamAnswer:
    """The parsed answer: status, reason phrase, raw header pairs in order, body bytes as received, and
    `latency`: seconds from writing the request to the answer's last byte (no pool wait, no connect)."""

    __slots__ = ("body", "headers", "latency", "reason", "status")

    def __init__(
        self,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        latency: float = 0.0,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.latency = latency


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
        self.keep_for = IDLE_REUSE_SECONDS  # how long it may idle after the last answer
        self.expires_at = 0.0  # time.monotonic() after which it is not reused
        self.sent_at = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._poll: select.poll | None = None
        self._head_request = False
        self._received = False
        self._reset()

    def _reset(self) -> None:
        self._reason = b""
        self._head_size = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []
        self._size = 0
        self._headers_done = False
        self._complete = False
        self._keep_alive = b""

    @property
    def usable(self) -> bool:
        """Open and not closing: a request written now would really go out."""
        transport = self.transport
        return self.open and transport is not None and not transport.is_closing()

    @property
    def reusable_now(self) -> bool:
        """Usable, and nothing arrived since its last answer. An exchange that closes a connection right
        after answering has usually sent its FIN by now, but the loop reads it a turn later: written into
        then, the request would fail and look sent. Bytes waiting on an idle connection (FIN, RST, or
        anything else) mean it is not reused: one poll(2) proves that before a byte is written."""
        transport = self.transport
        if not self.open or transport is None or transport.is_closing():
            return False
        return not (self._poll is not None and self._poll.poll(0))

    # -- the exchange ------------------------------------------------------------------------------
    def begin(self, data: bytes, head_request: bool) -> asyncio.Future[None]:
        """Write one request; the future resolves when its answer is complete."""
        self._reset()
        self.reusable = False
        self._received = False
        self._head_request = head_request
        self._waiter = asyncio.get_running_loop().create_future()
        self.sent_at = time.monotonic()
        cast(asyncio.Transport, self.transport).write(data)
        return self._waiter

    def answer(self, latency: float) -> UpstreamAnswer:
        return UpstreamAnswer(
            self._parser.get_status_code(), self._reason, self._headers, b"".join(self._chunks), latency
        )

    def fail(self, error: Exception) -> None:
        """End the exchange with `error` (timeout, oversize, garbage) and drop the connection; nothing if
        its answer is already complete."""
        if self._complete:
            # The answer won: a timer that fell due in the same loop turn (after the answer resolved the
            # waiter, before the request's task resumed) must not throw away a good connection.
            return
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
        sock = transport.get_extra_info("socket")
        if sock is not None and hasattr(select, "poll"):
            self._poll = select.poll()
            self._poll.register(sock.fileno(), select.POLLIN)

    def eof_received(self) -> bool | None:
        # The exchange closed its side. The transport closes itself after this returns, but reports
        # connection_lost only a loop turn later: mark it now, so a request is not written into it
        # (where it would be silently dropped yet look sent).
        self.open = False
        self.reusable = False
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self.reusable = False
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if exc is None and self._headers_done and self._reads_to_close():
            # An answer with no length ends where the connection ends, if it ends cleanly (FIN, not RST).
            waiter.set_result(None)
            return
        # Written, then cut: the exchange may have acted on the request, so this is never "not sent".
        cause = "closed" if exc is None else "tls" if isinstance(exc, ssl.SSLError) else "reset"
        where = "mid-answer" if self._received else "without answering"
        waiter.set_exception(UpstreamUnavailable(f"the exchange closed the connection {where}", cause=cause))

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self.close()  # bytes nobody asked for: this connection's framing cannot be trusted
            return
        self._received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail(UpstreamInvalid("the exchange tried to switch protocols", cause="invalid"))
        except httptools.HttpParserError as error:
            if self._complete:  # the answer is whole; only what followed it was wrong
                self.close()
                return
            cause = error.__context__
            self.fail(
                cause
                if isinstance(cause, UpstreamInvalid)
                else UpstreamInvalid("the exchange sent an invalid response", cause="invalid")
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
        if len(name) == 10 and name.lower() == b"keep-alive":
            self._keep_alive = value

    def on_headers_complete(self) -> None:
        self._headers_done = True
        status = self._parser.get_status_code()
        if status == 101:
            # llhttp completes an upgrade before it reports it: refuse here, before the answer counts.
            raise UpstreamInvalid("the exchange tried to switch protocols", cause="invalid")
        if self._head_request and status >= 200:
            # llhttp would wait for a HEAD answer's announced body; it has none. The connection is not
            # reused, so its parser state does not matter after this.
            self._finish(reusable=False)

    def _count_head(self, size: int) -> None:
        self._head_size += size
        if self._head_size > MAX_HEAD_BYTES:
            raise UpstreamInvalid(
                f"the exchange's answer headers exceed {MAX_HEAD_BYTES} bytes", cause="invalid"
            )

    def on_body(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self._max_body:
            raise UpstreamInvalid(f"the exchange's answer exceeds {self._max_body} bytes", cause="invalid")
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
        if self.reusable:
            self.keep_for = IDLE_REUSE_SECONDS
            if self._keep_alive:
                announced = _keep_alive_timeout(self._keep_alive)
                if announced is not None:
                    self.keep_for = min(IDLE_REUSE_SECONDS, announced - KEEP_ALIVE_MARGIN)
                    self.reusable = self.keep_for > 0
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


def _keep_alive_timeout(value: bytes) -> float | None:
    """The `timeout=N` parameter of a Keep-Alive header (RFC 2068 §19.7.1), if present and a number."""
    for parameter in value.split(b","):
        name, _, number = parameter.partition(b"=")
        if name.strip().lower() == b"timeout":
            try:
                seconds = float(number.strip())
            except ValueError:
                return None
            return seconds if math.isfinite(seconds) else None
    return None


def _time_out(connection: _Connection) -> None:
    """The exchange had its full time to answer and did not: its failure."""
    connection.fail(UpstreamUnavailable("the exchange did not answer in time", cause="timeout"))


def _cut_by_deadline(connection: _Connection) -> None:
    """The request's deadline ran out before the exchange had its full time: sent, but not its failure."""
    connection.fail(UpstreamUnavailable(CUT_BY_DEADLINE, cause="deadline"))


def _connect_error(error: OSError) -> UpstreamUnreached | Congested:
    """What a failure to connect was, for the operator: nothing was sent in any case."""
    if isinstance(error, ssl.SSLError):  # includes certificate verification; checked before OSError's
        return UpstreamUnreached("TLS with the exchange failed", cause="tls")
    if isinstance(error, socket.gaierror):  # errno holds an EAI_* code here, not an errno
        if error.errno in LOCAL_RESOLVER_ERRORS:
            return Congested(OUT_OF_RESOURCES, cause=LOCAL_RESOURCES, retry_after=CONGESTED_RETRY_AFTER)
        return UpstreamUnreached("the exchange's host name did not resolve", cause="dns")
    if error.errno in LOCAL_RESOURCE_ERRNOS:
        return Congested(OUT_OF_RESOURCES, cause=LOCAL_RESOURCES, retry_after=CONGESTED_RETRY_AFTER)
    if isinstance(error, TimeoutError):  # the kernel's own connect timeout (ETIMEDOUT)
        return UpstreamUnreached("the exchange did not accept a connection in time", cause="connect_timeout")
    if isinstance(error, ConnectionResetError | ConnectionAbortedError | BrokenPipeError):
        return UpstreamUnreached("the exchange reset the connection while it was opened", cause="reset")
    # Refused, or no route to the host: the connection could not be made.
    return UpstreamUnreached("the exchange refused the connection", cause="refused")


Gift = _Connection | None  # what a waiter is handed: a free connection, or the right to open one


class UpstreamClient:
    """A pool of keep-alive connections to one origin, at most `limit` of them at a time, served FIFO."""

    def __init__(
        self,
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        limit: int,
        connect_timeout: float,
        max_body: int,
        *,
        pool_timeout: float | None = None,
        answer_timeout: float | None = None,
        min_send_time: float = 0.0,
        request_timeout: float | None = None,
    ) -> None:
        """`pool_timeout` / `answer_timeout`: None leaves only the request's deadline to bound them.
        `request_timeout`: the whole deadline a request gets from its arrival (`upstream.timeout`), of
        which `request`'s `timeout` is what is left; it says when a deadline cut the exchange short."""
        self._host = host
        self._port = port
        self._ssl = tls
        self._limit = limit
        self._connect_timeout = connect_timeout
        self._pool_timeout = math.inf if pool_timeout is None else pool_timeout
        self._answer_timeout = math.inf if answer_timeout is None else answer_timeout
        self._min_send_time = min_send_time
        # How long the exchange must have had to answer for its silence to be its failure: answer_timeout,
        # or, where the deadline never leaves that much, all of it but min_send_time. Without an
        # answer_timeout the deadline is the exchange's whole budget.
        self._full_answer_wait = 0.0
        if answer_timeout is not None:
            whole = math.inf if request_timeout is None else request_timeout - min_send_time
            self._full_answer_wait = min(answer_timeout, whole)
        self._max_body = max_body
        self._idle: deque[_Connection] = deque()
        self._count = 0  # open or opening connections, idle or busy, and rights to open one handed over
        # Requests waiting for a connection, oldest first. Only live waiters are in it: one that leaves
        # removes itself, and a woken one has been taken off.
        self._slot_waiters: deque[asyncio.Future[Gift]] = deque()
        self.closed = False

    async def request(
        self,
        head: bytes,
        body: bytes,
        head_request: bool,
        timeout: float,  # noqa: ASYNC109 - the request's overall deadline, as seconds left
    ) -> UpstreamAnswer:
        """Send one request (head and body bytes as given) and read its answer within `timeout` seconds.

        Raises, when nothing was sent: Congested (no connection came free within pool_timeout, less
        than min_send_time of the deadline was left, or Seawall is out of resources to connect),
        UpstreamUnreached (the exchange could not be reached, or shutting down). After sending:
        UpstreamUnavailable (no answer in time — `timeout`, or `deadline` when the exchange had less than
        its full answer time —, connection cut), UpstreamInvalid (an answer that is not valid HTTP/1.x or
        over the size cap).
        """
        loop = asyncio.get_running_loop()
        now = loop.time()  # uvloop's clock need not share time.monotonic()'s base: only differences
        deadline = now + timeout
        send_by = deadline - self._min_send_time
        if now >= send_by:  # the rate-limit queue (or the bot's slow upload) ate the budget
            raise Congested(TOO_LATE, cause="deadline")
        connection = None if self._slot_waiters else self._take_idle()
        if connection is None:
            connection = await self._acquire(loop, send_by)
            now = loop.time()
            if now >= send_by:
                self._release(connection)  # unused: to the next waiter, or back to the pool as it was
                raise Congested(TOO_LATE, cause="deadline")
        answer_by = now + self._answer_timeout
        if answer_by <= deadline or deadline - now >= self._full_answer_wait:
            timer = loop.call_at(min(answer_by, deadline), _time_out, connection)
        else:  # queueing spent what the exchange was due: running out now is not the exchange's failure
            timer = loop.call_at(deadline, _cut_by_deadline, connection)
        try:
            await connection.begin(head + body if body else head, head_request)
        except BaseException:  # timeout, bad answer, or the caller cancelled: the connection is spent
            connection.close()
            self._release(connection)
            raise
        finally:
            timer.cancel()
        done = time.monotonic()
        answer = connection.answer(done - connection.sent_at)
        self._release(connection, done)
        return answer

    def stats(self) -> dict[str, int]:
        """Connections now: open (busy or idle), idle and ready for reuse, requests waiting, the cap."""
        idle = sum(1 for connection in self._idle if connection.open)
        dropped = len(self._idle) - idle  # closed by the server while idle, not yet swept
        return {
            "open": self._count - dropped,
            "idle": idle,
            "waiting": len(self._slot_waiters),
            "limit": self._limit,
        }

    async def close(self) -> None:
        self.closed = True
        while self._idle:
            self._idle.pop().close()
            self._count -= 1
        waiters = list(self._slot_waiters)
        self._slot_waiters.clear()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(UpstreamUnreached("proxy is shutting down"))

    # -- the pool ----------------------------------------------------------------------------------
    def _take_idle(self) -> _Connection | None:
        """The most recently used idle connection still fit for a request; drops those that are not."""
        idle = self._idle
        if not idle:
            return None
        now = time.monotonic()
        while idle and idle[0].expires_at <= now:  # the oldest, past reuse: close it rather than keep it
            idle.popleft().close()
            self._count -= 1
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to be dropped
            if connection.expires_at > now and connection.reusable_now:
                return connection
            connection.close()
            self._count -= 1
        return None

    async def _acquire(self, loop: asyncio.AbstractEventLoop, send_by: float) -> _Connection:
        # Every failure here comes before a byte was written: dedup lets the bot's retry through.
        if self.closed:
            raise UpstreamUnreached("proxy is shutting down")
        if not self._slot_waiters and self._count < self._limit:
            self._count += 1
            return await self._open(loop, send_by)
        gift = await self._wait_turn(loop, send_by)
        if gift is not None:
            if gift.expires_at > time.monotonic() and gift.reusable_now:
                return gift
            gift.close()  # the exchange closed it right after its last answer: its slot is ours to use
        return await self._open(loop, send_by)

    async def _wait_turn(self, loop: asyncio.AbstractEventLoop, send_by: float) -> Gift:
        """Queue behind earlier requests until a connection, or the right to open one, is handed over."""
        turn: asyncio.Future[Gift] = loop.create_future()
        self._slot_waiters.append(turn)
        pool_deadline = loop.time() + self._pool_timeout
        try:
            async with asyncio.timeout_at(min(pool_deadline, send_by)):
                return await turn
        except BaseException as error:  # out of time, cancelled by the caller, or shutting down
            if turn.done() and not turn.cancelled() and turn.exception() is None:
                self._hand_back(turn.result())  # handed over just as this waiter left: to the next one
            else:
                turn.cancel()
                with contextlib.suppress(ValueError):  # already taken off by close()
                    self._slot_waiters.remove(turn)
            if isinstance(error, TimeoutError):
                if pool_deadline <= send_by:
                    raise Congested(
                        "no upstream connection came free in time",
                        cause="pool_timeout",
                        retry_after=CONGESTED_RETRY_AFTER,
                    ) from None
                raise Congested(TOO_LATE, cause="deadline") from None
            raise

    async def _open(self, loop: asyncio.AbstractEventLoop, send_by: float) -> _Connection:
        """Open a connection in a slot already counted; on failure the slot goes to the next waiter."""
        connect_by = loop.time() + self._connect_timeout
        try:
            async with asyncio.timeout_at(min(connect_by, send_by)):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(self._max_body),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
        except BaseException as error:  # refused, out of time, TLS failure, or the caller cancelled
            self._pass_on(None)
            if isinstance(error, TimeoutError) and error.errno is None:  # our own bound ran out
                # The exchange's failure only if it had its whole connect_timeout; a connect the deadline
                # cut shorter is Seawall's congestion. (The config keeps connect_timeout + min_send_time
                # under the deadline, so a request that did not queue always gives the exchange its due.)
                if connect_by <= send_by:
                    raise UpstreamUnreached(
                        "the exchange did not accept a connection in time", cause="connect_timeout"
                    ) from None
                raise Congested(TOO_LATE, cause="deadline") from None
            if isinstance(error, OSError):
                raise _connect_error(error) from error
            raise
        if not protocol.usable:  # accepted, then closed before the request could be written
            protocol.close()
            self._pass_on(None)
            raise UpstreamUnreached("the exchange closed a new connection at once", cause="closed")
        protocol.reusable = True  # unused yet: may go back to the pool if the request is not sent
        protocol.expires_at = time.monotonic() + IDLE_REUSE_SECONDS
        return protocol

    def _release(self, connection: _Connection, answered_at: float | None = None) -> None:
        """Give a connection back after its request (`answered_at`: when its answer ended) or unused."""
        if connection.reusable and connection.open and not self.closed:
            if answered_at is not None:
                connection.expires_at = answered_at + connection.keep_for
            self._pass_on(connection)
            return
        connection.close()
        self._pass_on(None)

    def _hand_back(self, gift: Gift) -> None:
        """Return what a waiter was handed but will not use."""
        if gift is None:
            self._pass_on(None)
        else:
            self._release(gift)

    def _pass_on(self, gift: Gift) -> None:
        """Hand a free connection (or its slot) to the longest waiter; with none waiting, keep it idle
        (or free the slot)."""
        if self._wake_one(gift):
            return
        if gift is None:
            self._count -= 1
        else:
            self._idle.append(gift)

    def _wake_one(self, gift: Gift) -> bool:
        waiters = self._slot_waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(gift)
                return True
        return False
