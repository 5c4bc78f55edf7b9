"""A real `redis-server` process per test, on a private unix socket, that tests can stop and restart."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis
from fixtures_proxy import wait_until_async


class RedisServer:
    """`redis-server` from PATH (CI installs Debian's `redis-server`), no persistence, no TCP port."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: apt-get install redis-server (make test does)")
        self.binary = binary
        self.directory = directory
        self.socket = directory / "redis.sock"
        self.url = f"unix://{self.socket}"
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.process = subprocess.Popen(  # noqa: ASYNC220 - returns at once; readiness is polled below
            [
                self.binary,
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await wait_until_async(self._answers, timeout=10, interval=0.02)

    async def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError("redis-server exited at start")
        client = redis.Redis(unix_socket_path=str(self.socket))
        try:
            return bool(await client.ping())
        except (OSError, redis.RedisError):
            return False
        finally:
            await client.aclose()

    async def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            await asyncio.to_thread(self.process.wait, 10)
        self.process = None


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path)
    await server.start()
    yield server
    await server.stop()


Backend = dict[str, Any]  # config overrides that choose where policy state lives


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Run a scenario on both backends: state in this process, or on a real Redis (one replica)."""
    if request.param == "memory":
        return {}
    server: RedisServer = request.getfixturevalue("redis_server")
    return {"state": {"backend": "redis", "redis": {"url": server.url}}}
