"""The baseline: a bare aiohttp pass-through proxy (no policies, no metrics).

`--client aiohttp` (the bar's baseline) forwards with aiohttp's client, set up the way a byte-exact
proxy needs it; `--client seawall` forwards with Seawall's own upstream client (proxy/upstream.py), so
the difference between it and `seawall run` is what routing, policies and metrics cost.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import uvloop
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from proxy.forward import decode_answer_head, request_head
from proxy.upstream import UpstreamClient

Handler = Callable[[web.BaseRequest], Awaitable[web.Response]]
HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "upgrade", "te"}


def aiohttp_forwarder(upstream: str) -> Handler:
    session = aiohttp.ClientSession(auto_decompress=False, skip_auto_headers=("Accept", "User-Agent"))

    async def handle(request: web.BaseRequest) -> web.Response:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        async with session.request(
            request.method, URL(upstream + request.raw_path, encoded=True), headers=headers, data=body or None
        ) as response:
            data = await response.read()
            out = {k: v for k, v in response.headers.items() if k.lower() not in HOP}
            return web.Response(status=response.status, headers=out, body=data)

    return handle


def seawall_client_forwarder(upstream: str) -> Handler:
    url = URL(upstream)
    assert url.host is not None and url.port is not None
    client = UpstreamClient(url.host, url.port, tls=None, limit=100, connect_timeout=3, max_body=1 << 24)
    host = f"{url.host}:{url.port}"

    async def handle(request: web.BaseRequest) -> web.Response:
        body = await request.read()
        length = len(body) if body or "Content-Length" in request.headers else None
        head = request_head(request.method, request.raw_path, host, CIMultiDict(request.headers), length)
        answer = await client.request(head, body, request.method == "HEAD", 10.0)
        status, reason, headers = decode_answer_head(answer)
        return web.Response(status=status, reason=reason, headers=headers, body=answer.body)

    return handle


async def main(port: int, upstream: str, client: str) -> None:
    make = aiohttp_forwarder if client == "aiohttp" else seawall_client_forwarder
    runner = web.ServerRunner(web.Server(make(upstream), access_log=None))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("port", type=int)
    parser.add_argument("upstream")
    parser.add_argument("--client", choices=("aiohttp", "seawall"), default="aiohttp")
    args = parser.parse_args()
    uvloop.run(main(args.port, args.upstream, args.client))
