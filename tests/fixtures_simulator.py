"""Shared fixtures for the simulator suite (loaded from conftest.py via `pytest_plugins`).

Real simulators on 127.0.0.1 ephemeral ports, real signed HTTP through aiohttp, and a manual clock for
the rate windows and fault durations so time-based behaviour is tested without sleeping.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import orjson
import pytest
import yarl

from proxy.simulator import Credentials, Simulator
from proxy.simulator.signing import orderly_headers, sorted_params, woox_v1_headers, woox_v3_headers


class ManualClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Answer:
    def __init__(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        self.status = status
        self.body = body
        self.headers = headers

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def code(self) -> int | None:
        """The exchange error code, or None for a success."""
        data = self.json
        return None if data.get("success") else int(data["code"])

    def __repr__(self) -> str:
        return f"Answer({self.status}, {self.body[:200]!r})"


class SignedClient:
    """Signs like a real bot: Orderly ed25519, WOO X v1 (form) or v3 (JSON), on the exact bytes sent."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, creds: Credentials) -> None:
        self.session = session
        self.base_url = base_url
        self.creds = creds

    async def send(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        wait: float = 5.0,
    ) -> Answer:
        """Send `target` (path + query) byte for byte — yarl must not re-quote it."""
        url = yarl.URL(self.base_url + target, encoded=True)
        async with self.session.request(
            method,
            url,
            data=body or None,
            headers=dict(headers or {}),
            timeout=aiohttp.ClientTimeout(total=wait),
        ) as response:
            return Answer(response.status, await response.read(), response.headers)

    async def orderly(
        self, method: str, target: str, payload: Any = None, *, standard_base64: bool = False
    ) -> Answer:
        body = b"" if payload is None else orjson.dumps(payload)
        headers = orderly_headers(
            self.creds.account_id, self.creds.secret, method, target, body, standard_base64=standard_base64
        )
        return await self.send(method, target, body, headers)

    async def v1(self, method: str, path: str, params: Mapping[str, Any] | None = None) -> Answer:
        """WOO X v1: params in the query for GET, in a form body otherwise (as ccxt does)."""
        text = sorted_params(params or {})
        headers = woox_v1_headers(self.creds.api_key, self.creds.secret, method, text)
        if method == "GET":
            return await self.send(method, path + (f"?{text}" if text else ""), b"", headers)
        return await self.send(method, path, text.encode(), headers)

    async def v3(self, method: str, target: str, payload: Any = None) -> Answer:
        body = b"" if payload is None else orjson.dumps(payload)
        headers = woox_v3_headers(self.creds.api_key, self.creds.secret, method, target, body)
        return await self.send(method, target, body, headers)

    async def control(self, method: str, action: str, payload: Any = None) -> Answer:
        body = b"" if payload is None else orjson.dumps(payload)
        return await self.send(method, "/__sim/" + action, body)


SimFactory = Callable[..., Awaitable[Simulator]]


@pytest.fixture
def sim_clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def sim_factory() -> AsyncIterator[SimFactory]:
    """Start simulators with any constructor arguments; all are stopped at teardown."""
    started: list[Simulator] = []

    async def make(profile: str = "orderly", **kwargs: Any) -> Simulator:
        sim = Simulator(profile, **kwargs)
        await sim.start("127.0.0.1", 0)
        started.append(sim)
        return sim

    yield make
    for sim in started:
        await sim.stop()


@pytest.fixture
async def sim_http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session that never silently resends a request after a dropped connection (aiohttp
    does that for GET/DELETE since 3.9 — docs/design.md), so injected resets are seen as they happen."""
    async with aiohttp.ClientSession() as client:
        client._retry_connection = False
        yield client


@pytest.fixture
async def orderly_sim(sim_factory: SimFactory, sim_clock: ManualClock) -> Simulator:
    return await sim_factory("orderly", clock=sim_clock)


@pytest.fixture
async def woox_sim(sim_factory: SimFactory, sim_clock: ManualClock) -> Simulator:
    return await sim_factory("woox", clock=sim_clock)


def client_for(
    session: aiohttp.ClientSession, sim: Simulator, creds: Credentials | None = None
) -> SignedClient:
    chosen = creds or sim.demo_credentials
    assert chosen is not None
    return SignedClient(session, sim.base_url, chosen)


@pytest.fixture
def orderly_client(sim_http: aiohttp.ClientSession, orderly_sim: Simulator) -> SignedClient:
    return client_for(sim_http, orderly_sim)


@pytest.fixture
def woox_client(sim_http: aiohttp.ClientSession, woox_sim: Simulator) -> SignedClient:
    return client_for(sim_http, woox_sim)
