"""The baseline: a bare aiohttp pass-through proxy (no policies, no metrics) with the same client
settings Seawall needs for byte-exact forwarding, so the benchmark measures what Seawall adds."""

from __future__ import annotations

import asyncio
import sys

import aiohttp
import uvloop
from aiohttp import web
from yarl import URL

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "upgrade", "te"}


async def main(port: int, upstream: str) -> None:
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

    runner = web.ServerRunner(web.Server(handle, access_log=None))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), sys.argv[2]))
