"""One typed, validated config: profiles, overrides, and errors that name the key and line at fault."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml

from proxy.config_loader import ConfigError, build_config, load_config, redacted, shipped_config_dir


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
            "ratelimit.rules.0.routes.0: unknown route 'no.such.route'",
        ),
        ("- just\n- a list\n", "top level must be a mapping"),
        ("upstream: {url: 'https://user:TOPSECRET@api.woox.io'}\n", "must not carry credentials"),
        ("upstream: {url: 'http://127.0.0.1:99999'}\n", "port between 1 and 65535"),
        ("upstream: {ca_file: /no/such/ca.pem}\n", "upstream.ca_file: cannot load CA"),
        ("state: {redis: {url: 'http://127.0.0.1:6379'}}\n", "state.redis.url"),
        (
            "ratelimit: {rules: [{name: a, routes: [order.place], limit: 1},\n"
            "                    {name: a, routes: [orders.list], limit: 2}]}\n",
            "ratelimit.rules.1.name: rule names must be unique: 'a' is also rule 0",
        ),
        (
            "breakers: {rules: [{name: b, routes: [order.place]}, {name: b, routes: [orders.list]}]}\n",
            "breakers.rules.1.name: rule names must be unique: 'b' is also rule 0",
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
    # Said in the user's terms: no pydantic wording, never a key-less "(top level)".
    assert "Value error" not in str(error.value)
    assert "Input should" not in str(error.value)
    assert "(top level)" not in str(error.value)


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


# ---------------------------------------------------------------------------------------------------
# Messages name what the user typed: the environment variable and its value, or the key and its line.


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        (
            "SEAWALL_UPSTREAM",
            "ftp://x",
            "SEAWALL_UPSTREAM='ftp://x' (overrides upstream.url): must be http(s)://",
        ),
        ("SEAWALL_LISTEN", "nowhere", "SEAWALL_LISTEN='nowhere' (overrides listen): expected host:port"),
        ("SEAWALL_ADMIN_LISTEN", "9090", "SEAWALL_ADMIN_LISTEN='9090' (overrides admin_listen): expected"),
        ("SEAWALL_LOG_LEVEL", "loud", "SEAWALL_LOG_LEVEL='loud' (overrides logging.level): must be 'debug'"),
        ("SEAWALL_PROFILE", "binance", "SEAWALL_PROFILE='binance' (overrides profile): must be one of"),
        (
            "SEAWALL_REDIS_URL",
            "http://127.0.0.1:6379",
            "SEAWALL_REDIS_URL='http://127.0.0.1:6379' (overrides state.redis.url): must start with redis://",
        ),
    ],
)
def test_a_bad_environment_override_names_the_variable_and_its_value(
    tmp_path: Path, variable: str, value: str, expected: str
) -> None:
    path = _write(tmp_path, "profile: orderly\nlogging: {level: info}\n")
    with pytest.raises(ConfigError) as error:
        load_config(path, env={variable: value})
    message = str(error.value)
    assert expected in message
    # Not a line of the file or of the shipped profile: the value did not come from there.
    assert "line" not in message and "profiles/" not in message


def test_a_value_from_the_config_file_is_never_blamed_on_the_shipped_profile(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        build_config({"upstream": {"url": "ftp://x"}}, env={})
    assert "upstream.url: must be http(s)://" in str(error.value)
    assert "profiles/" not in str(error.value)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SEAWALL_REDIS_URL", "http://user:hunter2@10.0.0.1:6379/0"),
        ("SEAWALL_REDIS_URL", "redis://:hunter2@[not-an-address:6379"),
        ("SEAWALL_REDIS_URL", "ftp://x/?password=hunter2"),
        ("SEAWALL_UPSTREAM", "https://user:hunter2@api.woox.io"),
        ("SEAWALL_UPSTREAM", "https://user:hunter2@[broken"),
    ],
)
def test_passwords_in_url_overrides_stay_redacted_in_errors(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as error:
        build_config({}, env={variable: value})
    assert variable in str(error.value)
    assert "hunter2" not in str(error.value)


def test_errors_inside_key_mappings_show_a_fingerprint_not_the_api_key() -> None:
    with pytest.raises(ConfigError) as error:
        build_config({"identity": {"aliases": {"MySecretApiKey123": ["not", "a", "name"]}}}, env={})
    assert "MySecretApiKey123" not in str(error.value)
    assert "identity.aliases.k-" in str(error.value)


def test_a_missing_file_named_by_seawall_config_says_so(tmp_path: Path) -> None:
    absent = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as error:
        load_config(env={"SEAWALL_CONFIG": str(absent)})
    assert f"SEAWALL_CONFIG='{absent}'" in str(error.value)
    assert "cannot read config file" in str(error.value)


@pytest.mark.parametrize(
    ("text", "expected", "line"),
    [
        # The key at fault is the one the user set, with its line; the other key is named in the text.
        (
            "upstream:\n  min_send_time: 20s\n",
            "upstream.min_send_time: must be below upstream.timeout (10s)",
            2,
        ),
        ("upstream:\n  timeout: 0.2\n", "upstream.timeout: must be above upstream.min_send_time (0.3s)", 2),
        (
            "ratelimit:\n  rules:\n    - name: a\n      routes: [order.place,\n               order.plase]\n"
            "      limit: 1\n",
            "ratelimit.rules.0.routes.1: unknown route 'order.plase' (did you mean 'order.place'?",
            5,
        ),
        (
            "breakers:\n  rules:\n    - {name: b, routes: [order.place]}\n    - {name: c, routes: [x.y]}\n",
            "breakers.rules.1.routes.0: unknown route 'x.y'",
            4,
        ),
    ],
)
def test_cross_field_errors_name_the_key_and_its_line(
    tmp_path: Path, text: str, expected: str, line: int
) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(_write(tmp_path, text), env={})
    message = str(error.value)
    assert expected in message
    assert message.endswith(f"seawall.yaml, line {line})")
    assert "(top level)" not in message and "Value error" not in message


def test_a_bare_port_as_listener_says_host_port_is_expected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(_write(tmp_path, "listen: 8080\n"), env={})
    assert "listen: expected host:port, got '8080'" in str(error.value)
    assert "line 1" in str(error.value)


def test_a_priority_for_a_route_outside_its_rule_is_refused(tmp_path: Path) -> None:
    text = (
        "ratelimit:\n  rules:\n    - name: a\n      routes: [order.place]\n      limit: 1\n"
        "      priority: {order.cancel: 5}\n"
    )
    with pytest.raises(ConfigError) as error:
        load_config(_write(tmp_path, text), env={})
    assert "ratelimit.rules.0.priority.order.cancel: 'order.cancel' is not one of this rule's routes" in str(
        error.value
    )
    assert str(error.value).endswith("line 6)")


@pytest.mark.parametrize("profile", ["orderly", "woox"])
def test_the_priority_example_in_each_shipped_profile_is_a_valid_rule(profile: str) -> None:
    """The commented `priority` example in the profile, uncommented and added to its rules, validates and
    ranks cancels above placements."""
    lines = (shipped_config_dir() / "profiles" / f"{profile}.yaml").read_text().splitlines()
    start = lines.index("  #   - name: desk")
    block = [lines[start], *itertools.takewhile(lambda line: line.startswith("  #     "), lines[start + 1 :])]
    rule = yaml.safe_load("\n".join(line.removeprefix("  #") for line in block))[0]
    shipped = build_config({"profile": profile})
    rules = [r.model_dump(mode="json") for r in shipped.ratelimit.rules] + [rule]
    config = build_config({"profile": profile, "ratelimit": {"rules": rules}})
    desk = next(r for r in config.ratelimit.rules if r.name == "desk")
    placements = [route for route in desk.routes if "place" in route]
    cancels = [route for route in desk.routes if "cancel" in route]
    assert placements and cancels
    assert all(desk.priority.get(c, 0) > desk.priority.get(p, 0) for c in cancels for p in placements)
