"""One typed, validated config: profiles, overrides, and errors that name the key and line at fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import ConfigError, build_config, load_config, redacted


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "seawall.yaml"
    path.write_text(text)
    return path


def test_shipped_default_runs_orderly_against_the_real_exchange() -> None:
    config = load_config(env={})
    assert config.profile == "orderly"
    assert config.upstream.url == "https://api-evm.orderly.org"
    assert str(config.listen) == "127.0.0.1:8080"
    assert str(config.admin_listen) == "127.0.0.1:9090"
    assert {rule.name for rule in config.ratelimit.rules} >= {"order.place", "order.cancel", "public"}


def test_woox_profile_ships_its_own_upstream_and_per_symbol_placement_limit() -> None:
    config = build_config({"profile": "woox"})
    assert config.upstream.url == "https://api.woox.io"
    place = next(rule for rule in config.ratelimit.rules if rule.name == "order.place.v3")
    assert (place.limit, place.window, place.scope) == (5, 1.0, ("account", "symbol"))


def test_environment_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "profile: orderly\nlisten: 127.0.0.1:7000\nupstream: {url: 'http://127.0.0.1:1'}\n"
    )
    config = load_config(
        path,
        env={
            "SEAWALL_PROFILE": "woox",
            "SEAWALL_UPSTREAM": "http://127.0.0.1:5555",
            "SEAWALL_LISTEN": "0.0.0.0:8081",
            "SEAWALL_ADMIN_LISTEN": "[::1]:9091",
            "SEAWALL_REDIS_URL": "redis://:hunter2@127.0.0.1:6380/0",
            "SEAWALL_LOG_LEVEL": "DEBUG",
        },
    )
    assert config.profile == "woox"
    assert config.upstream.url == "http://127.0.0.1:5555"
    assert (config.listen.host, config.listen.port) == ("0.0.0.0", 8081)
    assert (config.admin_listen.host, config.admin_listen.port) == ("::1", 9091)
    assert config.state.backend == "redis"
    assert config.logging.level == "debug"


def test_seawall_config_env_names_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "listen: 127.0.0.1:7001\n")
    assert load_config(env={"SEAWALL_CONFIG": str(path)}).listen.port == 7001


def test_unknown_key_is_an_error_naming_key_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "profile: orderly\nserver:\n  max_body_bytes: 10\n  read_timout: 3\n")
    with pytest.raises(ConfigError) as error:
        load_config(path, env={})
    assert "server.read_timout: unknown key" in str(error.value)
    assert "line 4" in str(error.value)


def test_bad_value_names_the_key_in_a_list(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "ratelimit:\n  rules:\n    - name: x\n      routes: [order.place]\n      limit: 0\n",
    )
    with pytest.raises(ConfigError) as error:
        load_config(path, env={})
    assert "ratelimit.rules.0.limit" in str(error.value)
    assert "line 5" in str(error.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("profile: binance\n", "profile: must be one of orderly, woox"),
        ("listen: nowhere\n", "listen"),
        ("upstream: {url: 'ftp://x'}\n", "upstream.url"),
        ("upstream: {url: 'https://api.woox.io/v1'}\n", "upstream.url"),
        ("dedup: {ttl: soon}\n", "dedup.ttl"),
        (
            "ratelimit: {rules: [{name: a, routes: [no.such.route], limit: 1}]}\n",
            "unknown route 'no.such.route'",
        ),
        ("- just\n- a list\n", "top level must be a mapping"),
        ("upstream: {url: 'https://user:TOPSECRET@api.woox.io'}\n", "must not carry credentials"),
        ("upstream: {url: 'http://127.0.0.1:99999'}\n", "port between 1 and 65535"),
        ("upstream: {ca_file: /no/such/ca.pem}\n", "upstream.ca_file: Value error, cannot load CA"),
        ("state: {redis: {url: 'http://127.0.0.1:6379'}}\n", "state.redis.url"),
        (
            "ratelimit: {rules: [{name: a, routes: [order.place], limit: 1},\n"
            "                    {name: a, routes: [orders.list], limit: 2}]}\n",
            "rule names must be unique, repeated: a",
        ),
        (
            "breakers: {rules: [{name: b, routes: [order.place]}, {name: b, routes: [orders.list]}]}\n",
            "repeated: b",
        ),
        ("routes: [{name: x, path: '/v1/{a}/{a}'}]\n", "may appear only once"),
        ("routes: [{name: x, path: '/v1/{a-b}'}]\n", "must be an identifier"),
        ("key: [unclosed\n", "not valid YAML"),
    ],
)
def test_invalid_configs_are_refused_clearly(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(_write(tmp_path, text), env={})
    assert expected in str(error.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.yaml", env={})


def test_durations_accept_units() -> None:
    config = build_config({"server": {"read_timeout": "500ms", "shutdown_timeout": "1m"}})
    assert config.server.read_timeout == 0.5
    assert config.server.shutdown_timeout == 60.0


@pytest.mark.parametrize(
    "url",
    [
        "redis://user:hunter2@10.0.0.1:6379/0",
        "redis://default:p@ssw0rd-hunter2@10.0.0.1:6379/0",
        "unix:///run/redis.sock?db=0&password=hunter2",
        "rediss://:hunter2@cache.internal:6380/1",
    ],
)
def test_redis_passwords_are_redacted_wherever_the_url_carries_them(url: str) -> None:
    config = build_config({"state": {"backend": "redis", "redis": {"url": url}}})
    shown = redacted(config)["state"]["redis"]["url"]
    assert "hunter2" not in shown
    assert "***" in shown


def test_redacted_config_hides_keys_and_redis_password() -> None:
    config = build_config(
        {
            "profile": "woox",
            "identity": {
                "key_accounts": {"MySecretApiKey123": "acct-1"},
                "aliases": {"MySecretApiKey123": "bot-a"},
            },
            "state": {"backend": "redis", "redis": {"url": "redis://user:hunter2@10.0.0.1:6379/0"}},
        }
    )
    text = str(redacted(config))
    assert "MySecretApiKey123" not in text
    assert "hunter2" not in text
    assert "acct-1" in text and "bot-a" in text
