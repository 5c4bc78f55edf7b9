"""Seawall under pressure, end to end on loopback: its own congestion is answered locally and never opens a
breaker, the deadline runs from the bot request's arrival, the latency histogram measures the exchange,
and an unreachable exchange says why (log line, metric, /status) without leaking a secret."""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from fixtures_proxy import RecordingUpstream, StartSeawall, held_until, wait_until, wait_until_async
from prometheus_client.parser import text_string_to_metric_families
from rawhttp import open_raw, raw_request, split_answer

from proxy.app import Seawall
from proxy.config_loader import ConfigError, load_config
from proxy.errors import UpstreamUnreached
from proxy.forward import LOG_INTERVAL, UpstreamErrors
from proxy.metrics import Metrics

KEY = "ed25519:8X9KzEq6sQ1wSecretKeyMaterialNeverInLogs"
SIGNATURE = "c2lnbmF0dXJlLW5ldmVyLWluLWxvZ3M="
SIGNED = {
    "orderly-account-id": "0xabc",
    "orderly-key": KEY,
    "orderly-timestamp": "1700000000000",
    "orderly-signature": SIGNATURE,
}
NO_LIMITS: dict[str, Any] = {"ratelimit": {"enabled": False}}


def sample(seawall: Seawall, name: str, **labels: str) -> float:
    return seawall.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def seawall_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Records of the `seawall` logger, even when a CLI test earlier set it not to propagate."""
    logger = logging.getLogger("seawall")
    attach = not logger.propagate  # propagating, its records already reach caplog's root handler
    if attach:
        logger.addHandler(caplog.handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    yield caplog
    if attach:
        logger.removeHandler(caplog.handler)
    logger.setLevel(previous)


# -- Seawall's own congestion ------------------------------------------------------------------------------


async def test_own_congestion_is_answered_locally_and_never_opens_a_breaker(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    release = asyncio.Event()
    upstream.responder = held_until(release)
    seawall = await start_seawall(
        "orderly",
        upstream.url,
        upstream={"max_connections": 1, "pool_timeout": 0.2},
        breakers={"rules": [{"name": "reads", "routes": ["positions"], "failure_threshold": 1}]},
        **NO_LIMITS,
    )
    async with aiohttp.ClientSession() as session:

        async def fetch() -> tuple[int, str | None, str | None, dict[str, Any]]:
            async with session.get(seawall.proxy_url + "/v1/positions", headers=SIGNED) as r:
                return r.status, r.headers.get("X-Seawall"), r.headers.get("Retry-After"), await r.json()

        first = asyncio.ensure_future(fetch())
        await wait_until(lambda: len(upstream.seen) == 1)
        congested = await asyncio.gather(*(fetch() for _ in range(5)))
        release.set()
        assert (await first)[0] == 200
        assert (await fetch())[0] == 200  # the breaker let the next request through
    for status, policy, retry_after, body in congested:
        assert (status, policy, retry_after) == (429, "congested", "1")
        assert body["success"] is False and body["code"] == -1003
    assert len(upstream.seen) == 2  # the congested ones were never sent
    assert sample(seawall, "seawall_congestion_total", cause="pool_timeout") == 5
    assert sample(seawall, "seawall_circuit_state", breaker="reads") == 0  # closed
    assert sample(seawall, "seawall_circuit_transitions_total", breaker="reads", to="open") == 0
    assert sample(seawall, "seawall_requests_total", route="positions", method="GET", status="429",
                  outcome="throttled") == 5  # fmt: skip
    assert seawall.status()["upstream_congestion"] == {"pool_timeout": 5}
    assert seawall.status()["upstream_errors"]["counts"] == {}  # not the exchange's failure


async def test_the_deadline_runs_from_arrival_so_a_request_queued_too_long_is_not_sent(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    # One request per 0.5 s: the second waits ~0.5 s in the rate-limit queue, leaving ~0.1 s of its 0.6 s
    # deadline, under min_send_time. Sent now, its answer would likely come after the bot gave up.
    seawall = await start_seawall(
        "orderly",
        upstream.url,
        upstream={"timeout": 0.6, "min_send_time": 0.3, "connect_timeout": 0.2},
        ratelimit={
            "rules": [
                {"name": "slow", "routes": ["positions"], "limit": 1, "window": 0.5, "scope": ["global"]}
            ]
        },
    )
    async with aiohttp.ClientSession() as session:
        async with session.get(seawall.proxy_url + "/v1/positions") as r:
            assert r.status == 200
        started = time.monotonic()
        async with session.get(seawall.proxy_url + "/v1/positions") as r:
            assert r.status == 429 and r.headers["X-Seawall"] == "congested"
            assert (await r.json())["code"] == -1003
    assert time.monotonic() - started >= 0.3
    assert len(upstream.seen) == 1
    assert sample(seawall, "seawall_congestion_total", cause="deadline") == 1


async def test_a_request_the_pool_held_past_min_send_time_is_unsent_and_its_retry_goes_through(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    release = asyncio.Event()
    slow_first = iter([True])

    async def respond(request: web.BaseRequest, body: bytes) -> web.StreamResponse:
        if next(slow_first, False):
            await release.wait()
        return web.json_response({"success": True, "data": {"order_id": len(upstream.seen)}})

    upstream.responder = respond
    seawall = await start_seawall(
        "orderly",
        upstream.url,
        upstream={"max_connections": 1, "timeout": 0.6, "min_send_time": 0.3, "connect_timeout": 0.2},
        **NO_LIMITS,
    )
    order = {"symbol": "PERP_ETH_USDC", "order_type": "MARKET", "side": "BUY", "order_quantity": 1}
    async with aiohttp.ClientSession() as session:

        async def place(client_order_id: str) -> tuple[int, str | None, dict[str, Any]]:
            payload = {**order, "client_order_id": client_order_id}
            async with session.post(seawall.proxy_url + "/v1/order", json=payload, headers=SIGNED) as r:
                return r.status, r.headers.get("X-Seawall"), await r.json()

        first = asyncio.ensure_future(place("first-1"))
        await wait_until(lambda: len(upstream.seen) == 1)
        status, policy, body = await place("second-1")  # waits for the pool until 0.3 s are left
        assert (status, policy, body["code"]) == (429, "congested", -1003)
        release.set()
        assert (await first)[0] == 200
        # Nothing was sent, so dedup holds nothing: the bot's retry goes out (once).
        status, policy, body = await place("second-1")
        assert (status, policy, body["success"]) == (200, None, True)
    assert [seen.body.count(b"second-1") for seen in upstream.seen] == [0, 1]
    assert sample(seawall, "seawall_congestion_total", cause="deadline") == 1


async def test_latency_histogram_measures_the_exchange_not_the_pool_queue(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    release = asyncio.Event()
    slow_first = iter([True])

    async def respond(request: web.BaseRequest, body: bytes) -> web.StreamResponse:
        if next(slow_first, False):
            await release.wait()
        return web.json_response({"success": True})

    upstream.responder = respond
    seawall = await start_seawall("orderly", upstream.url, upstream={"max_connections": 1}, **NO_LIMITS)
    async with aiohttp.ClientSession() as session:

        async def fetch() -> int:
            async with session.get(seawall.proxy_url + "/v1/positions") as r:
                return r.status

        first = asyncio.ensure_future(fetch())
        await wait_until(lambda: len(upstream.seen) == 1)
        queued = asyncio.ensure_future(fetch())
        await wait_until(lambda: seawall.forwarder.stats().get("waiting") == 1)
        await asyncio.sleep(0.3)  # the time under test: the queued request waits in Seawall's pool
        release.set()
        assert [await first, await queued] == [200, 200]
    buckets = "seawall_upstream_latency_seconds_bucket"
    assert sample(seawall, "seawall_upstream_latency_seconds_count", route="positions") == 2
    assert sample(seawall, buckets, route="positions", le="0.25") == 1  # the queued one: fast exchange
    assert sample(seawall, buckets, route="positions", le="+Inf") == 2


# -- an unreachable exchange says why ----------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def silent_upstream() -> AsyncIterator[str]:
    """Accepts connections, reads, never answers."""
    hold = asyncio.Event()

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hold.wait()
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    hold.set()
    server.close()


async def resolver_fails_fast(name: str) -> bool:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(1.0):
            await loop.getaddrinfo(name, 80)
    except socket.gaierror:
        return True
    except TimeoutError:
        return False
    return False  # resolved (a resolver that answers every name): not a DNS failure to test


@pytest.mark.parametrize("cause", ["refused", "dns", "tls", "timeout"])
async def test_an_unreachable_exchange_says_why(
    cause: str,
    upstream: RecordingUpstream,
    silent_upstream: str,
    start_seawall: StartSeawall,
    seawall_log: pytest.LogCaptureFixture,
) -> None:
    answer_timeout = 3.0
    if cause == "refused":
        url = f"http://127.0.0.1:{closed_port()}"
    elif cause == "dns":
        if not await resolver_fails_fast("nonexistent.invalid"):
            pytest.skip("this machine's resolver does not fail fast for nonexistent.invalid")
        url = "http://nonexistent.invalid:8080"
    elif cause == "tls":
        url = upstream.url.replace("http://", "https://")  # a plain HTTP server: no TLS handshake
    else:
        url, answer_timeout = silent_upstream, 0.2
    seawall = await start_seawall("orderly", url, upstream={"answer_timeout": answer_timeout}, **NO_LIMITS)
    before = time.time()
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.get(seawall.proxy_url + "/v1/positions", headers=SIGNED) as r:
                assert r.status == 400 and r.headers["X-Seawall"] == "upstream-unavailable"
                assert (await r.json())["code"] == -1011
        async with session.get(seawall.admin_url + "/status") as r:
            status_text = await r.text()
            errors = (await r.json())["upstream_errors"]
    where = url.split("://", 1)[1]
    warnings = [
        record
        for record in seawall_log.records
        if record.levelno == logging.WARNING and "upstream" in record.msg
    ]
    assert len(warnings) == 1  # three failures, one line: the rest wait for the next line's count
    fields = getattr(warnings[0], "fields", {})
    assert fields["upstream"] == where and fields["cause"] == cause and fields["suppressed"] == 0
    assert sample(seawall, "seawall_upstream_errors_total", cause=cause) == 3
    assert errors["counts"] == {cause: 3}
    assert errors["last"]["cause"] == cause and errors["last"]["message"]
    assert before - 1 <= errors["last"]["at"] <= time.time() + 1
    if cause == "tls":
        assert upstream.seen == []  # a TLS failure: the request never went out
    for secret in (KEY, SIGNATURE):
        assert secret not in status_text
        assert all(
            secret not in record.getMessage() + repr(record.__dict__) for record in seawall_log.records
        )


async def test_error_lines_are_limited_per_cause_and_count_what_they_left_out(
    seawall_log: pytest.LogCaptureFixture,
) -> None:
    now = [1000.0]
    metrics = Metrics()
    errors = UpstreamErrors(metrics, "api.example:443", clock=lambda: now[0])
    refused = UpstreamUnreached("the exchange refused the connection", cause="refused")
    for _ in range(4):
        errors.note(refused)
    errors.note(UpstreamUnreached("TLS with the exchange failed", cause="tls"))  # another cause: logged
    now[0] += LOG_INTERVAL
    errors.note(refused)
    lines = [getattr(record, "fields", {}) for record in seawall_log.records if "upstream" in record.msg]
    assert [(line["cause"], line["suppressed"]) for line in lines] == [
        ("refused", 0),
        ("tls", 0),
        ("refused", 3),
    ]
    assert all(line["upstream"] == "api.example:443" for line in lines)
    assert metrics.registry.get_sample_value("seawall_upstream_errors_total", {"cause": "refused"}) == 5
    assert errors.status()["counts"] == {"refused": 5, "tls": 1}
    assert errors.status()["last"]["cause"] == "refused"


async def test_shutting_down_is_not_counted_as_the_exchanges_failure(
    seawall_log: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    errors = UpstreamErrors(metrics, "api.example:443")
    errors.note(UpstreamUnreached("proxy is shutting down"))
    assert errors.status() == {"last": None, "counts": {}}
    assert not [record for record in seawall_log.records if "upstream" in record.msg]


# -- HEAD ------------------------------------------------------------------------------------------------


async def test_a_head_answer_keeps_the_exchanges_content_length(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    async def sized(request: web.BaseRequest, body: bytes) -> web.StreamResponse:
        return web.Response(body=b"x" * 1234, content_type="application/json")  # HEAD: length, no body

    upstream.responder = sized
    seawall = await start_seawall("orderly", upstream.url, **NO_LIMITS)
    request = b"HEAD /v1/positions HTTP/1.1\r\nHost: seawall\r\nConnection: close\r\n\r\n"
    status, headers, body = split_answer(await raw_request(seawall.proxy_url, request))
    assert status == 200
    assert headers["content-length"] == "1234"  # what a GET would carry, as the exchange said
    assert body == b""
    assert upstream.seen[-1].method == "HEAD"


# -- who is blamed: the exchange only for what is its doing -------------------------------------------------

ORDER = {"symbol": "PERP_ETH_USDC", "order_type": "MARKET", "side": "BUY", "order_quantity": 1}
ONE_STRIKE = {  # a breaker that opens at the first failure it is told of
    "rules": [
        {
            "name": "trading",
            "routes": ["order.place"],
            "failure_threshold": 1,
            "trip_on_transport": True,
            "reset_timeout": 30,
        }
    ]
}


def breaker_scope(seawall: Seawall) -> dict[str, Any]:
    return seawall.status()["breaker"]["trading"]["scopes"]["*"]  # type: ignore[no-any-return]


async def test_an_answer_the_queue_left_too_little_time_for_is_sent_but_never_opens_a_breaker(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    # Every answer takes 0.7 s. B waits in the rate-limit queue for A's answer plus the 0.2 s window, so
    # ~0.5 s of its 1.4 s deadline is left when it is written: the exchange is due 1 s, and B is cut at its
    # deadline. The exchange failed nothing; B was sent all the same, so its outcome is unknown.
    async def slow(request: web.BaseRequest, body: bytes) -> web.StreamResponse:
        await asyncio.sleep(0.7)  # the exchange's latency, the condition under test
        return web.json_response({"success": True, "data": {"order_id": len(upstream.seen)}})

    upstream.responder = slow
    seawall = await start_seawall(
        "orderly",
        upstream.url,
        upstream={"timeout": 1.4, "answer_timeout": 1.0, "min_send_time": 0.1, "connect_timeout": 0.5},
        ratelimit={
            "rules": [
                {
                    "name": "slow",
                    "routes": ["order.place"],
                    "limit": 1,
                    "window": 0.2,
                    "scope": ["global"],
                    "max_wait": 1.3,
                }
            ]
        },
        breakers=ONE_STRIKE,
    )
    signed_now = {**SIGNED, "orderly-timestamp": str(int(time.time() * 1000))}  # not stale in the queue
    async with aiohttp.ClientSession() as session:

        async def place(client_order_id: str) -> tuple[int, str | None, dict[str, Any]]:
            payload = {**ORDER, "client_order_id": client_order_id}
            async with session.post(seawall.proxy_url + "/v1/order", json=payload, headers=signed_now) as r:
                return r.status, r.headers.get("X-Seawall"), await r.json()

        first = asyncio.ensure_future(place("a-1"))
        await wait_until(lambda: len(upstream.seen) == 1)
        status, policy, body = await place("b-1")
        assert (await first)[0] == 200
        # To the bot, as a timeout: -1011, the request may have been executed.
        assert (status, policy, body["code"]) == (400, "upstream-unavailable", -1011)
        assert [seen.body.count(b"b-1") for seen in upstream.seen] == [0, 1]  # B was sent
        # Sent, answer lost: dedup holds B's client order id as unknown rather than sending it again.
        status, policy, body = await place("b-1")
        assert (policy, body["code"]) == ("dedup-conflict", -1007)
    assert len(upstream.seen) == 2
    assert breaker_scope(seawall)["state"] == "closed"
    assert breaker_scope(seawall)["consecutive_failures"] == 0
    assert sample(seawall, "seawall_upstream_errors_total", cause="deadline") == 1
    assert sample(seawall, "seawall_upstream_errors_total", cause="timeout") == 0
    assert seawall.status()["upstream_errors"]["last"]["cause"] == "deadline"


async def test_silence_is_the_exchanges_failure_when_it_had_the_whole_deadline(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    # answer_timeout above the deadline (as with the defaults, 10 s and 10 s): no request ever has all of
    # it, so one written at once, having lost under min_send_time, gave the exchange its full chance.
    never = asyncio.Event()
    upstream.responder = held_until(never)
    seawall = await start_seawall(
        "orderly",
        upstream.url,
        upstream={"timeout": 0.8, "answer_timeout": 10, "min_send_time": 0.1, "connect_timeout": 0.3},
        breakers=ONE_STRIKE,
        **NO_LIMITS,
    )
    try:
        async with aiohttp.ClientSession() as session:
            for expected in ("upstream-unavailable", "circuit-open"):
                payload = {**ORDER, "client_order_id": f"silent-{expected}"}
                async with session.post(seawall.proxy_url + "/v1/order", json=payload, headers=SIGNED) as r:
                    assert r.headers["X-Seawall"] == expected
    finally:
        never.set()
    assert len(upstream.seen) == 1
    assert sample(seawall, "seawall_upstream_errors_total", cause="timeout") == 1
    assert breaker_scope(seawall)["state"] == "open"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "upstream:\n  timeout: 2s\n",
            "upstream.timeout: must be above upstream.connect_timeout + upstream.min_send_time (3.3s), is 2s",
        ),
        (
            "upstream:\n  connect_timeout: 12s\n",
            "upstream.connect_timeout: must be below upstream.timeout less upstream.min_send_time (9.7s), "
            "is 12s",
        ),
        (
            "upstream:\n  min_send_time: 7.5s\n",
            "upstream.min_send_time: must be below upstream.timeout less upstream.connect_timeout (7s), "
            "is 7.5s",
        ),
    ],
)
def test_a_deadline_without_room_for_a_whole_connect_is_refused(
    tmp_path: Path, text: str, expected: str
) -> None:
    """A connect the deadline cuts short is not blamed on the exchange: were there no room for a whole
    connect_timeout, an unreachable exchange would be Seawall's congestion forever and open no breaker."""
    path = tmp_path / "seawall.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path, env={})
    assert str(error.value).endswith(f"{expected} ({path}, line 2)")


# -- Seawall out of file descriptors -----------------------------------------------------------------------


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], dict[str, Any]]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status, headers, _ = split_answer(head)
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
    return status, headers, json.loads(body)


def order_bytes(client_order_id: str) -> bytes:
    body = json.dumps({**ORDER, "client_order_id": client_order_id}).encode()
    signed = "".join(f"{name}: {value}\r\n" for name, value in SIGNED.items())
    head = (
        f"POST /v1/order HTTP/1.1\r\nHost: seawall\r\nContent-Type: application/json\r\n{signed}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def test_seawall_out_of_file_descriptors_answers_congested_and_opens_no_breaker(
    upstream: RecordingUpstream, tmp_path: Path
) -> None:
    limit = 64  # Seawall starts with ~17 descriptors open
    proxy_port, admin_port = closed_port(), closed_port()
    config = tmp_path / "seawall.yaml"
    config.write_text(
        json.dumps(  # YAML reads JSON
            {
                "profile": "orderly",
                "upstream": {"url": upstream.url},
                "listen": f"127.0.0.1:{proxy_port}",
                "admin_listen": f"127.0.0.1:{admin_port}",
                "ratelimit": {"enabled": False},
                "breakers": ONE_STRIKE,
            }
        )
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "run",
        "--config",
        str(config),
        cwd=Path(__file__).parent.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)),
    )
    assert process.stderr is not None
    proxy_url, admin_url = f"http://127.0.0.1:{proxy_port}", f"http://127.0.0.1:{admin_port}"
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    lines: list[dict[str, Any]] = []
    try:

        async def healthy() -> bool:
            try:
                async with aiohttp.ClientSession() as session, session.get(admin_url + "/healthz") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await wait_until_async(healthy, timeout=15, interval=0.05)
        # A bot connected first; then a fleet of idle ones takes every descriptor Seawall has left (the
        # listener says so when it has to turn the last ones away).
        bot_reader, bot_writer = await open_raw(proxy_url)
        held = [await open_raw(proxy_url) for _ in range(limit)]
        while not any(line["msg"].startswith("listener out of file descriptors") for line in lines):
            line = await asyncio.wait_for(process.stderr.readline(), 10)
            assert line, "seawall exited"
            lines.append(json.loads(line))
        # No descriptor for a connection to the exchange: Seawall's own congestion, answered locally.
        for _ in range(2):
            bot_writer.write(order_bytes("fd-1"))
            status, headers, body = await read_answer(bot_reader)
            assert (status, headers.get("x-seawall"), headers.get("retry-after")) == (429, "congested", "1")
            assert body["code"] == -1003 and body["success"] is False
        for _, writer in held:
            writer.close()
        held = []

        async def placed() -> bool:
            # Nothing was sent, so dedup held nothing and the breaker heard nothing: the retry goes out
            # once Seawall has closed the fleet's connections.
            bot_writer.write(order_bytes("fd-1"))
            status, headers, _ = await read_answer(bot_reader)
            assert status == 200 or headers["x-seawall"] == "congested", (status, headers)
            return status == 200

        await wait_until_async(placed, timeout=10, interval=0.05)
        bot_writer.close()
        async with aiohttp.ClientSession() as session, session.get(admin_url + "/metrics") as r:
            metrics = {
                (sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(await r.text())
                for sample in family.samples
            }
        assert metrics[("seawall_congestion_total", (("cause", "local_resources"),))] >= 2
        assert not [key for key in metrics if key[0] == "seawall_upstream_errors_total"]
        assert metrics[("seawall_circuit_state", (("breaker", "trading"),))] == 0
        assert [seen.body.count(b"fd-1") for seen in upstream.seen] == [1]
    finally:
        for _, writer in held:
            writer.close()
        process.terminate()
        rest = await asyncio.wait_for(process.stderr.read(), 20)
        await process.wait()
    lines += [json.loads(line) for line in rest.splitlines() if line.strip()]
    # Logged as Seawall's own problem, once (the second failure waits for the next line's count).
    own = [line for line in lines if line["msg"].startswith("seawall out of local resources")]
    assert len(own) == 1 and own[0]["level"] == "warning" and own[0]["cause"] == "local_resources"
    assert "Too many open files" in own[0]["error"] and own[0]["fd_limit"] == limit
    assert not [line for line in lines if line["msg"].startswith("upstream error")]
    assert KEY not in rest.decode() and SIGNATURE not in rest.decode()
