"""A fleet of simulated bots that misbehave the way real ones do.

Each bot signs its own requests (Orderly ed25519, as a real client would) and talks to one base URL —
the exchange itself or Seawall in front of it — and records what it saw in a shared `Tally`.
Behaviours: bursts of re-quotes from several processes sharing one key, blind retries of a placement
whose answer was lost, and hammering retries while the exchange answers -1011.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proxy.simulator.signing import orderly_headers, orderly_private_key

_ids = itertools.count(1)


def new_client_order_id(prefix: str) -> str:
    return f"{prefix}-{next(_ids)}-{int(time.time() * 1000) % 10_000_000}"


@dataclass
class Tally:
    """What the bots saw in one phase."""

    sent: int = 0
    ok: int = 0
    exchange_429: int = 0  # -1003 answered by the exchange itself
    local_429: int = 0  # -1003 answered by Seawall before the exchange saw the request
    local_answers: dict[str, int] = field(default_factory=dict)  # X-Seawall policy -> count
    failures: int = 0  # transport errors and timeouts
    codes: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)

    def median_latency_ms(self) -> float | None:
        return statistics.median(self.latencies) * 1000 if self.latencies else None


@dataclass
class Reply:
    status: int
    code: int | None
    policy: str | None  # X-Seawall, when Seawall answered itself
    payload: Any


class Bot:
    """One bot process: a keep-alive session, the account's key, and a tally to report into."""

    def __init__(
        self, base_url: str, account_id: str, secret: str, tally: Tally, timeout: float = 3.0
    ) -> None:
        self.base_url = base_url
        self.account_id = account_id
        self.key: Ed25519PrivateKey = orderly_private_key(secret)
        self.tally = tally
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))

    async def close(self) -> None:
        await self.session.close()

    async def call(
        self, method: str, path: str, payload: dict[str, Any] | None = None, *, signed: bool = True
    ) -> Reply | None:
        """Sign (unless `signed` is false: a public endpoint) and send one request; None when the answer
        never came (transport error, timeout)."""
        body = orjson.dumps(payload) if payload is not None else b""
        headers = orderly_headers(self.account_id, self.key, method, path, body) if signed else {}
        self.tally.sent += 1
        started = time.monotonic()
        try:
            async with self.session.request(
                method, self.base_url + path, data=body or None, headers=headers
            ) as response:
                raw = await response.read()
                policy = response.headers.get("X-Seawall")
                status = response.status
        except (aiohttp.ClientError, TimeoutError):
            self.tally.failures += 1
            return None
        elapsed = time.monotonic() - started
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None
        code = data.get("code") if isinstance(data, dict) and data.get("success") is False else None
        code = int(code) if code is not None else None
        if policy and policy != "dedup-replay":
            self.tally.local_answers[policy] = self.tally.local_answers.get(policy, 0) + 1
        if code == -1003:
            if policy == "ratelimit":
                self.tally.local_429 += 1
            else:
                self.tally.exchange_429 += 1
        if code is not None:
            self.tally.codes[code] = self.tally.codes.get(code, 0) + 1
        if status == 200 and code is None:
            self.tally.ok += 1
            self.tally.latencies.append(elapsed)
        return Reply(status, code, policy, data)

    def order(
        self, client_order_id: str, *, order_type: str = "LIMIT", price: str = "2950"
    ) -> dict[str, Any]:
        order: dict[str, Any] = {
            "symbol": "PERP_ETH_USDC",
            "order_type": order_type,
            "side": "BUY",
            "order_quantity": "0.01",
            "client_order_id": client_order_id,
        }
        if order_type != "MARKET":
            order["order_price"] = price
        return order


async def requote_bursts(bot: Bot, stop_at: float, burst: int = 5, pause: float = 0.5) -> None:
    """A market maker re-quoting: `burst` placements at once, then cancel them all, again and again."""
    while time.monotonic() < stop_at:
        ids = [new_client_order_id("q") for _ in range(burst)]
        replies = await asyncio.gather(*(bot.call("POST", "/v1/order", bot.order(cid)) for cid in ids))
        placed = [cid for cid, reply in zip(ids, replies, strict=True) if reply and reply.code is None]
        await asyncio.gather(
            *(
                bot.call("DELETE", f"/v1/client/order?client_order_id={cid}&symbol=PERP_ETH_USDC")
                for cid in placed
            )
        )
        await asyncio.sleep(pause)  # the strategy's own pacing between re-quotes


async def blind_retries(bot: Bot, stop_at: float, every: float = 0.4, attempts: int = 4) -> None:
    """Market orders; when an answer does not come, retry the same order (same client id) blindly."""
    while time.monotonic() < stop_at:
        order = bot.order(new_client_order_id("r"), order_type="MARKET")
        for _ in range(attempts):
            reply = await bot.call("POST", "/v1/order", order)
            if reply is not None and reply.status < 500 and reply.code not in (-1011, -1003):
                break
        await asyncio.sleep(every)


async def hammer_through_outage(bot: Bot, stop_at: float, retry_every: float = 0.05) -> None:
    """Place an order and retry it every 50 ms while the exchange answers -1011 (no back-off)."""
    while time.monotonic() < stop_at:
        order = bot.order(new_client_order_id("h"), order_type="MARKET")
        while time.monotonic() < stop_at:
            reply = await bot.call("POST", "/v1/order", order)
            if reply is not None and reply.code is None:
                break
            await asyncio.sleep(retry_every)
        await asyncio.sleep(0.25)


async def ticker(bot: Bot, stop_at: float, every: float = 0.2) -> None:
    """A light public poller whose latency shows what Seawall adds to a request."""
    while time.monotonic() < stop_at:
        await bot.call("GET", "/v1/public/info")
        await asyncio.sleep(every)
