"""A fixed-JSON exchange stand-in for the overhead benchmark: every request gets the same small answer."""

from __future__ import annotations

import asyncio
import sys

import uvloop
from aiohttp import web

BODY = b'{"success":true,"data":{"rows":[],"meta":{"total":0}},"timestamp":1700000000000}'


async def main(port: int) -> None:
    async def handle(request: web.BaseRequest) -> web.Response:
        await request.read()
        return web.Response(body=BODY, content_type="application/json")

    runner = web.ServerRunner(web.Server(handle, access_log=None))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
