"""Market-data coalescing and micro-cache (proxy/policies/cache.py), through a real Seawall in front of a
recording upstream on loopback: who shares, what is kept, what twins get, and what it costs the budget."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from fixtures_proxy import RecordingUpstream, StartSeawall, held_until, wait_until, wait_until_async
from multidict import CIMultiDict, CIMultiDictProxy
from test_readme_snippets import readme_snippets

from proxy.answer import Answer
from proxy.app import Seawall
from proxy.config_loader import ConfigError, build_config
from proxy.context import RequestContext
from proxy.errors import SeawallError
from proxy.metrics import Metrics
from proxy.policies.cache import CachePolicy
from proxy.routing import RouteTable
from proxy.state.cache import MemoryCache

Reply = tuple[int, bytes, dict[str, str]]


async def get(
    seawall: Seawall,
    target: str,
    headers: Mapping[str, str] | None = None,
    method: str = "GET",
    timeout: float = 5.0,
) -> Reply:
    """One request on a fresh connection: status, body, and the headers (repeats joined)."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout), auto_decompress=False) as session,
        session.request(method, seawall.proxy_url + target, headers=dict(headers or {})) as answer,
    ):
        seen: dict[str, str] = {}
        for name, value in answer.headers.items():
            seen[name] = f"{seen[name]}, {value}" if name in seen else value
        return answer.status, await answer.read(), seen


def in_flight(seawall: Seawall) -> float:
    return seawall.metrics.registry.get_sample_value("seawall_in_flight_requests") or 0.0


def cache_count(seawall: Seawall, route: str, result: str) -> float:
    value = seawall.metrics.registry.get_sample_value(
        "seawall_cache_total", {"route": route, "result": result}
    )
    return value or 0.0


def without(headers: dict[str, str], *names: str) -> dict[str, str]:
    return {name: value for name, value in headers.items() if name not in names}


def cache_rules(*rules: dict[str, Any]) -> dict[str, Any]:
    return {"rules": list(rules)}


def answering(status: int, payload: bytes, **headers: str) -> Any:
    async def respond(request: web.BaseRequest, body: bytes) -> web.StreamResponse:
        return web.Response(status=status, body=payload, content_type="application/json", headers=headers)

    return respond


TICKER = "/v1/public/futures"  # orderly profile: market.ticker, coalesced only (ttl 0)
INFO = "/v1/public/info"  # orderly profile: public.info, kept 30 s


# --- coalescing ------------------------------------------------------------------------------------


async def test_identical_public_gets_in_flight_share_one_upstream_call(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    release = asyncio.Event()
    upstream.responder = held_until(release, {"rows": [{"symbol": "PERP_ETH_USDC", "mark_price": 2950}]})
    seawall = await start_seawall("orderly", upstream.url)
    bots = [asyncio.create_task(get(seawall, TICKER + "?symbol=PERP_ETH_USDC")) for _ in range(10)]
    await wait_until(lambda: in_flight(seawall) == 10 and len(upstream.seen) == 1)
    release.set()
    replies = await asyncio.gather(*bots)

    assert len(upstream.seen) == 1
    assert {status for status, _, _ in replies} == {200}
    marks = sorted(headers.get("X-Seawall", "") for _, _, headers in replies)
    assert marks == [""] + ["coalesced"] * 9
    first_body, first_headers = replies[0][1], without(replies[0][2], "X-Seawall")
    for _, body, headers in replies:  # byte for byte: the same body and the exchange's own headers
        assert body == first_body and without(headers, "X-Seawall") == first_headers
    assert b"2950" in first_body
    assert cache_count(seawall, "market.ticker", "miss") == 1
    assert cache_count(seawall, "market.ticker", "coalesced") == 9
    requests = seawall.metrics.registry.get_sample_value(
        "seawall_requests_total",
        {"route": "market.ticker", "method": "GET", "status": "200", "outcome": "coalesced"},
    )
    assert requests == 9


async def test_a_bot_that_hangs_up_leaves_its_twins_their_answer(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    release = asyncio.Event()
    upstream.responder = held_until(release, {"rows": []})
    seawall = await start_seawall("orderly", upstream.url)
    impatient = asyncio.create_task(get(seawall, TICKER))
    await wait_until(lambda: len(upstream.seen) == 1)
    twins = [asyncio.create_task(get(seawall, TICKER)) for _ in range(3)]
    await wait_until(lambda: in_flight(seawall) == 4)
    impatient.cancel()  # the first bot gives up and closes its connection
    await asyncio.gather(impatient, return_exceptions=True)
    release.set()
    replies = await asyncio.gather(*twins)
    assert [(status, headers["X-Seawall"]) for status, _, headers in replies] == [(200, "coalesced")] * 3
    assert len(upstream.seen) == 1


async def test_cancelling_the_first_request_never_cancels_the_call_its_twins_wait_for() -> None:
    """The shared call runs in its own task: cancelling the handler of the request that started it (as a
    server does on shutdown, or on a client gone) leaves it running for the twins."""
    config = build_config({"profile": "orderly", "upstream": {"url": "http://127.0.0.1:1"}}, env={})
    policy = CachePolicy(config.cache, config.identity, Metrics(), MemoryCache(10, 1 << 20))
    release = asyncio.Event()
    calls = 0

    async def exchange(ctx: RequestContext) -> Answer:
        nonlocal calls
        calls += 1
        await release.wait()
        return Answer(200, CIMultiDict({"Content-Type": "application/json"}), b'{"success":true}')

    def request() -> RequestContext:
        route = RouteTable(config.routes, config.identity).match("GET", TICKER)[0]
        return RequestContext("GET", TICKER, CIMultiDictProxy(CIMultiDict()), b"", "127.0.0.1", route)

    first = asyncio.create_task(policy.handle(request(), exchange))
    await wait_until(lambda: calls == 1)
    twins = [asyncio.create_task(policy.handle(request(), exchange)) for _ in range(3)]
    await wait_until(lambda: policy.status()["in_flight"] == 1 and all(not twin.done() for twin in twins))
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    release.set()
    answers = await asyncio.gather(*twins)
    assert [(answer.status, answer.headers["X-Seawall"]) for answer in answers] == [(200, "coalesced")] * 3
    assert calls == 1


async def test_twins_still_get_an_answer_when_the_shared_call_is_stopped_at_close() -> None:
    config = build_config({"profile": "orderly", "upstream": {"url": "http://127.0.0.1:1"}}, env={})
    policy = CachePolicy(config.cache, config.identity, Metrics(), MemoryCache(10, 1 << 20))
    never = asyncio.Event()

    async def exchange(ctx: RequestContext) -> Answer:
        await never.wait()
        raise AssertionError("never answered")

    route = RouteTable(config.routes, config.identity).match("GET", TICKER)[0]
    requests = [
        RequestContext("GET", TICKER, CIMultiDictProxy(CIMultiDict()), b"", "127.0.0.1", route)
        for _ in range(3)
    ]
    tasks = [asyncio.create_task(policy.handle(ctx, exchange)) for ctx in requests]
    # The flight exists once the tasks have run their first step: the twins are waiting on it by then.
    await wait_until(lambda: policy.status()["in_flight"] == 1)
    await policy.close()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)  # the first request's own call was stopped
    assert all(type(result) is SeawallError for result in results[1:]), results


async def test_private_requests_are_never_shared_nor_kept(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    release = asyncio.Event()
    upstream.responder = held_until(release, {"rows": []})
    seawall = await start_seawall("orderly", upstream.url, ratelimit={"enabled": False})
    credentials = [
        {"orderly-key": "ed25519:bot-key", "orderly-signature": "sig"},
        {"orderly-account-id": "0xabc"},
        {"Authorization": "Bearer x"},
        {"Cookie": "session=1"},
    ]
    bots = [asyncio.create_task(get(seawall, TICKER, headers)) for headers in credentials for _ in range(2)]
    await wait_until(lambda: len(upstream.seen) == 8)  # every one of them reaches the exchange
    release.set()
    replies = await asyncio.gather(*bots)
    assert all(status == 200 and "X-Seawall" not in headers for status, _, headers in replies)

    # A kept route: a private answer is neither kept nor given to a public request, and vice versa.
    await get(seawall, INFO, credentials[0])
    await get(seawall, INFO)
    await get(seawall, INFO, credentials[0])
    status, _, headers = await get(seawall, INFO)
    assert (status, headers["X-Seawall"]) == (200, "cache")
    assert len(upstream.seen) == 8 + 3
    assert cache_count(seawall, "market.ticker", "bypass") == 8
    assert cache_count(seawall, "public.info", "bypass") == 2


async def test_another_query_or_encoding_is_another_request(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    seawall = await start_seawall("orderly", upstream.url)
    variants: list[tuple[str, dict[str, str]]] = [
        (INFO + "?a=1&b=2", {}),
        (INFO + "?b=2&a=1", {}),  # the same parameters in another order: other bytes, another request
        (INFO + "?a=1&b=2", {"Accept-Encoding": "gzip"}),
        (INFO + "?a=1&b=2", {"Accept": "text/plain"}),
    ]
    for target, headers in variants:
        assert (await get(seawall, target, headers))[2].get("X-Seawall") is None
    for target, headers in variants:
        assert (await get(seawall, target, headers))[2]["X-Seawall"] == "cache"
    assert [seen.raw_path for seen in upstream.seen] == [target for target, _ in variants]


async def test_requests_that_are_not_plain_gets_pass_through(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    """`*` lists every route; a body, a conditional or a range header, or another method is not shared."""
    seawall = await start_seawall("orderly", upstream.url, cache=cache_rules({"routes": ["*"], "ttl": 30}))
    for _ in range(2):
        await get(seawall, "/v9/anything", method="POST")
        await get(seawall, "/v9/anything", {"If-None-Match": '"v1"'})
        await get(seawall, "/v9/anything", {"Range": "bytes=0-1"})
        await get(seawall, "/v9/anything", method="HEAD")
    assert len(upstream.seen) == 8
    await get(seawall, "/v9/anything")
    assert (await get(seawall, "/v9/anything"))[2]["X-Seawall"] == "cache"
    assert len(upstream.seen) == 9
    assert cache_count(seawall, "default", "bypass") == 8


# --- the micro-cache -------------------------------------------------------------------------------


async def test_a_kept_answer_is_the_same_bytes_with_its_age_until_the_ttl_ends(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    upstream.responder = answering(200, b'{"success":true,"data":{"rows":[1]}}', Age="7")
    seawall = await start_seawall(
        "orderly", upstream.url, cache=cache_rules({"routes": ["public.info"], "ttl": 0.4})
    )
    status, body, first = await get(seawall, INFO)
    assert status == 200 and "X-Seawall" not in first
    status, kept, headers = await get(seawall, INFO)
    assert (status, kept) == (200, body)
    assert headers["X-Seawall"] == "cache"
    assert headers["Age"] == "7"  # the exchange's own Age plus the whole seconds Seawall kept it
    assert without(headers, "X-Seawall", "Age") == without(first, "Age")
    assert len(upstream.seen) == 1

    async def expired() -> bool:
        return "X-Seawall" not in (await get(seawall, INFO))[2]

    await wait_until_async(expired, timeout=5.0, interval=0.05)
    assert len(upstream.seen) == 2
    assert cache_count(seawall, "public.info", "stored") == 2
    assert cache_count(seawall, "public.info", "hit") >= 1


@pytest.mark.parametrize(
    ("status", "payload"),
    [
        (200, b'{"success":false,"code":-1000,"message":"An unknown error occurred"}'),
        (200, b'{"success":"false","code":"-1011"}'),
        (500, b"<html>gateway</html>"),
        (404, b'{"success":true}'),
        (206, b'{"success":true}'),
    ],
)
async def test_errors_are_never_kept(
    upstream: RecordingUpstream, start_seawall: StartSeawall, status: int, payload: bytes
) -> None:
    upstream.responder = answering(status, payload)
    seawall = await start_seawall("orderly", upstream.url)
    for _ in range(3):
        answer_status, body, headers = await get(seawall, INFO)
        assert (answer_status, body) == (status, payload) and "X-Seawall" not in headers
    assert len(upstream.seen) == 3
    assert cache_count(seawall, "public.info", "not_stored") == 3


async def test_a_twin_gets_the_error_of_the_attempt_it_waited_for(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    release = asyncio.Event()
    error = b'{"success":false,"code":-1000,"message":"An unknown error occurred"}'

    async def respond(request: web.BaseRequest, body: bytes) -> web.StreamResponse:
        await release.wait()
        return web.Response(status=500, body=error, content_type="application/json")

    upstream.responder = respond
    seawall = await start_seawall("orderly", upstream.url)
    bots = [asyncio.create_task(get(seawall, INFO)) for _ in range(5)]
    await wait_until(lambda: in_flight(seawall) == 5)
    release.set()
    replies = await asyncio.gather(*bots)
    assert {(status, body) for status, body, _ in replies} == {(500, error)}
    assert sorted(headers.get("X-Seawall", "") for _, _, headers in replies) == [""] + ["coalesced"] * 4
    assert len(upstream.seen) == 1
    # Not kept: the next request tries again.
    await get(seawall, INFO)
    assert len(upstream.seen) == 2


async def test_a_twin_gets_seawalls_own_answer_when_the_attempt_failed_locally(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    never = asyncio.Event()  # set at the end only, so the upstream's handlers can finish
    upstream.responder = held_until(never)
    seawall = await start_seawall(
        "orderly",
        upstream.url,
        upstream={"timeout": 1.0, "answer_timeout": 0.6, "min_send_time": 0.1, "connect_timeout": 0.5},
    )
    bots = [asyncio.create_task(get(seawall, INFO)) for _ in range(4)]
    replies = await asyncio.gather(*bots)
    assert len(upstream.seen) == 1
    assert {status for status, _, _ in replies} == {400}
    assert all(b'"code":-1011' in body for _, body, _ in replies)
    assert {headers["X-Seawall"] for _, _, headers in replies} == {"upstream-unavailable"}
    never.set()


async def test_answers_that_vary_by_another_header_are_not_kept(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    varies: dict[str, str] = {"Vary": "Accept-Encoding, X-Region"}
    upstream.responder = answering(200, b'{"success":true}', **varies)
    seawall = await start_seawall("orderly", upstream.url)
    await get(seawall, INFO)
    await get(seawall, INFO)
    assert len(upstream.seen) == 2
    varies["Vary"] = "Accept-Encoding"  # the identity has it: kept
    upstream.responder = answering(200, b'{"success":true}', **varies)
    await get(seawall, INFO)
    assert (await get(seawall, INFO))[2]["X-Seawall"] == "cache"
    assert len(upstream.seen) == 3


async def test_the_cache_is_bounded_in_entries_and_in_bytes(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    upstream.responder = answering(200, b'{"success":true,"data":"' + b"x" * 1500 + b'"}')
    seawall = await start_seawall(
        "orderly",
        upstream.url,
        cache={"max_entries": 3, "max_bytes": 4096, "max_entry_bytes": 4096},
    )
    for n in range(4):  # each entry is ~2 KiB: two fit in 4 KiB, the least recently used go first
        await get(seawall, f"{INFO}?n={n}")
    status = seawall.status()["cache"]
    assert status["entries"] == 2 and status["bytes"] <= 4096
    assert (await get(seawall, f"{INFO}?n=3"))[2]["X-Seawall"] == "cache"
    assert "X-Seawall" not in (await get(seawall, f"{INFO}?n=0"))[2]  # evicted: asked again
    assert cache_count(seawall, "public.info", "evicted") == 3
    assert seawall.metrics.registry.get_sample_value("seawall_cache_entries") == 2

    upstream.responder = answering(200, b"[]")  # small answers: now the entry count binds
    for n in range(10, 15):
        await get(seawall, f"{INFO}?n={n}")
    assert seawall.status()["cache"]["entries"] == 3


async def test_an_answer_over_the_entry_size_is_passed_on_but_not_kept(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    big = b'{"success":true,"data":"' + b"x" * 3000 + b'"}'
    upstream.responder = answering(200, big)
    seawall = await start_seawall("orderly", upstream.url, cache={"max_entry_bytes": 2048})
    for _ in range(2):
        assert (await get(seawall, INFO))[1] == big
    assert len(upstream.seen) == 2
    assert cache_count(seawall, "public.info", "not_stored") == 2


# --- what it costs: budget and breakers ------------------------------------------------------------


async def test_hits_and_twins_spend_no_rate_budget(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    release = asyncio.Event()
    seawall = await start_seawall(
        "orderly",
        upstream.url,
        ratelimit={
            "rules": [
                {
                    "name": "public",
                    "routes": ["public.info", "market.ticker"],
                    "limit": 2,
                    "window": "30s",
                    "scope": ["global"],
                    "on_limit": "reject",
                }
            ]
        },
    )
    assert (await get(seawall, INFO))[0] == 200  # the one slot a kept route spends
    hits = [await get(seawall, INFO) for _ in range(20)]
    assert {(status, headers["X-Seawall"]) for status, _, headers in hits} == {(200, "cache")}

    upstream.responder = held_until(release)
    bots = [asyncio.create_task(get(seawall, TICKER)) for _ in range(10)]
    await wait_until(lambda: in_flight(seawall) == 10)
    release.set()
    assert {status for status, _, _ in await asyncio.gather(*bots)} == {200}  # one slot for ten bots

    status, _, headers = await get(seawall, TICKER + "?symbol=PERP_BTC_USDC")
    assert (status, headers["X-Seawall"]) == (429, "ratelimit")  # the budget was 2, and 2 were spent
    assert len(upstream.seen) == 2


async def test_a_kept_answer_is_served_while_the_breaker_is_open(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    seawall = await start_seawall(
        "orderly",
        upstream.url,
        breakers={
            "rules": [
                {"name": "info", "routes": ["public.info"], "failure_threshold": 1, "reset_timeout": "30s"}
            ]
        },
    )
    await get(seawall, INFO + "?symbol=PERP_ETH_USDC")
    upstream.responder = answering(200, b'{"success":false,"code":-1011,"message":"down"}')
    assert b"-1011" in (await get(seawall, INFO + "?symbol=PERP_BTC_USDC"))[1]  # trips the breaker
    assert (await get(seawall, INFO + "?symbol=PERP_SOL_USDC"))[2]["X-Seawall"] == "circuit-open"
    status, body, headers = await get(seawall, INFO + "?symbol=PERP_ETH_USDC")
    assert (status, headers["X-Seawall"]) == (200, "cache") and b'"success": true' in body
    assert len(upstream.seen) == 2


# --- shared signed routes --------------------------------------------------------------------------

BOOK = "/v1/orderbook/PERP_ETH_USDC"  # orderly: signed, the same book for every account


def signed(key: str) -> dict[str, str]:
    return {"orderly-account-id": "0x" + key * 8, "orderly-key": f"ed25519:{key}", "orderly-signature": key}


async def test_a_signed_route_is_shared_across_accounts_only_when_the_profile_says_so(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    seawall = await start_seawall("orderly", upstream.url)
    for key in ("a", "b"):
        assert "X-Seawall" not in (await get(seawall, BOOK, signed(key)))[2]
    assert len(upstream.seen) == 2

    shared = await start_seawall(
        "orderly",
        upstream.url,
        cache=cache_rules({"routes": ["market.orderbook"], "ttl": 30, "shared": True}),
    )
    first = await get(shared, BOOK, signed("a"))
    second = await get(shared, BOOK, signed("b"))
    assert second[2]["X-Seawall"] == "cache" and second[1] == first[1]
    assert len(upstream.seen) == 3


async def test_on_a_shared_route_a_twin_sends_its_own_request_after_another_accounts_failure(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    release = asyncio.Event()
    refused = b'{"success":false,"code":-1002,"message":"unauthorized"}'

    async def respond(request: web.BaseRequest, body: bytes) -> web.StreamResponse:
        await release.wait()
        if request.headers["orderly-key"] == "ed25519:bad":
            return web.Response(status=401, body=refused, content_type="application/json")
        return web.json_response({"success": True, "data": {"asks": [], "bids": []}})

    upstream.responder = respond
    seawall = await start_seawall(
        "orderly",
        upstream.url,
        cache=cache_rules({"routes": ["market.orderbook"], "ttl": 0, "shared": True}),
    )
    bad = asyncio.create_task(get(seawall, BOOK, signed("bad")))
    await wait_until(lambda: len(upstream.seen) == 1)
    good = asyncio.create_task(get(seawall, BOOK, signed("good")))
    await wait_until(lambda: in_flight(seawall) == 2)
    assert len(upstream.seen) == 1  # the twin waits for the request in flight
    release.set()
    assert (await bad)[:2] == (401, refused)
    status, body, headers = await good
    assert status == 200 and b"asks" in body and "X-Seawall" not in headers
    assert [seen.headers["orderly-key"] for seen in upstream.seen] == ["ed25519:bad", "ed25519:good"]


# --- config ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cache", "message"),
    [
        ({"rules": [{"routes": ["public.infos"], "ttl": 1}]}, "cache.rules.0.routes.0: unknown route"),
        ({"rules": [{"routes": ["*"], "shared": True}]}, "cache.rules.0.shared: a shared rule must name"),
        ({"rules": [{"routes": ["public"], "ttl": -1}]}, "cache.rules.0.ttl"),
        ({"max_entry_bytes": 40_000_000}, "cache.max_entry_bytes: must not exceed cache.max_bytes"),
        ({"max_entries": 0}, "cache.max_entries"),
        ({"rules": [{"routes": ["public"], "ttl": 1, "stale": 2}]}, "cache.rules.0.stale: unknown key"),
    ],
)
def test_a_bad_cache_section_is_refused_at_start_naming_the_key(cache: dict[str, Any], message: str) -> None:
    data = {"profile": "orderly", "upstream": {"url": "http://127.0.0.1:1"}, "cache": cache}
    with pytest.raises(ConfigError) as refused:
        build_config(data, env={})
    assert message in str(refused.value)


async def test_with_the_cache_off_nothing_is_shared(
    upstream: RecordingUpstream, start_seawall: StartSeawall
) -> None:
    seawall = await start_seawall("orderly", upstream.url, cache={"enabled": False})
    assert "cache" not in seawall.status()["policies"]
    for _ in range(2):
        assert "X-Seawall" not in (await get(seawall, INFO))[2]
    assert len(upstream.seen) == 2


@pytest.mark.parametrize("profile", ["orderly", "woox"])
def test_the_profiles_keep_reference_data_and_only_coalesce_books_and_tickers(profile: str) -> None:
    config = build_config({"profile": profile, "upstream": {"url": "http://127.0.0.1:1"}}, env={})
    ttl = {route: rule.ttl for rule in reversed(config.cache.rules) for route in rule.routes}
    assert ttl["public.info"] == ttl["public.token"] == 30 and ttl["public.system_info"] == 10
    assert ttl["market.ticker"] == ttl["public"] == 0
    assert not any(rule.shared for rule in config.cache.rules)  # sharing a signed route is opt-in
    if profile == "woox":
        assert ttl["market.orderbook"] == 0
    # Each route the cache coalesces draws from the exchange's per-IP budget in the limiter too.
    limited = {route for rule in config.ratelimit.rules if rule.scope == ("global",) for route in rule.routes}
    assert set(ttl) <= limited


def test_the_readme_cache_config_is_valid_and_shares_only_the_book() -> None:
    snippet = readme_snippets()["cache-config"]
    config = build_config(yaml.safe_load(snippet.code), env={})
    assert [rule.routes for rule in config.cache.rules if rule.shared] == [("market.orderbook",)]
