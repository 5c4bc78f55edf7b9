"""Rules as operators roll them out: shadow rules that only count, and waits a signature can survive.

- `enforce: false` (a shadow rule) delays nothing and counts what it would have delayed or refused in
  `seawall_ratelimit_shadow_total{rule,reason}` — the way to try a new limit on live traffic;
- a request waiting in a queue is never sent with a signature the exchange would refuse as stale: its
  wait is capped by its timestamp (`signing.timestamp_header`) plus the exchange's window
  (`signing.window`) or the bot's own `x-recv-window`, and past that it is answered -1003 locally at
  once; a rule's `max_wait` at or above the window is a config error.

Both on the memory state and on a real Redis.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from fixtures_proxy import RecordingUpstream, StartSeawall, held_until, wait_until

from proxy.app import Seawall
from proxy.config_loader import ConfigError, build_config


def sample(seawall: Seawall, name: str, **labels: str) -> float:
    return seawall.metrics.registry.get_sample_value(name, labels) or 0.0


def rule(name: str, limit: int, window: float, **extra: Any) -> dict[str, Any]:
    return {"name": name, "routes": ["orders.list"], "limit": limit, "window": window, **extra}


async def get_orders(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> aiohttp.ClientResponse:
    target = url + "/v1/orders?symbol=PERP_ETH_USDC"
    async with session.get(target, headers={"orderly-key": "ed25519:bot-key", **(headers or {})}) as answer:
        await answer.read()
        return answer


# --- shadow rules ----------------------------------------------------------------------------------------


async def test_a_shadow_rule_delays_nothing_and_counts_what_it_would_have_done(
    upstream: RecordingUpstream, start_seawall: StartSeawall, backend: dict[str, Any]
) -> None:
    rules = [
        rule("desk", 2, 0.5, enforce=False),  # the limit being tried: 2 per 0.5 s
        rule("strict", 1, 5.0, enforce=False, on_limit="reject"),
        rule("orders.list", 100, 1.0),  # the exchange's real one, far away
    ]
    seawall = await start_seawall("orderly", upstream.url, ratelimit={"rules": rules}, **backend)
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        answers = await asyncio.gather(*(get_orders(session, seawall.proxy_url) for _ in range(5)))
        elapsed = time.monotonic() - started
    assert [a.status for a in answers] == [200] * 5 and len(upstream.seen) == 5
    assert elapsed < 0.4  # the third one alone would have waited a whole 0.5 s window under `desk`
    # `desk` would have made the 3rd and 4th wait one 0.5 s hold (within its 1 s max wait) and refused
    # the 5th (two holds: over the max wait); `strict` (reject) would have refused 4.
    assert sample(seawall, "seawall_ratelimit_shadow_total", rule="desk", reason="delayed") == 2
    assert sample(seawall, "seawall_ratelimit_shadow_total", rule="desk", reason="queue_timeout") == 1
    assert sample(seawall, "seawall_ratelimit_shadow_total", rule="strict", reason="rejected") == 4
    assert sample(seawall, "seawall_ratelimit_rejected_total", rule="desk", reason="queue_timeout") == 0
    status = seawall.status()["ratelimit"]
    assert status["shadow_rules"] == ["desk", "strict"]
    # The shadow rule's scope counts the real traffic, over its limit: what the dashboard shows.
    assert sample(seawall, "seawall_ratelimit_budget_used_ratio", rule="desk") == pytest.approx(2.5)


async def test_a_shadow_rule_never_refuses_even_what_its_queue_would_have_timed_out(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    gate = asyncio.Event()
    upstream.responder = held_until(gate)
    rules = [rule("desk", 1, 2.0, enforce=False, max_wait=0.5)]
    seawall = await start_seawall("orderly", upstream.url, ratelimit={"rules": rules})
    async with aiohttp.ClientSession() as session:
        pending = [asyncio.ensure_future(get_orders(session, seawall.proxy_url)) for _ in range(3)]
        await wait_until(lambda: len(upstream.seen) == 3)  # all three went out while the first is held
        gate.set()
        assert [a.status for a in await asyncio.gather(*pending)] == [200] * 3
    assert sample(seawall, "seawall_ratelimit_shadow_total", rule="desk", reason="queue_timeout") == 2


# --- signatures never go stale in a queue -------------------------------------------------------------


def stamp(age: float) -> str:
    """An `orderly-timestamp` signed `age` seconds ago (milliseconds)."""
    return str(int((time.time() - age) * 1000))


SIGNING = {"timestamp_header": "orderly-timestamp", "window": "2s", "recv_window_header": "x-recv-window"}


async def test_a_queued_request_is_answered_locally_rather_than_sent_with_a_stale_signature(
    upstream: RecordingUpstream, start_seawall: StartSeawall, backend: dict[str, Any]
) -> None:
    seawall = await start_seawall(
        "orderly",
        upstream.url,
        ratelimit={"rules": [rule("orders.list", 1, 1.0, max_wait=1.5)]},
        signing=SIGNING,
        **backend,
    )
    async with aiohttp.ClientSession() as session:
        assert (await get_orders(session, seawall.proxy_url, {"orderly-timestamp": stamp(0)})).status == 200
        # Signed 1.5 s ago, valid 0.5 s more: the next slot is a window (1 s) away. Sent then, the exchange
        # would refuse it as stale; it is answered now, with when to retry (after signing it again).
        started = time.monotonic()
        stale = await get_orders(session, seawall.proxy_url, {"orderly-timestamp": stamp(1.5)})
        assert time.monotonic() - started < 0.3
        assert (stale.status, stale.headers["X-Seawall"]) == (429, "ratelimit")
        assert "sign it again" in (await stale.json())["message"]
        assert stale.headers["Retry-After"] in ("1", "2")
        # The bot's own x-recv-window (300 ms) caps its wait the same way.
        headers = {"orderly-timestamp": stamp(0), "x-recv-window": "300"}
        assert (await get_orders(session, seawall.proxy_url, headers)).status == 429
        # A freshly signed one waits for the slot and goes.
        assert (await get_orders(session, seawall.proxy_url, {"orderly-timestamp": stamp(0)})).status == 200
    assert len(upstream.seen) == 2
    assert (
        sample(seawall, "seawall_ratelimit_rejected_total", rule="orders.list", reason="stale_signature") == 2
    )


async def test_a_request_that_needs_no_wait_is_sent_whatever_its_timestamp(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    # Seawall never makes a signature stale; judging the bot's clock is the exchange's business.
    seawall = await start_seawall(
        "orderly", upstream.url, ratelimit={"rules": [rule("orders.list", 5, 1.0)]}, signing=SIGNING
    )
    async with aiohttp.ClientSession() as session:
        answer = await get_orders(session, seawall.proxy_url, {"orderly-timestamp": stamp(10)})
    assert answer.status == 200 and len(upstream.seen) == 1


@pytest.mark.parametrize("profile", ["orderly", "woox"])
def test_a_max_wait_at_or_above_the_signature_window_is_a_config_error(profile: str) -> None:
    config = build_config({"profile": profile, "upstream": {"url": "http://127.0.0.1:1"}}, env={})
    assert config.signing.window == 300.0 and config.signing.timestamp_header is not None
    data = {
        "profile": profile,
        "upstream": {"url": "http://127.0.0.1:1"},
        "ratelimit": {"rules": [{"name": "slow", "routes": ["*"], "limit": 1, "max_wait": "5m"}]},
    }
    with pytest.raises(ConfigError, match=r"ratelimit\.rules\.0\.max_wait: must be below signing\.window"):
        build_config(data, env={})
