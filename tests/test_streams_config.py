"""The `streams` config: where the upstream stream URLs come from, and what is refused (naming the key)."""

from __future__ import annotations

import pytest
from fixtures_proxy import StartSeawall, seawall_config

from proxy.config_loader import ConfigError, build_config


@pytest.mark.parametrize("profile", ["orderly", "woox"])
def test_stream_urls_come_from_the_profile_and_follow_an_upstream_pointed_elsewhere(profile: str) -> None:
    shipped = build_config({"profile": profile}, env={})
    assert shipped.streams.public_url and shipped.streams.public_url.startswith("wss://")
    assert shipped.streams.private_url and shipped.streams.private_url.startswith("wss://")
    # The profile's own REST URL, restated: the profile's stream URLs stay.
    same = build_config({"profile": profile, "upstream": {"url": shipped.upstream.url}}, env={})
    assert same.streams.public_url == shipped.streams.public_url
    # A simulator (by file or by SEAWALL_UPSTREAM): streams go there too, never to the real exchange.
    for config in (
        seawall_config(profile, "http://127.0.0.1:5000"),
        build_config({"profile": profile}, env={"SEAWALL_UPSTREAM": "http://127.0.0.1:5000"}),
    ):
        assert (config.streams.public_url, config.streams.private_url) == (None, None)
    pinned = seawall_config(profile, "http://127.0.0.1:5000", streams={"public_url": "ws://10.0.0.1:7"})
    assert (pinned.streams.public_url, pinned.streams.private_url) == ("ws://10.0.0.1:7", None)


async def test_an_upstream_pointed_elsewhere_takes_the_streams_with_it(start_seawall: StartSeawall) -> None:
    seawall = await start_seawall("woox", "https://127.0.0.1:8443")
    assert seawall.streams is not None
    assert (seawall.streams.public_host, seawall.streams.private_host) == ("wss://127.0.0.1:8443",) * 2


@pytest.mark.parametrize(
    ("streams", "key", "problem"),
    [
        ({"public_path": "/ws/stream"}, "streams.public_path", "end with /{id}"),
        ({"private_url": "wss://h/v2"}, "streams.private_url", "no path"),
        ({"public_url": "https://h"}, "streams.public_url", "ws(s)://"),
        ({"private_path": "/ws/stream/{id}"}, "streams.private_path", "different paths"),
        ({"reconnect_min": "40s"}, "streams.reconnect_min", "reconnect_max"),
        ({"connects": {"limit": 0}}, "streams.connects.limit", "greater than or equal to 1"),
    ],
)
def test_stream_settings_are_checked_and_named(streams: dict[str, object], key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as refused:
        seawall_config("orderly", "http://127.0.0.1:5000", streams=streams)
    assert key in str(refused.value) and problem in str(refused.value)
