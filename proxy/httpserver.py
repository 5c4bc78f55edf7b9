"""Seawall's HTTP/1.1 server: both listeners (proxy and admin) accept, read and answer through it.

Why not aiohttp's server (the stack's choice): in front of bots it lacked what a proxy needs, and working
around it meant leaning on its private attributes (`_loop`, `_kwargs`, `site._server`,
`request.writer.output_size`), which any minor release may change. It has no deadline for reading a
request, so a request half-sent behind a complete one on a keep-alive connection was held until the
keep-alive timeout (75 s). It hands a whole answer to the transport at once: ten bots that asked for a
5 MB answer and never read it held their connections for good and took Seawall's RSS from 60 to 203 MiB
(156 MiB after they left; here: cut at the write deadline, 50 -> 145 -> 98 MiB). It has no connection cap,
and a listener out of file descriptors said nothing (uvloop's libuv closes the waiting connections
silently). It forwarded HTTP/0.9 requests and answered them with an `HTTP/0.9 200` status line followed by
headers, and never sent `100 Continue`. This server reads with httptools (llhttp, the parser under
aiohttp's own C parser, uvicorn and Node.js) and does one thing: a whole request in, a whole `Answer` out,
under deadlines. It also costs less CPU: ~64 µs a proxied request against ~77 µs on aiohttp's server
(32 connections).

Guarantees, per listener:
- A request's head and body arrive within `read_timeout` of its first byte, or of the moment the
  requests before it on the connection were answered (pipelining), whichever is later: otherwise the
  connection is cut, with a 400 when the head was complete (the body did not come), silently before. A
  new connection must begin its first request within `read_timeout`; an idle keep-alive connection is
  closed after `keepalive_timeout`.
- An answer is written within `write_timeout` of its first byte, with at most `write_buffer_bytes`
  buffered in Seawall per connection (beyond the kernel's socket buffer): half of it is the transport's
  high-water mark, and a large body goes out in pieces of the other half, each once the transport is
  below the mark. A client that does not read is disconnected with a reset at the deadline, and what was
  buffered for it is freed.
- The requests of one connection are handled one at a time and answered in order. A handler keeps
  running when its client hangs up: an order is never abandoned mid-flight.
- With `max_connections`, a connection over the cap is closed at once and counted in
  `seawall_listener_refused_connections_total{listener, reason="cap"}`. A listener out of file
  descriptors (EMFILE, ENFILE) accepts each waiting connection on a reserved descriptor and closes it at
  once (so the bot learns now, not at its own timeout, and the loop does not spin on a socket that stays
  readable), counts it (`reason="fd_exhausted"`) and logs a WARNING at most every FD_WARNING_INTERVAL s.
- Only HTTP/1.1 and HTTP/1.0 are served: a request line without a version (HTTP/0.9) or with another
  version is refused with a 400. So are malformed requests (llhttp's checks: request smuggling with
  Content-Length and Transfer-Encoding, duplicate lengths, NUL or bare CR, obs-fold, bad tokens), an
  HTTP/1.1 request without exactly one Host, a head over MAX_HEAD_BYTES or MAX_HEADERS fields, a target
  over MAX_TARGET_BYTES and a body over `max_body_bytes` (refused from its Content-Length, before the
  body is read). The refusal comes from the site (the exchange's payload on the proxy listener), in its
  turn after the answers before it; then the connection closes. No raw request byte is ever logged.
- `Expect: 100-continue` is answered with `100 Continue` as soon as the request's turn comes (at once
  on an idle connection) if its announced body is within `max_body_bytes`; over it, with the refusal.
- A HEAD answer (and a 304) carries the Content-Length the answer announces, or the length of its body,
  and no body; 1xx and 204 answers carry neither. Every other answer is framed by Content-Length.
- Deadlines are checked by one sweep per listener every SWEEP_FRACTION of the shortest timeout (between
  MIN_SWEEP and MAX_SWEEP seconds), not by a timer per request: a deadline is enforced that much late at
  most.
- A protocol upgrade request (`Connection: upgrade`, a WebSocket handshake) is the last one read on its
  connection. The site may answer it like any request (the connection then closes) or with a `Handover`:
  once the answers before it are written, the connection — the request head, replayed, and every byte
  the client sent after it — belongs to the protocol the handover builds, and this server lets go of it
  (no deadline, cap or count of its own applies any more).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import resource
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Protocol, cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.answer import Answer
from proxy.errors import BadRequest, SeawallError
from proxy.logs import log
from proxy.metrics import Metrics

# The request line and headers together. aiohttp allowed ~8 KiB a field and 128 fields; a bot's request
# head is well under 4 KiB.
MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 128
FIELD_FRAMING = 4  # ": " and CRLF around a header field's name and value, counted in the head's size
HEAD_TOO_LARGE = f"request head over {MAX_HEAD_BYTES} bytes"
MAX_TARGET_BYTES = 8 * 1024
# Complete requests read ahead on one connection (pipelining) before reading pauses until they are
# answered; their bodies together are also held to `max_body_bytes`.
MAX_QUEUED = 16
BACKLOG = 1024
ACCEPT_BATCH = 64  # connections accepted per wake-up of a listening socket
FD_WARNING_INTERVAL = 10.0
RESOURCE_RETRY = 1.0  # out of kernel memory (ENOBUFS, ENOMEM): try accepting again after this
SWEEP_FRACTION = 0.25
MIN_SWEEP = 0.01
MAX_SWEEP = 1.0

MALFORMED = "malformed HTTP request"
VERSIONS = ("1.1", "1.0")
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_REASONS = {status.value: status.phrase for status in HTTPStatus}
# Framing is the server's: whatever an answer says about it is replaced (HEAD keeps Content-Length).
_FRAMING = ("Content-Length", "Transfer-Encoding", "Connection", "Keep-Alive")
_FRAMED = frozenset(name.lower() for name in _FRAMING)
_EMPTY_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE)
_LINGER_RESET = struct.pack("ii", 1, 0)
_OUT_OF_MEMORY = (errno.ENOBUFS, errno.ENOMEM)


@dataclass(slots=True)
class Request:
    """A whole request: method, target and header values as received (bytes that are not UTF-8 kept as
    surrogate escapes, as aiohttp did), the body, the client's address and when the request was complete
    (time.monotonic()). A handler sets `keep_alive = False` to close the connection after its answer."""

    method: str
    target: str
    version: str
    headers: CIMultiDictProxy[str]
    body: bytes
    peer: str
    received: float
    keep_alive: bool = True
    upgrade: bool = False  # a protocol upgrade was asked for (`Connection: upgrade` with `Upgrade`)


def _nothing() -> None:
    pass


@dataclass(frozen=True, slots=True)
class Handover:
    """A site's answer to an upgrade request it serves elsewhere: the connection goes to the protocol
    `protocol()` builds, which receives `connection_made` and then the request head and whatever followed
    it. `abandoned` is called instead if the client is gone by then."""

    protocol: Callable[[], asyncio.Protocol]
    abandoned: Callable[[], None] = _nothing


def encode_head(request: Request) -> bytes:
    """The request line and headers as received (names and values byte for byte, in order)."""
    lines = [f"{request.method} {request.target} HTTP/{request.version}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in request.headers.items())
    lines.append("\r\n")
    return "".join(lines).encode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class Limits:
    read_timeout: float
    write_timeout: float
    keepalive_timeout: float
    write_buffer_bytes: int
    max_body_bytes: int
    max_connections: int | None = None

    @property
    def write_piece(self) -> int:
        """The transport's high-water mark and the size of a large body's pieces: one piece written while
        below the mark keeps a connection's buffer within `write_buffer_bytes`."""
        return max(1, self.write_buffer_bytes // 2)

    @property
    def sweep_interval(self) -> float:
        shortest = min(self.read_timeout, self.write_timeout, self.keepalive_timeout)
        return max(MIN_SWEEP, min(MAX_SWEEP, shortest * SWEEP_FRACTION))


class Site(Protocol):
    """What a listener serves: answers to whole requests (or, to an upgrade request, a handover), and the
    answer for a refused one."""

    async def handle(self, request: Request) -> Answer | Handover: ...

    def refuse(self, error: SeawallError, request: Request) -> Answer:
        """The answer for a request the server refused (malformed, too large, too slow) or whose handler
        failed (`error` is then not a BadRequest). `request` holds what was read of it."""
        ...


class HttpServer:
    """One listener: its listening sockets, its connections and the sweep that enforces deadlines."""

    def __init__(self, name: str, site: Site, limits: Limits, metrics: Metrics) -> None:
        self.name = name  # the `listener` label of its metrics
        self.site = site
        self.limits = limits
        self._metrics = metrics
        self._acceptors: list[_Acceptor] = []
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[Any]] = set()  # handlers and connection set-ups
        self._pending = 0  # accepted sockets not yet connections
        self._sweep: asyncio.TimerHandle | None = None
        self._stopping: asyncio.Event | None = None
        self._fd_refused = 0  # since the last WARNING
        self._fd_warned_at = -FD_WARNING_INTERVAL

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self, host: str, port: int, reuse_port: bool = False) -> None:
        """Listen on every address `host` resolves to (as asyncio's create_server does). `reuse_port`:
        share the port with other processes that bind it so (SO_REUSEPORT: the kernel spreads new
        connections over them; the workers of `seawall run --workers N`)."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        sockets: list[socket.socket] = []
        try:
            for family, kind, proto, address in _unique(infos):
                sock = socket.socket(family, kind, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(BACKLOG)
                sock.setblocking(False)
        except OSError:
            for sock in sockets:
                sock.close()
            raise
        self._acceptors = [_Acceptor(self, sock) for sock in sockets]
        for acceptor in self._acceptors:
            acceptor.start()
        self._sweep = loop.call_later(self.limits.sweep_interval, self._run_sweep)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) of each listening socket, the port the one bound (port 0 picks a free one)."""
        return [acceptor.address for acceptor in self._acceptors]

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    async def stop(self, timeout: float) -> None:  # noqa: ASYNC109 - a drain budget, not a call timeout
        """Stop accepting (new connections are refused), close idle connections, let requests in flight
        be answered (with `Connection: close`) for up to `timeout` seconds, then abort what is left."""
        for acceptor in self._acceptors:
            acceptor.stop()
        self._acceptors = []
        self._stopping = asyncio.Event()
        for connection in list(self._connections):
            connection.shut()
        self._check_stopped()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._stopping.wait()
        for connection in list(self._connections):
            connection.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None

    def _check_stopped(self) -> None:
        if self._stopping is not None and not self._connections and not self._tasks:
            self._stopping.set()

    # -- connections -------------------------------------------------------------------------------
    def full(self) -> bool:
        cap = self.limits.max_connections
        return cap is not None and len(self._connections) + self._pending >= cap

    def adopt(self, sock: socket.socket) -> None:
        """Turn an accepted socket into a connection on the running loop's transport."""
        sock.setblocking(False)
        with contextlib.suppress(OSError):  # answers go out as written, not after Nagle's delay
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._pending += 1
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.connect_accepted_socket(lambda: _Connection(self), sock))
        self._tasks.add(task)
        task.add_done_callback(self._adopted)

    def _adopted(self, task: asyncio.Task[Any]) -> None:
        self._pending -= 1
        self._forget_task(task)
        if not task.cancelled() and task.exception() is not None:  # the transport closed the socket
            log.debug("connection set-up failed", extra={"fields": {"listener": self.name}})

    def track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._forget_task)

    def _forget_task(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._check_stopped()

    def joined(self, connection: _Connection) -> None:
        self._connections.add(connection)

    def left(self, connection: _Connection) -> None:
        self._connections.discard(connection)
        self._check_stopped()

    def refused(self, reason: str, count: int = 1) -> None:
        if count:
            self._metrics.listener_refused.labels(self.name, reason).inc(count)

    def out_of_fds(self, error: OSError, refused: int, shed: bool) -> None:
        """Count connections closed for lack of file descriptors; say so at most every interval, also
        when none could be closed (`shed` False: no descriptor to accept them on, so they wait)."""
        if shed and not refused:
            return  # accept() fails so before it looks for a connection: none was waiting
        self.refused("fd_exhausted", refused)
        self._fd_refused += refused
        now = time.monotonic()
        if now - self._fd_warned_at < FD_WARNING_INTERVAL:
            return
        self._fd_warned_at = now
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        log.warning(
            "listener out of file descriptors: waiting connections closed at once",
            extra={
                "fields": {
                    "listener": self.name,
                    "error": errno.errorcode.get(error.errno or 0, str(error.errno)),
                    "refused": self._fd_refused,
                    "shed": shed,
                    "open_connections": len(self._connections) + self._pending,
                    "fd_limit": soft,
                }
            },
        )
        self._fd_refused = 0

    def _run_sweep(self) -> None:
        # The next sweep first: a failing check must not end the deadlines of every other connection.
        self._sweep = asyncio.get_running_loop().call_later(self.limits.sweep_interval, self._run_sweep)
        now = time.monotonic()
        for connection in list(self._connections):
            connection.check(now)


_Address = tuple[int, int, int, Any]  # family, type, protocol, socket address


def _unique(infos: Iterable[tuple[int, int, int, str, Any]]) -> list[_Address]:
    seen: list[_Address] = []
    for family, kind, proto, _, address in infos:
        entry = (family, kind, proto, address)
        if entry not in seen:
            seen.append(entry)
    return seen


def _open_reserve() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


class _Acceptor:
    """Accepts connections on one listening socket. Its own accept loop, so that running out of file
    descriptors is seen: asyncio's loop reports it only to the loop's exception handler and stops
    accepting for a second; uvloop's (libuv) closes the waiting connections and tells no one."""

    def __init__(self, server: HttpServer, sock: socket.socket) -> None:
        self._server = server
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        host, port = sock.getsockname()[:2]
        self.address = (str(host), int(port))
        self._reserve = _open_reserve()  # freed for a moment to accept (and close) when out of descriptors
        self._retry: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._retry = None
        if self._reserve is None:  # lost when out of descriptors, or never had (none left at start)
            self._reserve = _open_reserve()
        self._loop.add_reader(self._sock.fileno(), self._accept)

    def stop(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
        else:
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None

    def _pause(self) -> None:
        self._loop.remove_reader(self._sock.fileno())
        self._retry = self._loop.call_later(RESOURCE_RETRY, self.start)

    def _accept(self) -> None:
        server = self._server
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno in _OUT_OF_FDS:
                    self._shed(error)
                elif error.errno in _OUT_OF_MEMORY:
                    log.warning(
                        "listener cannot accept: out of kernel memory",
                        extra={"fields": {"listener": server.name, "error": errno.errorcode[error.errno]}},
                    )
                    self._pause()
                elif error.errno == errno.ECONNABORTED:
                    continue  # the client gave up while waiting
                else:
                    log.warning(
                        "listener cannot accept",
                        extra={"fields": {"listener": server.name, "error": str(error)}},
                    )
                    self._pause()
                return
            if server.full():
                sock.close()
                server.refused("cap")
                continue
            server.adopt(sock)

    def _shed(self, error: OSError) -> None:
        """Out of descriptors: accept each waiting connection on the reserve and close it at once.

        Another thread (the default executor's getaddrinfo, Redis) or, with ENFILE, another process may
        take the descriptor the reserve frees: the connections then wait, and the listener says so and
        pauses, trying to get its reserve back each time it resumes."""
        refused = 0
        shed = True
        if self._reserve is None:
            self._reserve = _open_reserve()
        while refused < ACCEPT_BATCH and self._reserve is not None:
            os.close(self._reserve)
            try:
                sock = self._sock.accept()[0]
            except (BlockingIOError, InterruptedError):
                self._reserve = _open_reserve()
                break  # none waiting any more
            except OSError as failure:
                self._reserve = _open_reserve()
                if failure.errno == errno.ECONNABORTED:
                    continue  # that client gave up waiting: the next one
                shed = False  # the freed descriptor was taken already (EMFILE, ENFILE), or worse
                error = failure
                break
            sock.close()
            refused += 1
            self._reserve = _open_reserve()
        if self._reserve is None:
            shed = False
        self._server.out_of_fds(error, refused, shed)
        if not shed:
            self._pause()  # no way to shed: do not spin on a socket that stays readable


class _Refused(Exception):
    """Raised in a parser callback to stop reading a request that is refused."""

    def __init__(self, error: BadRequest) -> None:
        super().__init__(error.detail)
        self.error = error


class _Stop(Exception):
    """Raised in a parser callback when a request begins on a connection that reads no more."""


class _Refusal:
    __slots__ = ("error", "request")

    def __init__(self, error: BadRequest, request: Request) -> None:
        self.error = error
        self.request = request


class _Connection(asyncio.Protocol):
    """One client connection: parses requests, queues them, answers them in order under deadlines."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._site = server.site
        self._limits = server.limits
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._peer = "unknown"
        self._queue: deque[Request | _Refusal] = deque()
        self._queued_bytes = 0
        self._busy = False  # a request is being handled or its answer written
        self._reading = True  # a request has begun and is incomplete (or none came yet)
        self._since = time.monotonic()  # start of the read or keep-alive clock
        self._write_since: float | None = None  # an answer is waiting for the client to read
        self._closed_at: float | None = None
        self._closing = False  # read no more requests: answer those queued, then close
        self._linger = False  # a request was refused: its client may still be sending it
        self._read_paused = False
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._upgrading = False  # an upgrade request was read: what follows it is the new protocol's
        self._upgrade_tail = b""
        self._reset_message()

    def _reset_message(self) -> None:
        self._in_head = False
        self._head_began = False  # the head in progress began in the chunk being fed
        self._head_done = False
        self._head_bytes = 0  # the target and the fields complete so far, as sent
        self._head_read = 0  # bytes read after the chunk the head began in, while it was incomplete
        self._target = b""
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._headers = _EMPTY_HEADERS
        self._body: list[bytes] = []
        self._body_size = 0
        self._method = "UNKNOWN"
        self._version = ""
        self._keep_alive = True
        self._upgrade = False
        self._expect_continue = False

    @property
    def _log_fields(self) -> dict[str, Any]:
        return {"fields": {"listener": self._server.name, "client": self._peer}}

    # -- asyncio.Protocol --------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports don't subclass asyncio's
        self.transport.set_write_buffer_limits(high=self._limits.write_piece)
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        self._since = time.monotonic()
        self._server.joined(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._queue.clear()
        self._wake_writer()
        self._server.left(self)

    def eof_received(self) -> bool:
        # The client sends nothing more: answer what it sent (half-close), then close.
        self._closing = True
        return self._busy or bool(self._queue)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writer()

    def data_received(self, data: bytes) -> None:
        if self._upgrading:
            self._keep_for_upgrade(data)
            return
        if self._closing:
            return
        self._head_began = False  # set by on_message_begin if a head begins in this chunk
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # The upgrade request is queued; nothing after it is read as HTTP. Its answer ends the
            # connection, or a handover gives it, with these bytes, to the new protocol.
            self._closing = True
            self._upgrading = True
            self._keep_for_upgrade(data[upgrade.args[0] :] if upgrade.args else b"")
        except httptools.HttpParserCallbackError as error:
            cause = error.__context__
            if isinstance(cause, _Refused):
                self._refuse(cause.error)
            elif not isinstance(cause, _Stop):
                log.error(
                    "request parsing failed",
                    exc_info=cause,
                    extra={"fields": {"listener": self._server.name}},
                )
                self._refuse(BadRequest(MALFORMED))
        except httptools.HttpParserError:
            if not self._closing:  # bytes after a `Connection: close` request are not read, so not wrong
                self._refuse(BadRequest(MALFORMED))
        else:
            if not self._in_head:
                return
            if not self._head_began:
                # The head began before this chunk and is still incomplete: all of the chunk is head.
                # This bounds what llhttp buffers of a field not yet complete (no callback for it yet).
                self._head_read += len(data)
            if self._head_read > MAX_HEAD_BYTES:
                self._refuse(BadRequest(HEAD_TOO_LARGE))
            elif not self._raw_headers and data[-1:] == b"\n" and self._versionless(data):
                # A request line ended without a version (HTTP/0.9): llhttp would wait for headers
                # that such a client never sends.
                self._refuse(BadRequest("HTTP/1.1 or HTTP/1.0 required"))

    def _keep_for_upgrade(self, data: bytes) -> None:
        """Hold what a client sent after its upgrade request; stop reading past MAX_HEAD_BYTES of it."""
        self._upgrade_tail += data
        if len(self._upgrade_tail) > MAX_HEAD_BYTES and not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()

    def _versionless(self, data: bytes) -> bool:
        """Whether `data` ends with this request's line, and the line ends at its target."""
        end = len(data) - (2 if data.endswith(b"\r\n") else 1)
        line = data[data.rfind(b"\n", 0, end) + 1 : end]
        return line.endswith(self._target) and line.startswith(self._parser.get_method() + b" ")

    # -- httptools callbacks -----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._closing:
            raise _Stop
        self._reset_message()
        self._in_head = True
        self._head_began = True
        self._reading = True
        if not self._busy:
            self._since = time.monotonic()

    def on_url(self, piece: bytes) -> None:
        self._count_head(len(piece))
        self._target += piece
        if len(self._target) > MAX_TARGET_BYTES:
            raise _Refused(BadRequest(f"request target over {MAX_TARGET_BYTES} bytes"))

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head_done:
            return  # a chunked body's trailer fields: framing, not request headers
        if len(self._raw_headers) >= MAX_HEADERS:
            raise _Refused(BadRequest(f"over {MAX_HEADERS} header fields"))
        self._count_head(len(name) + len(value) + FIELD_FRAMING)
        self._raw_headers.append((name, value))

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _Refused(BadRequest(HEAD_TOO_LARGE))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_done = True
        parser = self._parser
        self._method = parser.get_method().decode("ascii")
        version = parser.get_http_version()
        if version not in VERSIONS:
            raise _Refused(BadRequest("HTTP/1.1 or HTTP/1.0 required"))
        self._version = version
        self._keep_alive = parser.should_keep_alive()
        self._upgrade = parser.should_upgrade() and self._method != "CONNECT"
        headers = CIMultiDict(
            [
                (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
                for name, value in self._raw_headers
            ]
        )
        self._headers = CIMultiDictProxy(headers)
        hosts = len(headers.getall("Host", ()))
        if hosts > 1 or (hosts == 0 and version == "1.1"):
            raise _Refused(BadRequest("exactly one Host header required"))
        length = headers.get("Content-Length")
        size = int(length) if length is not None else 0  # llhttp checked it is digits
        chunked = "Transfer-Encoding" in headers
        limit = self._limits.max_body_bytes
        if size > limit:
            raise _Refused(BadRequest(f"request body over the {limit}-byte limit"))
        if parser.should_upgrade() and self._method != "CONNECT" and (size or chunked):
            # llhttp hands an upgrade request's body over as the new protocol's bytes: it cannot be
            # proxied as a request with that body.
            raise _Refused(BadRequest("a protocol upgrade with a request body"))
        expect = headers.get("Expect")
        if expect is not None and (size or chunked) and version == "1.1" and expect.lower() == "100-continue":
            self._expect_continue = True
            if not self._busy:
                self._send_continue()

    def on_body(self, chunk: bytes) -> None:
        self._body_size += len(chunk)
        limit = self._limits.max_body_bytes
        if self._body_size > limit:
            raise _Refused(BadRequest(f"request body over the {limit}-byte limit"))
        self._body.append(chunk)

    def on_message_complete(self) -> None:
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        request = Request(
            self._method,
            self._target.decode("utf-8", "surrogateescape"),
            self._version,
            self._headers,
            body,
            self._peer,
            time.monotonic(),
            self._keep_alive,
            self._upgrade,
        )
        if not self._keep_alive:
            self._closing = True  # nothing after a `Connection: close` request is read
        self._reading = False
        self._expect_continue = False
        self._enqueue(request)

    # -- requests in, answers out ------------------------------------------------------------------
    def _refuse(self, error: BadRequest) -> None:
        """Refuse the request being read: answered in its turn, then the connection closes."""
        self._closing = True
        self._linger = True
        self._reading = False
        self._in_head = False
        self._expect_continue = False
        partial = Request(
            self._method, "/", self._version, self._headers, b"", self._peer, time.monotonic(), False
        )
        self._enqueue(_Refusal(error, partial))

    def _enqueue(self, item: Request | _Refusal) -> None:
        self._queue.append(item)
        if isinstance(item, Request):
            self._queued_bytes += len(item.body)
        if not self._busy:
            self._next()
        elif not self._read_paused and (
            len(self._queue) >= MAX_QUEUED or self._queued_bytes > self._limits.max_body_bytes
        ):
            self._read_paused = True
            if self.transport is not None:
                self.transport.pause_reading()

    def _next(self) -> None:
        item = self._queue.popleft()
        if isinstance(item, Request):
            self._queued_bytes -= len(item.body)
        self._busy = True
        self._server.track(asyncio.get_running_loop().create_task(self._serve(item)))

    async def _serve(self, item: Request | _Refusal) -> None:
        close = True
        try:
            if isinstance(item, _Refusal):
                request = item.request
                answer = self._site.refuse(item.error, request)
            else:
                request = item
                try:
                    handled = await self._site.handle(request)
                except Exception:  # a bug: the client still gets an answer, in the site's format
                    log.exception(
                        "unexpected error answering a request",
                        extra={"fields": {"listener": self._server.name}},
                    )
                    request.keep_alive = False
                    handled = self._site.refuse(SeawallError("internal error in seawall"), request)
                if isinstance(handled, Handover):
                    await self._hand_over(handled, request)
                    return
                answer = handled
            # The last answer on the connection says so: the client asked, or nothing more is read.
            close = not request.keep_alive or (self._closing and not self._queue)
            close = await self._write(answer, request, close)
        finally:
            self._answered(close)

    async def _hand_over(self, handover: Handover, request: Request) -> None:
        """Give the connection to the handover's protocol: the request head replayed, then what followed."""
        if self._write_paused:
            await self._drained()  # the answers before it are the client's first
        transport = self.transport
        if transport is None or self._closed_at is not None or not request.upgrade:
            handover.abandoned()
            return
        protocol = handover.protocol()
        self.transport = None  # from here on, this object lets go of the connection
        self._queue.clear()
        self._server.left(self)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(encode_head(request) + self._upgrade_tail)
        self._upgrade_tail = b""
        if self._read_paused:
            transport.resume_reading()

    def _answered(self, close: bool) -> None:
        self._busy = False
        self._write_since = None
        if self.transport is None:
            return
        if close:
            self.close()
        elif self._queue:
            self._next()
        elif self._closing:
            self.close()
        else:
            self._since = time.monotonic()  # the next request's read clock, or the keep-alive clock
            if self._read_paused:
                self._read_paused = False
                self.transport.resume_reading()
            if self._expect_continue:
                self._send_continue()

    def _send_continue(self) -> None:
        self._expect_continue = False
        if self.transport is not None:
            self.transport.write(CONTINUE)

    async def _write(self, answer: Answer, request: Request, close: bool) -> bool:
        """Write the answer; return whether it announced `Connection: close` (the connection then
        closes after it: a pipelined request behind it is never handled)."""
        if self.transport is None:
            return close  # the client left; the answer has nowhere to go
        try:
            head, body = encode_answer(answer, request.method == "HEAD", close, request.version == "1.0")
        except ValueError:  # a header value with a line break: never written as is
            log.error(
                "answer with a malformed header refused", extra={"fields": {"listener": self._server.name}}
            )
            request.keep_alive = False
            close = True
            head, body = encode_answer(
                self._site.refuse(SeawallError("internal error in seawall"), request), False, True, False
            )
        transport = self.transport
        piece = self._limits.write_piece
        if len(body) <= piece:
            transport.write(head + body)  # a typical answer: one write, one send
            if self._write_paused:
                self._write_since = time.monotonic()
                await self._drained()
            return close
        self._write_since = time.monotonic()
        transport.write(head)
        view = memoryview(body)
        for start in range(0, len(body), piece):
            if self._write_paused:
                await self._drained()
                if self.transport is None:
                    return close
            transport.write(view[start : start + piece])
        if self._write_paused:
            await self._drained()
        return close

    async def _drained(self) -> None:
        while self._write_paused and self.transport is not None:
            self._drain = asyncio.get_running_loop().create_future()
            await self._drain

    def _wake_writer(self) -> None:
        drain = self._drain
        if drain is not None:
            self._drain = None
            if not drain.done():
                drain.set_result(None)

    # -- deadlines and closing ---------------------------------------------------------------------
    def check(self, now: float) -> None:
        """Enforce the deadlines (called by the server's sweep)."""
        limits = self._limits
        if self._closed_at is not None:  # closing flushes what is buffered: within the write deadline
            if now - self._closed_at > limits.write_timeout:
                self.abort()
        elif self._write_since is not None:
            if now - self._write_since > limits.write_timeout:
                log.info("client did not read its answer in time: connection aborted", extra=self._log_fields)
                self.abort()
        elif self._busy:
            return  # the client waits for Seawall
        elif self._reading:
            if now - self._since > limits.read_timeout:
                self._read_timed_out()
        elif now - self._since > limits.keepalive_timeout:
            self.close()

    def _read_timed_out(self) -> None:
        if self._head_done:  # the head came, the body did not: say so
            self._refuse(BadRequest("request body not received in time"))
        else:
            self.close()

    def shut(self) -> None:
        """Read no more requests; close now if none is being answered."""
        self._closing = True
        if not self._busy and not self._queue:
            self.close()

    def close(self) -> None:
        transport = self.transport
        self._closing = True
        if transport is not None and self._closed_at is None:
            self._closed_at = time.monotonic()
            if self._linger and transport.can_write_eof():
                # Closing with unread bytes makes the kernel send a reset, which can destroy the refusal
                # before the client reads it: end the answer, read (and drop) what the client still
                # sends until it closes, or until the write deadline (the sweep aborts).
                transport.write_eof()
                if self._read_paused:
                    self._read_paused = False
                    transport.resume_reading()
            else:
                transport.close()

    def abort(self) -> None:
        """Drop the connection now: a reset, and what the kernel still holds for the client freed too."""
        transport = self.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # linger 0: close resets rather than flushing to a non-reader
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        transport.abort()


class _DateHeader:
    """The Date header's value, formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def __call__(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._value = formatdate(second, usegmt=True)
        return self._value


_http_date = _DateHeader()


def encode_answer(answer: Answer, head_request: bool, close: bool, http10: bool) -> tuple[bytes, bytes]:
    """The status line and headers to write, and the body (empty where HTTP says there is none).

    Raises ValueError when a header would carry a line break (it would split the answer)."""
    status = answer.status
    headers = answer.headers
    body = answer.body
    reason = answer.reason if answer.reason is not None else _REASONS.get(status, "")
    parts = [f"HTTP/1.1 {status} {reason}\r\n"]
    announced = None
    if any(name in headers for name in _FRAMING):  # rare: the forwarder drops these, local answers lack them
        announced = headers.get("Content-Length")
        parts.extend(f"{name}: {value}\r\n" for name, value in headers.items() if name.lower() not in _FRAMED)
    else:
        parts.extend(f"{name}: {value}\r\n" for name, value in headers.items())
    if status < 200 or status == 204:
        body = b""
    elif head_request or status == 304:
        # No body, but the length a GET would carry: the exchange's own, else this answer's.
        if announced is not None:
            parts.append(f"Content-Length: {announced}\r\n")
        elif body:
            parts.append(f"Content-Length: {len(body)}\r\n")
        body = b""
    else:
        parts.append(f"Content-Length: {len(body)}\r\n")
    if "Date" not in headers:
        parts.append(f"Date: {_http_date()}\r\n")
    if close:
        parts.append("Connection: close\r\n")
    elif http10:
        parts.append("Connection: keep-alive\r\n")
    parts.append("\r\n")
    text = "".join(parts)
    lines = len(parts)
    if text.count("\n") != lines or text.count("\r") != lines:
        raise ValueError("a header carries a line break")
    return text.encode("utf-8", "surrogateescape"), body
