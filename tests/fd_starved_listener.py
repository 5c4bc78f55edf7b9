"""A proxy-style listener run in its own process (under a low RLIMIT_NOFILE set by the test) whose file
descriptors the test uses up and frees on command, for the listener's out-of-descriptors guarantees.

Commands on stdin, one a line, each acknowledged on stdout with a JSON line:
- `listen`: start the listener (`{"port": N}`);
- `exhaust`: open /dev/null until EMFILE (`{"held": N}`), so the process has no descriptor left;
- `free N`: close N of those (`{"held": N}`);
- `refused`: `{"fd_exhausted": N}`, the listener's count of connections closed for lack of descriptors.
Logs (JSON) go to stderr, as Seawall's do.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import sys

from multidict import CIMultiDict

from proxy.answer import Answer
from proxy.errors import SeawallError
from proxy.httpserver import HttpServer, Limits, Request
from proxy.logs import setup_logging
from proxy.metrics import Metrics
from proxy.runtime import run_event_loop


class Site:
    async def handle(self, request: Request) -> Answer:
        return Answer(200, CIMultiDict(), b"served")

    def refuse(self, error: SeawallError, request: Request) -> Answer:
        return Answer(400, CIMultiDict(), error.detail.encode())


def reply(entry: dict[str, int]) -> None:
    os.write(1, json.dumps(entry).encode() + b"\n")


async def main() -> int:
    setup_logging("info")
    metrics = Metrics()
    limits = Limits(
        read_timeout=5, write_timeout=5, keepalive_timeout=5, write_buffer_bytes=65536, max_body_bytes=1000
    )
    server = HttpServer("proxy", Site(), limits, metrics)
    held: list[int] = []
    lines: asyncio.Queue[str] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    loop.add_reader(0, lambda: lines.put_nowait(sys.stdin.readline()))
    while command := (await lines.get()).split():
        if command[0] == "listen":
            await server.start("127.0.0.1", 0)
            reply({"port": server.addresses[0][1]})
        elif command[0] == "exhaust":
            while True:
                try:
                    held.append(os.open(os.devnull, os.O_RDONLY))
                except OSError as error:
                    assert error.errno == errno.EMFILE, error
                    break
            reply({"held": len(held)})
        elif command[0] == "free":
            for _ in range(int(command[1])):
                os.close(held.pop())
            reply({"held": len(held)})
        elif command[0] == "refused":
            labels = {"listener": "proxy", "reason": "fd_exhausted"}
            value = metrics.registry.get_sample_value("seawall_listener_refused_connections_total", labels)
            reply({"fd_exhausted": int(value or 0)})
    loop.remove_reader(0)
    await server.stop(1)
    return 0


if __name__ == "__main__":
    sys.exit(run_event_loop(main))
