"""The admin listener: /metrics, /healthz, /readyz, /status — and no secret in any of them."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from fixtures_proxy import RecordingUpstream, StartSeawall, wait_until_async
from prometheus_client.parser import text_string_to_metric_families
from rawhttp import open_raw, split_answer

SPEC_FAMILIES = {
    "seawall_requests",
    "seawall_exchange_errors",
    "seawall_upstream_latency_seconds",
    "seawall_ratelimit_wait_seconds",
    "seawall_ratelimit_rejected",
    "seawall_circuit_state",
    "seawall_circuit_transitions",
    "seawall_dedup",
}


async def test_metrics_export_every_spec_family_and_count_requests(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    seawall = await start_seawall("orderly", upstream.url)
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.get(
                seawall.proxy_url + "/v1/orders", headers={"orderly-key": "ed25519:K"}
            ) as r:
                assert r.status == 200
        async with session.get(seawall.admin_url + "/metrics") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain")
            text = await r.text()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert set(families) >= SPEC_FAMILIES
    requests = {
        tuple(sorted(sample.labels.items())): sample.value
        for sample in families["seawall_requests"].samples
        if sample.name == "seawall_requests_total"
    }
    key = (("method", "GET"), ("outcome", "forwarded"), ("route", "orders.list"), ("status", "200"))
    assert requests[key] == 3
    latency = [s for s in families["seawall_upstream_latency_seconds"].samples if s.name.endswith("_count")]
    assert latency[0].labels == {"route": "orders.list"} and latency[0].value == 3
    assert "ed25519:K" not in text
    assert "_created" not in text


async def test_health_ready_and_status(upstream: RecordingUpstream, start_seawall: StartSeawall) -> None:
    seawall = await start_seawall("woox", upstream.url)
    async with aiohttp.ClientSession() as session:
        async with session.get(seawall.admin_url + "/healthz") as r:
            assert r.status == 200
        async with session.get(seawall.admin_url + "/readyz") as r:
            assert r.status == 200
            assert (await r.json())["ready"] is True
        async with session.get(seawall.admin_url + "/status") as r:
            status = await r.json()
    assert status["profile"] == "woox"
    assert status["upstream"] == upstream.url
    assert "order.place.v3" in status["routes"]


async def test_readyz_fails_once_the_upstream_session_is_closed(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    seawall = await start_seawall("orderly", upstream.url)
    await seawall.forwarder.close()
    async with aiohttp.ClientSession() as session:
        async with session.get(seawall.admin_url + "/readyz") as r:
            assert r.status == 503
            assert (await r.json())["checks"]["upstream_session"] == "failing"
        async with session.get(seawall.proxy_url + "/v1/orders") as r:
            assert (await r.json())["code"] == -1011


async def _closed_by_seawall(reader: asyncio.StreamReader, timeout: float) -> bool:
    """True when Seawall closes the connection (EOF or reset) within `timeout` seconds."""
    try:
        return await asyncio.wait_for(reader.read(), timeout) == b""
    except ConnectionError:
        return True
    except TimeoutError:
        return False


async def test_idle_and_slow_admin_connections_are_cut_at_the_deadlines(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    seawall = await start_seawall(
        "orderly", upstream.url, server={"read_timeout": 0.3, "keepalive_timeout": 0.3}
    )
    idle = [await open_raw(seawall.admin_url) for _ in range(20)]  # connect, send nothing
    kept = await open_raw(seawall.admin_url)  # one request, then idle on keep-alive
    kept[1].write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(kept[0].readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 ")
    await kept[0].readexactly(int(split_answer(head)[1]["content-length"]))
    slow_reader, slow_writer = await open_raw(seawall.admin_url)  # a byte every 100 ms, forever
    started = time.monotonic()

    async def trickle() -> None:
        for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200:
            slow_writer.write(bytes([byte]))
            await asyncio.sleep(0.1)  # the sender's pace, the behaviour under test

    trickling = asyncio.ensure_future(trickle())
    try:
        for reader, _ in [*idle, kept, (slow_reader, slow_writer)]:
            assert await _closed_by_seawall(reader, 2.0)
        assert time.monotonic() - started < 1.5
    finally:
        trickling.cancel()
        for _, writer in [*idle, kept, (slow_reader, slow_writer)]:
            writer.close()


async def test_admin_connections_over_the_cap_are_refused_while_bots_are_served(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    seawall = await start_seawall("orderly", upstream.url, server={"admin_max_connections": 4})
    held = [await open_raw(seawall.admin_url) for _ in range(4)]
    try:
        over = await open_raw(seawall.admin_url)
        held.append(over)
        assert await _closed_by_seawall(over[0], 1.0)
        refused = seawall.metrics.listener_refused.labels("admin", "cap")
        assert refused._value.get() == 1
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                async with session.get(seawall.proxy_url + "/v1/positions") as r:
                    assert r.status == 200
    finally:
        for _, writer in held:
            writer.close()

    # Once the idle ones are gone, the admin port serves again.
    async def healthy() -> bool:
        try:
            async with aiohttp.ClientSession() as session, session.get(seawall.admin_url + "/healthz") as r:
                return r.status == 200
        except aiohttp.ClientError:
            return False

    await wait_until_async(healthy)
