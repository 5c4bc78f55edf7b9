"""Transparent forwarding: what the bot sends reaches the exchange byte for byte, and back."""

from __future__ import annotations

import gzip
import socket

import aiohttp
import pytest
from aiohttp import web
from fixtures_proxy import RecordingUpstream, StartSeawall
from yarl import URL


async def _raw_exchange(url: str, request: bytes) -> bytes:
    """Send raw bytes to a listener and read its whole answer (the connection is closed by the request)."""
    import asyncio

    host, port = URL(url).host, URL(url).port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data


async def test_query_and_body_reach_upstream_byte_for_byte(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    seawall = await start_seawall("orderly", upstream.url)
    raw_path = "/v1/orders?symbol=PERP_ETH_USDC&ids=1%2C2&note=a%20b&c=%7e&d=%2F&z=1&a=2"
    body = b'{"symbol": "PERP_ETH_USDC",  "order_price": 1521.030, "side":"BUY"}'
    async with aiohttp.ClientSession() as session:
        url = URL(seawall.proxy_url + raw_path, encoded=True)
        async with session.request("PUT", url, data=body, headers={"Content-Type": "application/json"}) as r:
            assert r.status == 200
    seen = upstream.seen[-1]
    assert seen.method == "PUT"
    assert seen.raw_path == raw_path
    assert seen.body == body


async def test_any_method_and_unknown_path_go_through(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    seawall = await start_seawall("woox", upstream.url)
    async with aiohttp.ClientSession() as session:
        for method in ("GET", "POST", "PATCH", "DELETE", "OPTIONS"):
            async with session.request(method, seawall.proxy_url + "/v9/not/a/known/path") as r:
                assert r.status == 200
    assert [s.method for s in upstream.seen] == ["GET", "POST", "PATCH", "DELETE", "OPTIONS"]
    assert all(s.raw_path == "/v9/not/a/known/path" for s in upstream.seen)


async def test_headers_pass_except_hop_by_hop_and_host_is_the_upstreams(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    seawall = await start_seawall("woox", upstream.url)
    port = URL(seawall.proxy_url).port
    form = b"order_price=9000&order_quantity=0.11&order_type=LIMIT&side=BUY&symbol=SPOT_BTC_USDT"
    head = (
        "POST /v1/order HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        "x-api-key: AbmyVJGUpN064ks5ELjLfA==\r\n"
        "x-api-timestamp: 1578565539808\r\n"
        "x-api-signature: 20da0852f73b20da0208c7e627975a59ff072379883d8457d03104651032033d\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        "X-Repeated: one\r\n"
        "X-Repeated: two\r\n"
        "Connection: close, X-Private-Hop\r\n"
        "X-Private-Hop: secret-to-this-hop\r\n"
        "Keep-Alive: timeout=5\r\n"
        "Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"
        "TE: trailers\r\n"
        f"Content-Length: {len(form)}\r\n"
        "\r\n"
    ).encode()
    request = head + form
    answer = await _raw_exchange(seawall.proxy_url, request)
    assert answer.startswith(b"HTTP/1.1 200")
    seen = upstream.seen[-1]
    assert seen.headers["Host"] == URL(upstream.url).raw_authority
    assert seen.headers.getall("X-Repeated") == ["one", "two"]
    assert (
        seen.headers["x-api-signature"] == "20da0852f73b20da0208c7e627975a59ff072379883d8457d03104651032033d"
    )
    for hop in ("X-Private-Hop", "Keep-Alive", "Proxy-Authorization", "TE"):
        assert hop not in seen.headers
    # Nothing the aiohttp client would add on its own.
    for added in ("User-Agent", "Accept", "Accept-Encoding"):
        assert added not in seen.headers
    assert seen.body == form


async def test_answer_status_headers_and_compressed_body_come_back_unchanged(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    payload = b'{"success":true,"data":{"rows":[1,2,3]},"timestamp":1700000000000}'
    compressed = gzip.compress(payload)

    async def gzip_answer(request: web.BaseRequest, body: bytes) -> web.StreamResponse:
        response = web.Response(status=202, reason="Accepted For Real", body=compressed)
        response.headers["Content-Encoding"] = "gzip"
        response.headers["Content-Type"] = "application/json"
        response.headers.add("X-Exchange-Trace", "t1")
        response.headers.add("X-Exchange-Trace", "t2")
        return response

    upstream.responder = gzip_answer
    seawall = await start_seawall("orderly", upstream.url)
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.get(seawall.proxy_url + "/v1/positions") as r:
            assert r.status == 202
            assert r.reason == "Accepted For Real"
            assert r.headers["Content-Encoding"] == "gzip"
            assert r.headers.getall("X-Exchange-Trace") == ["t1", "t2"]
            assert await r.read() == compressed


async def test_compressed_request_body_is_forwarded_compressed(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    seawall = await start_seawall("orderly", upstream.url)
    body = gzip.compress(b'{"symbol":"PERP_ETH_USDC"}')
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        async with session.post(seawall.proxy_url + "/v1/order", data=body, headers=headers) as r:
            assert r.status == 200
    assert upstream.seen[-1].body == body
    assert upstream.seen[-1].headers["Content-Encoding"] == "gzip"


async def test_chunked_request_body_is_forwarded_whole(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    seawall = await start_seawall("orderly", upstream.url)

    async def chunks():  # type: ignore[no-untyped-def]
        for part in (b'{"symbol":', b'"PERP_ETH_USDC",', b'"side":"BUY"}'):
            yield part

    async with aiohttp.ClientSession() as session:
        async with session.post(seawall.proxy_url + "/v1/order", data=chunks()) as r:
            assert r.status == 200
    assert upstream.seen[-1].body == b'{"symbol":"PERP_ETH_USDC","side":"BUY"}'
    assert "Transfer-Encoding" not in upstream.seen[-1].headers


async def test_a_get_without_body_is_sent_without_body_or_content_type(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    seawall = await start_seawall("orderly", upstream.url)
    async with aiohttp.ClientSession() as session:
        async with session.get(seawall.proxy_url + "/v1/client/holding") as r:
            assert r.status == 200
    seen = upstream.seen[-1]
    assert seen.body == b""
    assert "Content-Type" not in seen.headers
    assert seen.headers.get("Content-Length") in (None, "0")


async def test_keep_alive_pool_reuses_upstream_connections(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    peers: set[object] = set()

    async def note_peer(request: web.BaseRequest, body: bytes) -> web.StreamResponse:
        peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        return web.json_response({"success": True})

    upstream.responder = note_peer
    seawall = await start_seawall("orderly", upstream.url)
    async with aiohttp.ClientSession() as session:
        for _ in range(20):
            async with session.get(seawall.proxy_url + "/v9/unlimited") as r:
                assert r.status == 200
    assert len(peers) == 1


@pytest.mark.parametrize("family", [socket.AF_INET])
async def test_redirects_are_passed_back_not_followed(
    upstream: RecordingUpstream, start_seawall: StartSeawall, family: int
) -> None:
    async def redirect(request: web.BaseRequest, body: bytes) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": "http://127.0.0.1:1/elsewhere"})

    upstream.responder = redirect
    seawall = await start_seawall("orderly", upstream.url)
    async with aiohttp.ClientSession() as session:
        async with session.get(seawall.proxy_url + "/v1/public/info", allow_redirects=False) as r:
            assert r.status == 302
            assert r.headers["Location"] == "http://127.0.0.1:1/elsewhere"
    assert len(upstream.seen) == 1


async def test_expect_100_continue_is_not_forwarded(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    # Seawall reads the whole body before forwarding: passed on, Expect would have the exchange send a
    # 100 Continue nobody waits for.
    seawall = await start_seawall("orderly", upstream.url)
    body = b'{"symbol":"PERP_ETH_USDC"}'
    async with aiohttp.ClientSession() as session:
        async with session.post(seawall.proxy_url + "/v1/order", data=body, expect100=True) as r:
            assert r.status == 200
    assert "Expect" not in upstream.seen[-1].headers
    assert upstream.seen[-1].body == body
