"""The listener's limits hold however a client or the machine behaves: a request head over
MAX_HEAD_BYTES is refused whatever reads it arrives in, an answer that says `Connection: close` ends its
connection, and a listener out of file descriptors says so even when it cannot close the connections
that wait. Real sockets on loopback; the descriptor tests run the listener in its own process."""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fixtures_proxy import RecordingUpstream, StartSeawall
from multidict import CIMultiDict
from rawhttp import open_raw, raw_request, split_answer

from proxy.answer import Answer
from proxy.errors import BadRequest, SeawallError
from proxy.httpserver import MAX_HEAD_BYTES, HttpServer, Limits, Request
from proxy.metrics import Metrics


def padded_head(size: int, fields: int = 1) -> bytes:
    """A GET whose head is about `size` bytes, the padding spread over `fields` header fields."""
    start = b"GET /v1/positions HTTP/1.1\r\nHost: x\r\n"
    each = (size - len(start)) // fields - len(b"X-Pad-000: \r\n")
    pads = b"".join(b"X-Pad-%03d: %s\r\n" % (index, b"a" * each) for index in range(fields))
    return start + pads + b"\r\n"


async def send_in_pieces(url: str, pieces: list[bytes]) -> bytes:
    """Send `pieces` one write (and drain) at a time, then read until the server closes."""
    reader, writer = await open_raw(url)
    try:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


def assert_head_refused(answer: bytes) -> None:
    status, headers, body = split_answer(answer)
    assert status == 400, answer[:60]
    assert headers["x-seawall"] == "bad-request"
    assert headers["connection"] == "close"
    payload = json.loads(body)
    assert payload["success"] is False and payload["code"] == -1005
    assert f"request head over {MAX_HEAD_BYTES} bytes" in payload["message"]


async def test_a_head_over_the_limit_is_refused_however_it_arrives_and_never_forwarded(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    seawall = await start_seawall("orderly", upstream.url)
    url = seawall.proxy_url
    for head in (padded_head(70_000), padded_head(200_000, fields=100)):
        assert_head_refused(await raw_request(url, head, timeout=5))  # one send
        assert_head_refused(await send_in_pieces(url, [head[:1000], head[1000:]]))  # the first read small
        assert_head_refused(await send_in_pieces(url, [head[:-10], head[-10:]]))  # the last read completes it
    # One field that never ends: refused once the reads after the one it began in pass the limit (one read
    # is at most 256 KiB), not at the read timeout.
    endless = b"GET /v1/positions HTTP/1.1\r\nHost: x\r\nX-Pad: "
    assert_head_refused(await send_in_pieces(url, [endless] + [b"a" * 65_536] * 8))
    assert upstream.seen == []
    # A head just under the limit, split over reads, is served: nothing is counted twice.
    under = padded_head(MAX_HEAD_BYTES - 2_000, fields=8)
    reader, writer = await open_raw(url)
    try:
        for piece in (under[:30_000], under[30_000:]):
            writer.write(piece)
            await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert split_answer(head)[0] == 200
    finally:
        writer.close()
    assert len(upstream.seen) == 1
    assert len(upstream.seen[0].headers["X-Pad-007"]) > 7_000


class LineBreakSite:
    """A site whose answer to /bad carries a header value with a line break (a bug in a policy or a
    handler): the server must never write it, and records every request it is asked to handle."""

    def __init__(self) -> None:
        self.handled: list[str] = []

    async def handle(self, request: Request) -> Answer:
        self.handled.append(request.target)
        if request.target == "/bad":
            return Answer(200, CIMultiDict({"X-Note": "one\r\nSet-Cookie: injected=1"}), b"{}")
        return Answer(200, CIMultiDict(), b"served")

    def refuse(self, error: SeawallError, request: Request) -> Answer:
        status = 400 if isinstance(error, BadRequest) else 500
        return Answer(status, CIMultiDict(), error.detail.encode())


@pytest.fixture
async def line_break_server() -> AsyncIterator[tuple[HttpServer, LineBreakSite]]:
    site = LineBreakSite()
    limits = Limits(
        read_timeout=10, write_timeout=10, keepalive_timeout=30, write_buffer_bytes=65536, max_body_bytes=1000
    )
    server = HttpServer("proxy", site, limits, Metrics())
    await server.start("127.0.0.1", 0)
    yield server, site
    await server.stop(1)


async def test_after_the_fallback_answer_the_pipelined_request_behind_it_is_never_handled(
    line_break_server: tuple[HttpServer, LineBreakSite],
) -> None:
    server, site = line_break_server
    host, port = server.addresses[0]
    requests = (
        b"GET /bad HTTP/1.1\r\nHost: x\r\n\r\nPOST /next HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    )
    # The server closes the connection after the answer that says so: read() ends, no timeout.
    answer = await raw_request(f"http://{host}:{port}", requests, timeout=5)
    status, headers, body = split_answer(answer)
    assert status == 500 and headers["connection"] == "close"
    assert b"injected" not in answer and body == b"internal error in seawall"
    assert answer.count(b"HTTP/1.1 ") == 1
    # The client was told the connection closes, so it treats /next as never sent (and may send it
    # elsewhere): Seawall must not have handled it.
    assert site.handled == ["/bad"]


def _limited(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


class StarvedListener:
    """The listener in its own process, whose descriptors the test uses up (tests/fd_starved_listener.py)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def ask(self, command: str) -> Any:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command.encode() + b"\n")
        await self.process.stdin.drain()
        line = await asyncio.wait_for(self.process.stdout.readline(), 10)
        assert line, "the listener process exited"
        return json.loads(line)

    async def next_warning(self, timeout: float) -> dict[str, Any]:
        assert self.process.stderr is not None
        async with asyncio.timeout(timeout):
            while True:
                line = await self.process.stderr.readline()
                assert line, "the listener process exited"
                entry: dict[str, Any] = json.loads(line)
                if entry["level"] == "warning":
                    return entry


@pytest.fixture
async def starved_listener() -> AsyncIterator[StarvedListener]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).with_name("fd_starved_listener.py")),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: _limited(64),
    )
    try:
        yield StarvedListener(process)
    finally:
        process.kill()
        await process.wait()


async def test_a_listener_started_without_a_spare_descriptor_says_so_then_sheds_once_one_frees(
    starved_listener: StarvedListener,
) -> None:
    await starved_listener.ask("exhaust")
    await starved_listener.ask("free 1")  # just enough for the listening socket: no reserve descriptor
    port = (await starved_listener.ask("listen"))["port"]
    url = f"http://127.0.0.1:{port}"
    reader, writer = await open_raw(url)  # the kernel completes it; Seawall cannot accept it
    try:
        # Nothing could be closed, and the operator hears of it all the same.
        warning = await starved_listener.next_warning(timeout=5)
        assert warning["msg"] == "listener out of file descriptors: waiting connections closed at once"
        assert (warning["listener"], warning["error"]) == ("proxy", "EMFILE")
        assert (warning["refused"], warning["shed"]) == (0, False)
        # One descriptor frees: the listener takes its reserve back and closes the waiting bot at once
        # (well before the 5 s read timeout that would end an accepted, silent connection).
        await starved_listener.ask("free 1")
        assert await asyncio.wait_for(reader.read(), 3) == b""
        assert (await starved_listener.ask("refused"))["fd_exhausted"] == 1
    finally:
        writer.close()
    # Descriptors free again: served.
    await starved_listener.ask("free 20")
    answer = await raw_request(url, b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.0\r\n\r\n", timeout=5)
    assert answer.count(b"HTTP/1.1 200 OK") == 2
