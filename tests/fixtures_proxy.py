"""Shared fixtures for the proxy: a recording upstream and running Seawall instances, all on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict

from proxy.app import Seawall
from proxy.config import SeawallConfig
from proxy.config_loader import build_config


@dataclass
class Seen:
    method: str
    raw_path: str
    headers: CIMultiDict[str]
    body: bytes


Responder = Callable[[web.BaseRequest, bytes], Awaitable[web.StreamResponse]]


async def default_responder(request: web.BaseRequest, body: bytes) -> web.StreamResponse:
    return web.json_response({"success": True, "data": {}, "timestamp": 1})


def held_until(release: asyncio.Event, data: Any = None) -> Responder:
    """A responder that holds every request until `release`, then answers success with `data`."""

    async def respond(request: web.BaseRequest, body: bytes) -> web.StreamResponse:
        await release.wait()
        return web.json_response({"success": True, "data": {} if data is None else data})

    return respond


def held_then(release: asyncio.Event, first: dict[str, Any]) -> Responder:
    """A responder that holds every request until `release`, answers the first with the error payload
    `first` (status 400) and every later one with a success."""
    answers = iter([first])

    async def respond(request: web.BaseRequest, body: bytes) -> web.StreamResponse:
        await release.wait()
        data = next(answers, {"success": True, "data": {"order_id": 8}})
        return web.json_response(data, status=400 if data["success"] is False else 200)

    return respond


class RecordingUpstream:
    """A loopback HTTP server that records every request's raw bytes and answers via `responder`."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.responder: Responder = default_responder
        self._runner: web.ServerRunner | None = None
        self.url = ""

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(Seen(request.method, request.raw_path, CIMultiDict(request.headers), body))
        return await self.responder(request, body)

    async def start(self) -> None:
        server = web.Server(self._handle, access_log=None, auto_decompress=False)
        self._runner = web.ServerRunner(server)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def seawall_config(profile: str, upstream_url: str, **overrides: Any) -> SeawallConfig:
    """The shipped profile against `upstream_url`, on ephemeral loopback ports, with overrides merged."""
    data: dict[str, Any] = {
        "profile": profile,
        "upstream": {"url": upstream_url},
        "listen": "127.0.0.1:0",
        "admin_listen": "127.0.0.1:0",
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return build_config(data, env={})


async def wait_until(condition: Callable[[], Any], timeout: float = 5.0, interval: float = 0.005) -> Any:
    """Poll `condition` until it is truthy and return its value; fail the test at the deadline."""

    async def check() -> Any:
        return condition()

    return await wait_until_async(check, timeout, interval)


async def wait_until_async(
    check: Callable[[], Awaitable[Any]], timeout: float = 5.0, interval: float = 0.005
) -> Any:
    """Poll an async `check` (e.g. an HTTP request) until it is truthy and return its value; fail the
    test at the deadline. The one place tests wait for something to happen."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


@pytest.fixture
async def upstream() -> AsyncIterator[RecordingUpstream]:
    server = RecordingUpstream()
    await server.start()
    yield server
    await server.stop()


StartSeawall = Callable[..., Awaitable[Seawall]]


@pytest.fixture
async def start_seawall() -> AsyncIterator[StartSeawall]:
    """Factory: `await start_seawall(profile, upstream_url, **config_overrides)` -> a running Seawall."""
    running: list[Seawall] = []

    async def start(profile: str, upstream_url: str, **overrides: Any) -> Seawall:
        seawall = Seawall(seawall_config(profile, upstream_url, **overrides))
        await seawall.start()
        running.append(seawall)
        return seawall

    yield start
    for seawall in running:
        await seawall.stop()
