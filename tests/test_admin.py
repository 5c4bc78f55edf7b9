"""The admin listener: /metrics, /healthz, /readyz, /status — and no secret in any of them."""

from __future__ import annotations

import aiohttp
from fixtures_proxy import RecordingUpstream, StartSeawall
from prometheus_client.parser import text_string_to_metric_families

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
