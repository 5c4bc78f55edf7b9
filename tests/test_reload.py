"""Live reload: SIGHUP or a changed config file, validated first, swapped at once, nothing lost.

In-process (a Seawall and its `ConfigReloader`, a real config file in a temporary directory): new rules
apply at once and windows keep their slots (no -1003 from the exchange after a reload), queued requests
keep their place, dedup entries and open breakers survive, an invalid file or a change that needs a
restart leaves the running config as it was and says why. Then the real command, `seawall run`, reloads
on SIGHUP and on a change of its file.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from fixtures_proxy import RecordingUpstream, held_until, wait_until, wait_until_async
from fixtures_simulator import SignedClient, SimFactory

from proxy.app import Seawall
from proxy.config_loader import load_config
from proxy.reload import ConfigReloader
from proxy.simulator.symbols import resting_order

ROOT = Path(__file__).resolve().parent.parent
_ids = itertools.count()


def sample(seawall: Seawall, name: str, **labels: str) -> float:
    return seawall.metrics.registry.get_sample_value(name, labels) or 0.0


def place_rule(limit: int = 3, window: float = 1.0, **extra: Any) -> dict[str, Any]:
    return {"name": "order.place", "routes": ["order.place"], "limit": limit, "window": window, **extra}


class ConfigFile:
    """A config file on disk, rewritten by the test (as an operator edits it)."""

    def __init__(self, path: Path, upstream: str, **sections: Any) -> None:
        self.path = path
        self.data: dict[str, Any] = {
            "profile": "orderly",
            "upstream": {"url": upstream},
            "listen": "127.0.0.1:0",
            "admin_listen": "127.0.0.1:0",
            "reload": {"watch_interval": 0},
            **sections,
        }
        self.write()

    def write(self, **changes: Any) -> None:
        self.data.update(changes)
        self.path.write_text(yaml.safe_dump(self.data, sort_keys=False))


Running = tuple[Seawall, ConfigReloader, ConfigFile]


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Factory: a Seawall started from a config file, with its reloader."""
    started: list[tuple[Seawall, ConfigReloader]] = []

    async def start(upstream: str, **sections: Any) -> Running:
        file = ConfigFile(tmp_path / "seawall.yaml", upstream, **sections)
        seawall = Seawall(load_config(file.path, env={}))
        await seawall.start()
        reloader = ConfigReloader(seawall, str(file.path), env={})
        reloader.start()
        started.append((seawall, reloader))
        return seawall, reloader, file

    yield start
    for seawall, reloader in started:
        await reloader.close()
        await seawall.stop()


async def test_new_rules_apply_at_once_and_a_full_window_stays_full(
    sim_factory: SimFactory,
    sim_http: aiohttp.ClientSession,
    running: Callable[..., Any],
    backend: dict[str, Any],
) -> None:
    sim = await sim_factory("orderly", limits={"order_create": (3, 1.0)})
    seawall, reloader, file = await running(sim.base_url, ratelimit={"rules": [place_rule()]}, **backend)
    assert sim.demo_credentials is not None
    bot = SignedClient(sim_http, seawall.proxy_url, sim.demo_credentials)
    burst = [bot.orderly("POST", "/v1/order", resting_order(f"w{next(_ids)}")) for _ in range(3)]
    assert [a.status for a in await asyncio.gather(*burst)] == [200] * 3
    answered = time.monotonic()
    # The operator raises max_wait and adds a rule for order lists, while the placement window is full.
    orders_rule = {"name": "orders.list", "routes": ["orders.list"], "limit": 2, "window": 1.0}
    file.write(ratelimit={"rules": [place_rule(max_wait=3.0), orders_rule]})
    assert reloader.reload("test") == "applied"
    assert seawall.status()["ratelimit"]["rules"] == ["order.place", "orders.list"]
    # The window kept its 3 slots: the next placement waits for one to free (before the reload, with
    # max_wait 1 s, it would have been refused), and the exchange refuses nothing.
    assert (await bot.orderly("POST", "/v1/order", resting_order(f"w{next(_ids)}"))).status == 200
    assert time.monotonic() - answered >= 0.9
    assert "-1003" not in sim.snapshot()["answers_by_code"]
    assert sample(seawall, "seawall_config_reloads_total", result="applied") == 1


async def test_queued_requests_keep_their_place_and_none_is_lost(
    upstream: RecordingUpstream, running: Callable[..., Any]
) -> None:
    gate = asyncio.Event()
    upstream.responder = held_until(gate)
    rule = {"name": "orders.list", "routes": ["orders.list"], "limit": 1, "window": 0.2, "max_wait": 5.0}
    seawall, reloader, file = await running(upstream.url, ratelimit={"rules": [rule]})
    headers = {"orderly-key": "ed25519:k"}

    async def get(tag: str) -> int:
        url = f"{seawall.proxy_url}/v1/orders?symbol=S&tag={tag}"
        async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as answer:
            await answer.read()
            return answer.status

    first = asyncio.ensure_future(get("a"))
    await wait_until(lambda: len(upstream.seen) == 1)
    queued = []
    for i, tag in enumerate("bcd"):
        queued.append(asyncio.ensure_future(get(tag)))
        await wait_until(lambda i=i: seawall.status()["ratelimit"]["queued"] == i + 1)
    file.write(ratelimit={"rules": [{**rule, "limit": 2}]})  # more room: the queue drains faster
    assert reloader.reload("test") == "applied"
    gate.set()
    assert await asyncio.gather(first, *queued) == [200] * 4
    assert [seen.raw_path.rsplit("=", 1)[1] for seen in upstream.seen] == ["a", "b", "c", "d"]


async def test_dedup_entries_and_open_breakers_survive_a_reload(
    sim_factory: SimFactory, sim_http: aiohttp.ClientSession, running: Callable[..., Any]
) -> None:
    sim = await sim_factory("orderly")
    seawall, reloader, file = await running(sim.base_url, dedup={"ttl": "120s"})
    assert sim.demo_credentials is not None
    bot = SignedClient(sim_http, seawall.proxy_url, sim.demo_credentials)
    order = resting_order("kept-1")
    assert (await bot.orderly("POST", "/v1/order", order)).status == 200
    sim.add_fault({"kind": "error", "code": -1011, "routes": ["order.cancel"], "count": 5})
    for _ in range(5):  # the trading breaker opens after 5 x -1011
        await bot.orderly("DELETE", "/v1/order?order_id=1&symbol=PERP_ETH_USDC")
    file.write(dedup={"ttl": "90s"}, ratelimit={"margin": "3ms"})  # both policies see a change
    assert reloader.reload("test") == "applied"
    replay = await bot.orderly("POST", "/v1/order", order)
    assert (replay.status, replay.headers["X-Seawall"]) == (200, "dedup-replay")
    cancel = await bot.orderly("DELETE", "/v1/order?order_id=1&symbol=PERP_ETH_USDC")
    assert (cancel.code, cancel.headers["X-Seawall"]) == (-1011, "circuit-open")
    assert sim.snapshot()["requests_by_route"]["order.place"] == 1


async def test_an_invalid_file_keeps_the_running_config_and_the_log_names_the_key(
    upstream: RecordingUpstream, running: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    seawall, reloader, file = await running(upstream.url, ratelimit={"rules": [place_rule()]})
    before = seawall.config
    file.write(ratelimit={"rules": [place_rule(limit=0)]})
    with caplog.at_level(logging.ERROR, logger="seawall"):
        assert reloader.reload("test") == "invalid"
    assert seawall.config is before
    (record,) = [r for r in caplog.records if "config reload failed" in r.getMessage()]
    assert "ratelimit.rules.0.limit" in record.getMessage() and str(file.path) in record.getMessage()
    assert sample(seawall, "seawall_config_reloads_total", result="invalid") == 1


async def test_changing_the_upstream_or_the_listeners_is_refused(
    upstream: RecordingUpstream, running: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    seawall, reloader, file = await running(upstream.url)
    before = seawall.config
    file.write(upstream={"url": "http://127.0.0.1:1"}, listen="127.0.0.1:18080")
    with caplog.at_level(logging.ERROR, logger="seawall"):
        assert reloader.reload("test") == "refused"
    assert seawall.config is before
    message = next(r.getMessage() for r in caplog.records if "refused" in r.getMessage())
    assert "upstream.url" in message and "listen" in message and "restart" in message
    assert sample(seawall, "seawall_config_reloads_total", result="refused") == 1
    file.write(upstream={"url": upstream.url}, listen="127.0.0.1:0")
    assert reloader.reload("test") == "unchanged"


# --- the real command -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
async def test_seawall_run_reloads_on_sighup_and_when_its_file_changes(
    upstream: RecordingUpstream, tmp_path: Path
) -> None:
    admin = free_port()
    file = ConfigFile(
        tmp_path / "seawall.yaml",
        upstream.url,
        admin_listen=f"127.0.0.1:{admin}",
        reload={"watch_interval": "100ms"},
        ratelimit={"rules": [place_rule()]},
        logging={"level": "warning"},
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEAWALL_")}
    process = subprocess.Popen(  # noqa: ASYNC220 - returns at once; readiness is polled below
        [sys.executable, "-m", "proxy", "run", "--config", str(file.path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        async with aiohttp.ClientSession() as session:

            async def status() -> dict[str, Any] | None:
                try:
                    async with session.get(f"http://127.0.0.1:{admin}/status") as page:
                        return dict(orjson.loads(await page.read()))
                except aiohttp.ClientError:
                    return None

            async def rules() -> list[str]:
                page = await status()
                return list(page["ratelimit"]["rules"]) if page else []

            await wait_until_async(status, timeout=20)
            # The file changes: picked up within the watch interval, without a signal.
            file.write(ratelimit={"rules": [place_rule(), {**place_rule(), "name": "desk"}]})
            await wait_until_async(lambda: _equals(rules(), ["order.place", "desk"]), timeout=5)
            # SIGHUP: read now (the watcher is switched off by the same change).
            file.write(ratelimit={"rules": [place_rule()]}, reload={"watch_interval": 0})
            process.send_signal(signal.SIGHUP)
            await wait_until_async(lambda: _equals(rules(), ["order.place"]), timeout=5)
            async with session.get(f"http://127.0.0.1:{admin}/metrics") as page:
                metrics = await page.text()
        assert 'seawall_config_reloads_total{result="applied"} 2.0' in metrics
    finally:
        process.terminate()
        _, errors = process.communicate(timeout=20)
    assert process.returncode == 0, errors.decode()


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)
