"""The proxy listener under pressure: deadlines for every request and every answer, HTTP it refuses, and
the details curl-style clients and HEAD requests depend on. Real sockets on loopback throughout."""

from __future__ import annotations

import ast
import asyncio
import errno
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from fixtures_proxy import RecordingUpstream, StartSeawall, wait_until, wait_until_async
from prometheus_client.parser import text_string_to_metric_families
from rawhttp import open_raw, raw_request, split_answer
from yarl import URL

import proxy

COMPLETE = b"GET /v1/positions HTTP/1.1\r\nHost: x\r\n\r\n"


def split_answers(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Consecutive answers on one connection (none of them to a HEAD), framed by Content-Length."""
    answers = []
    while data:
        head, separator, rest = data.partition(b"\r\n\r\n")
        status, headers, _ = split_answer(head + separator)
        length = int(headers.get("content-length", "0"))
        answers.append((status, headers, rest[:length]))
        data = rest[length:]
    return answers


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status, headers, _ = split_answer(head)
    return status, headers, await reader.readexactly(int(headers.get("content-length", "0")))


async def test_a_half_request_pipelined_behind_a_complete_one_is_cut_at_the_read_timeout(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    # keepalive_timeout stays at 75 s: only the read deadline can end these connections this soon.
    seawall = await start_seawall("orderly", upstream.url, server={"read_timeout": 0.3})
    halves = [
        (b"GET /v1/orders HTTP/1.1\r\nHost: x\r\nX-Slow: ", [200]),  # head never completes: closed
        (b"POST /v1/order HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{", [200, 400]),  # nor the body
    ]
    for half, statuses in halves:
        started = time.monotonic()
        answers = split_answers(await raw_request(seawall.proxy_url, COMPLETE + half, timeout=5))
        elapsed = time.monotonic() - started
        assert [status for status, _, _ in answers] == statuses
        assert 0.3 <= elapsed < 1.5, elapsed
    assert "not received in time" in json.loads(answers[1][2])["message"]
    assert [seen.raw_path for seen in upstream.seen] == ["/v1/positions", "/v1/positions"]


async def test_the_read_clock_of_a_pipelined_request_starts_when_its_turn_comes(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    # The first answer takes longer than the read timeout. The half request behind it is not held against
    # the bot while Seawall is busy (its first answer arrives), but is cut a read timeout after that.
    async def slow(request: web.BaseRequest, body: bytes) -> web.StreamResponse:
        await asyncio.sleep(0.5)  # the exchange's own latency
        return web.json_response({"success": True})

    upstream.responder = slow
    seawall = await start_seawall("orderly", upstream.url, server={"read_timeout": 0.3})
    started = time.monotonic()
    data = await raw_request(
        seawall.proxy_url, COMPLETE + b"GET /v1/orders HTTP/1.1\r\nHost: x\r\n", timeout=5
    )
    elapsed = time.monotonic() - started
    assert [status for status, _, _ in split_answers(data)] == [200]
    assert 0.5 + 0.3 <= elapsed < 2.0, elapsed
    assert len(upstream.seen) == 1


async def test_a_bot_that_never_reads_its_answer_is_cut_off_while_others_are_served(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    big = b"x" * 8_000_000

    async def answers(request: web.BaseRequest, body: bytes) -> web.StreamResponse:
        if request.path == "/v1/big":
            return web.Response(body=big)
        return web.json_response({"success": True})

    upstream.responder = answers
    write_timeout = 0.5
    seawall = await start_seawall(
        "orderly",
        upstream.url,
        server={"write_timeout": write_timeout, "write_buffer_bytes": 64 * 1024},
        ratelimit={"enabled": False},  # the other bots ask as often as they can
    )
    url = URL(seawall.proxy_url)
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a bot that reads nothing, fills at once
    stalled.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(stalled, (url.host, url.port))
        await loop.sock_sendall(stalled, b"GET /v1/big HTTP/1.1\r\nHost: x\r\n\r\n")
        await wait_until(lambda: len(upstream.seen) == 1)
        started = time.monotonic()
        async with aiohttp.ClientSession() as session:
            while time.monotonic() - started < write_timeout:  # other bots, while that answer is stuck
                sent = time.monotonic()
                async with session.get(seawall.proxy_url + "/v1/positions") as r:
                    assert r.status == 200
                assert time.monotonic() - sent < 0.5
        # Seawall gives up on the stalled bot: it resets the connection, freeing what it buffered for it.
        await wait_until(
            lambda: stalled.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNRESET, timeout=5
        )
        assert time.monotonic() - started < write_timeout + 2.0  # not the keep-alive timeout (75 s)
        assert seawall.proxy_server is not None
        await wait_until(lambda: seawall.proxy_server.open_connections == 0)  # type: ignore[union-attr]
    finally:
        stalled.close()


async def test_http_09_and_unknown_versions_are_refused_in_the_exchange_format(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    seawall = await start_seawall("orderly", upstream.url)
    for request in (
        b"GET /v1/public/info\r\n",  # an HTTP/0.9 client sends this line and waits
        b"GET /v1/public/info\r\n\r\n",
        b"GET /v1/public/info HTTP/0.9\r\nHost: x\r\n\r\n",
        b"GET /v1/public/info HTTP/2.0\r\nHost: x\r\n\r\n",
    ):
        answer = await raw_request(seawall.proxy_url, request, timeout=2)
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:40]
        _, headers, body = split_answer(answer)
        assert headers["x-seawall"] == "bad-request"
        assert headers["connection"] == "close"
        payload = json.loads(body)
        assert payload["code"] == -1005
        assert "HTTP/1.1 or HTTP/1.0 required" in payload["message"]
    assert upstream.seen == []
    # Behind a complete request on the same connection too.
    answers = split_answers(await raw_request(seawall.proxy_url, COMPLETE + b"GET /v1/public/info\r\n", 2))
    assert [status for status, _, _ in answers] == [200, 400]
    assert [seen.raw_path for seen in upstream.seen] == ["/v1/positions"]


async def test_expect_100_continue_is_answered_at_once(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    seawall = await start_seawall("orderly", upstream.url, server={"max_body_bytes": 1000})
    body = b'{"symbol":"PERP_ETH_USDC"}'
    reader, writer = await open_raw(seawall.proxy_url)
    head = (
        f"POST /v1/order HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode())
    # curl waits a second for this before sending the body anyway: it must come well before.
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(body)
    status, _, _ = await read_answer(reader)
    assert status == 200
    writer.close()
    assert upstream.seen[0].body == body
    assert "Expect" not in upstream.seen[0].headers

    # Over the body limit: refused at once, before the body is sent.
    over = b"POST /v1/order HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n"
    status, _, payload = split_answer(await raw_request(seawall.proxy_url, over, timeout=0.5))
    assert status == 400
    assert "1000-byte limit" in json.loads(payload)["message"]
    assert len(upstream.seen) == 1


async def test_head_answer_keeps_the_exchanges_content_length(start_seawall: StartSeawall) -> None:
    async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await reader.readuntil(b"\r\n\r\n"):
            body = b'{"success":true}'
            if head.startswith(b"HEAD "):
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1234\r\n\r\n"
                )
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    server = await asyncio.start_server(exchange, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        seawall = await start_seawall("orderly", f"http://127.0.0.1:{port}")
        reader, writer = await open_raw(seawall.proxy_url)
        writer.write(b"HEAD /v1/public/info HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        status, headers, _ = split_answer(head)
        assert status == 200
        assert headers["content-length"] == "1234"
        # No body followed the HEAD answer: the next answer on the connection starts right after it.
        writer.write(b"GET /v1/public/info HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = await read_answer(reader)
        assert (status, body) == (200, b'{"success":true}')
        writer.close()
    finally:
        server.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _get(url: str) -> tuple[int, str] | None:
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as r:
            return r.status, await r.text()
    except aiohttp.ClientError:
        return None


async def test_a_listener_out_of_file_descriptors_says_so_and_recovers(upstream: RecordingUpstream) -> None:
    limit = 64  # Seawall starts with ~17 descriptors open
    proxy_port, admin_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "SEAWALL_UPSTREAM": upstream.url,
        "SEAWALL_LISTEN": f"127.0.0.1:{proxy_port}",
        "SEAWALL_ADMIN_LISTEN": f"127.0.0.1:{admin_port}",
        "SEAWALL_PROFILE": "orderly",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "run",
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)),
    )
    assert process.stderr is not None
    proxy_url, admin_url = f"http://127.0.0.1:{proxy_port}", f"http://127.0.0.1:{admin_port}"
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        await wait_until_async(lambda: _get(admin_url + "/healthz"), timeout=15, interval=0.05)
        # Idle bots, more than Seawall has descriptors left: the last ones find it out of them.
        held = [await open_raw(proxy_url) for _ in range(limit)]
        while True:
            line = await asyncio.wait_for(process.stderr.readline(), 10)
            assert line, "seawall exited"
            entry = json.loads(line)
            if entry["level"] == "warning":
                break
        assert entry["msg"] == "listener out of file descriptors: waiting connections closed at once"
        assert entry["listener"] == "proxy" and entry["error"] == "EMFILE" and entry["refused"] >= 1
        # The bots over the limit were closed at once, not left waiting for their own timeouts.
        await wait_until(lambda: any(reader.at_eof() for reader, _ in held))
        for _, writer in held:
            writer.close()
        held = []
        # Descriptors free again: both listeners serve, and the refusals are counted.
        answer = await wait_until_async(lambda: _get(admin_url + "/metrics"), timeout=10, interval=0.05)
        samples = {
            tuple(sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(answer[1])
            for sample in family.samples
            if sample.name == "seawall_listener_refused_connections_total"
        }
        assert samples[(("listener", "proxy"), ("reason", "fd_exhausted"))] >= 1
        assert await _get(proxy_url + "/v1/positions") == (
            200,
            '{"success": true, "data": {}, "timestamp": 1}',
        )
    finally:
        for _, writer in held:
            writer.close()
        process.terminate()
        await process.wait()


def test_the_listeners_use_no_aiohttp_internals() -> None:
    """The listeners run on Seawall's own server, not aiohttp's: an aiohttp upgrade cannot break them."""
    package = Path(proxy.__file__).parent
    for name in ("httpserver", "listener", "admin", "app"):
        tree = ast.parse((package / f"{name}.py").read_text(encoding="utf-8"))
        modules = {
            alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
        }
        modules |= {
            node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
        }
        assert not [module for module in modules if module.split(".")[0] == "aiohttp"], name
