"""Local answers: whenever Seawall answers itself, it speaks the exchange's payload, code and status."""

from __future__ import annotations

import asyncio
import json
import socket

import aiohttp
from aiohttp import web
from fixtures_proxy import RecordingUpstream, StartSeawall, held_until, wait_until
from rawhttp import raw_request, split_answer


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unreachable_upstream_answers_1011_in_exchange_format(start_seawall: StartSeawall) -> None:
    seawall = await start_seawall("orderly", f"http://127.0.0.1:{_free_port()}")
    async with aiohttp.ClientSession() as session:
        async with session.post(seawall.proxy_url + "/v1/order", data=b"{}") as r:
            assert r.status == 400
            assert r.headers["X-Seawall"] == "upstream-unavailable"
            payload = await r.json()
    assert payload["success"] is False
    assert payload["code"] == -1011
    assert payload["message"].startswith("Can not place/cancel orders")


async def test_upstream_timeout_answers_1011(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    release = asyncio.Event()

    upstream.responder = held_until(release)
    seawall = await start_seawall("orderly", upstream.url, upstream={"answer_timeout": 0.3})
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(seawall.proxy_url + "/v1/positions") as r:
                assert r.status == 400
                assert r.headers["X-Seawall"] == "upstream-unavailable"
                assert (await r.json())["code"] == -1011
    finally:
        release.set()


async def test_upstream_dropping_the_connection_answers_1011(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    async def drop(request: web.BaseRequest, body: bytes) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()
        raise asyncio.CancelledError

    upstream.responder = drop
    seawall = await start_seawall("orderly", upstream.url)
    async with aiohttp.ClientSession() as session, session.get(seawall.proxy_url + "/v1/positions") as r:
        assert r.status == 400
        assert (await r.json())["code"] == -1011
    # No silent resend of the GET after the dropped connection: the exchange may have acted on it.
    assert len(upstream.seen) == 1


async def test_oversize_upstream_answer_is_refused_not_relayed(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    async def huge(request: web.BaseRequest, body: bytes) -> web.StreamResponse:
        return web.Response(body=b"x" * 300_000)

    upstream.responder = huge
    seawall = await start_seawall(
        "orderly", upstream.url, upstream={"url": upstream.url, "max_response_bytes": 100_000}
    )
    async with aiohttp.ClientSession() as session, session.get(seawall.proxy_url + "/v1/positions") as r:
        assert r.status == 500
        assert r.headers["X-Seawall"] == "upstream-invalid"
        assert (await r.json())["code"] == -1000


async def test_garbage_from_upstream_is_passed_back_and_counted_by_status(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    async def garbage(request: web.BaseRequest, body: bytes) -> web.StreamResponse:
        return web.Response(status=502, body=b"<html>bad gateway</html>", content_type="text/html")

    upstream.responder = garbage
    seawall = await start_seawall("orderly", upstream.url)
    async with aiohttp.ClientSession() as session, session.get(seawall.proxy_url + "/v1/positions") as r:
        assert r.status == 502
        assert await r.read() == b"<html>bad gateway</html>"
    assert seawall.metrics.exchange_errors.labels("positions", "", "HTTP_502")._value.get() == 1


async def test_error_payloads_are_counted_by_code_and_table_name(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    bodies = iter(
        [
            b'{"success":false,"code":-1005,"message":"order_price must be a positive number"}',
            b'{"code":"-1011","message":"The system is under maintenance.","success":false}',
            b'{"success": false, "code": -1999, "message": "new"}',
            b'{"success": false, "code": 918273645, "message": "a gateway making numbers up"}',
        ]
    )

    async def errors(request: web.BaseRequest, body: bytes) -> web.StreamResponse:
        return web.Response(status=400, body=next(bodies), content_type="application/json")

    upstream.responder = errors
    seawall = await start_seawall("orderly", upstream.url)
    async with aiohttp.ClientSession() as session:
        for _ in range(4):
            async with session.get(seawall.proxy_url + "/v1/orders") as r:
                assert r.status == 400
    counter = seawall.metrics.exchange_errors
    assert counter.labels("orders.list", "-1005", "INVALID_PARAM")._value.get() == 1
    assert counter.labels("orders.list", "-1011", "RPC_NOT_CONNECT")._value.get() == 1
    assert counter.labels("orders.list", "-1999", "UNLISTED")._value.get() == 1
    assert counter.labels("orders.list", "other", "UNLISTED")._value.get() == 1  # bounded label set


async def test_absolute_form_target_is_refused_and_never_forwarded(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    seawall = await start_seawall("orderly", upstream.url)
    for request in (
        b"GET http://169.254.169.254/latest/meta-data HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
    ):
        status, headers, body = split_answer(await raw_request(seawall.proxy_url, request))
        assert status == 400
        assert headers["x-seawall"] == "bad-request"
        assert json.loads(body)["code"] == -1005
    assert upstream.seen == []


async def test_oversize_body_is_refused_before_forwarding(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    seawall = await start_seawall("orderly", upstream.url, server={"max_body_bytes": 1000})
    async with aiohttp.ClientSession() as session:
        async with session.post(seawall.proxy_url + "/v1/order", data=b"x" * 5000) as r:
            assert r.status == 400
            assert r.headers["X-Seawall"] == "bad-request"
            assert "1000-byte limit" in (await r.json())["message"]

        async def chunks():  # type: ignore[no-untyped-def]
            for _ in range(10):
                yield b"y" * 500

        async with session.post(seawall.proxy_url + "/v1/order", data=chunks()) as r:
            assert r.status == 400
            assert (await r.json())["code"] == -1005
    assert upstream.seen == []


async def test_malformed_http_gets_an_exchange_format_answer(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    seawall = await start_seawall("orderly", upstream.url)
    for request in (
        b"\x16\x03\x01\x02\x00garbage-not-http\r\n\r\n",
        b"GET /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"GET /v1/orders HTTP/1.1\r\nHost: x\r\nBad Header Name: v\r\n\r\n",
    ):
        status, headers, body = split_answer(await raw_request(seawall.proxy_url, request))
        assert status == 400
        assert headers["x-seawall"] == "bad-request"
        assert json.loads(body) == {
            "success": False,
            "code": -1005,
            "message": "Some parameters are in wrong format for api. (seawall: malformed HTTP request)",
        }
    assert upstream.seen == []


async def test_slow_headers_are_cut_off_after_the_read_timeout(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    from rawhttp import open_raw

    seawall = await start_seawall("orderly", upstream.url, server={"read_timeout": 0.3})
    reader, writer = await open_raw(seawall.proxy_url)
    writer.write(b"GET /v1/orders HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    await writer.drain()
    closed = False
    for _ in range(100):  # keep trickling bytes, well past the deadline, until the server hangs up
        try:
            writer.write(b"a")
            await writer.drain()
            data = await asyncio.wait_for(reader.read(1), 0.05)
        except (TimeoutError, ConnectionError):
            continue
        if data == b"":
            closed = True
            break
    writer.close()
    assert closed, "a client trickling its headers was never cut off"
    assert upstream.seen == []


async def test_a_body_that_never_finishes_is_answered_and_cut_off(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    seawall = await start_seawall("orderly", upstream.url, server={"read_timeout": 0.3})
    request = b'POST /v1/order HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"symbol":'
    status, _, body = split_answer(await raw_request(seawall.proxy_url, request, timeout=5))
    assert status == 400
    assert "not received in time" in json.loads(body)["message"]
    assert upstream.seen == []


async def test_an_idle_new_connection_is_closed(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    seawall = await start_seawall("orderly", upstream.url, server={"read_timeout": 0.3})
    answer = await raw_request(seawall.proxy_url, b"", timeout=5)
    assert answer == b""


async def test_each_request_is_counted_with_its_outcome(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    seawall = await start_seawall("orderly", upstream.url)
    async with aiohttp.ClientSession() as session, session.get(seawall.proxy_url + "/v1/orders") as r:
        assert r.status == 200
    await raw_request(seawall.proxy_url, b"CONNECT a:1 HTTP/1.1\r\nHost: a\r\n\r\n")
    requests = seawall.metrics.requests
    await wait_until(lambda: requests.labels("default", "OTHER", "400", "rejected")._value.get() == 1)
    assert requests.labels("orders.list", "GET", "200", "forwarded")._value.get() == 1
