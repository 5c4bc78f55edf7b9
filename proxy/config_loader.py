"""Reading the config: YAML files with the line of every key, a file merged over its shipped profile,
environment overrides on top, validation into `SeawallConfig` (proxy/config.py, the schema), and error
messages that name what the user typed — the key and line of a file, or the environment variable and its
value — never a line of a shipped profile for a value the user set elsewhere.

A config file names a shipped profile (`config/profiles/<name>.yaml`: upstream URL, identity, routes and
the exchange's documented limits); the file's own keys are merged over the profile's (mappings merge,
lists replace), environment overrides win over both.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from yarl import URL

from proxy.config import PROFILES, CrossFieldError, SeawallConfig, split_redis_url
from proxy.identity import key_fingerprint
from proxy.shipped import default_config_path, profile_path, shipped_config_dir

__all__ = [
    "ConfigError",
    "build_config",
    "load_config",
    "redact_url",
    "redacted",
    "shipped_config_dir",
]


class ConfigError(Exception):
    """A config problem, with the key path (and line) at fault, fit for a startup message."""


# ---------------------------------------------------------------------------------------------------
# Loading


class _LineLoader(yaml.SafeLoader):
    """A YAML loader that remembers the line of every key, so errors can point at it."""


def _load_with_lines(text: str, source: str) -> tuple[Any, dict[tuple[Any, ...], int]]:
    try:
        node = yaml.compose(text, Loader=_LineLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if node is None:
        return {}, {}
    lines: dict[tuple[Any, ...], int] = {}

    def walk(current: yaml.Node, path: tuple[Any, ...]) -> None:
        lines[path] = current.start_mark.line + 1
        if isinstance(current, yaml.MappingNode):
            for key_node, value_node in current.value:
                walk(value_node, (*path, key_node.value))
                lines[(*path, key_node.value)] = key_node.start_mark.line + 1
        elif isinstance(current, yaml.SequenceNode):
            for index, item in enumerate(current.value):
                walk(item, (*path, index))

    walk(node, ())
    data = yaml.load(text, Loader=_LineLoader)
    return data, lines


def _read_yaml(path: Path) -> tuple[dict[str, Any], dict[tuple[Any, ...], int]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    data, lines = _load_with_lines(text, str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return data, lines


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# Environment variable -> the key it overrides. SEAWALL_REDIS_URL also switches state.backend to redis.
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "SEAWALL_PROFILE": ("profile",),
    "SEAWALL_UPSTREAM": ("upstream", "url"),
    "SEAWALL_LISTEN": ("listen",),
    "SEAWALL_ADMIN_LISTEN": ("admin_listen",),
    "SEAWALL_REDIS_URL": ("state", "redis", "url"),
    "SEAWALL_REDIS_MODE": ("state", "redis", "mode"),
    "SEAWALL_REDIS_SENTINEL_MASTER": ("state", "redis", "sentinel_master"),
    "SEAWALL_LOG_LEVEL": ("logging", "level"),
}
# Variables whose values are URLs that may carry a password: shown redacted in messages.
_URL_VARIABLES = frozenset({"SEAWALL_UPSTREAM", "SEAWALL_REDIS_URL"})
# Mappings keyed by API keys: an error inside one must not print the key.
_KEYED_BY_API_KEY = (("identity", "key_accounts"), ("identity", "aliases"))

Lines = dict[tuple[Any, ...], int]


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """The config keys the environment sets (an empty variable sets nothing)."""
    overrides: dict[str, Any] = {}
    for variable, path in ENV_OVERRIDES.items():
        value = env.get(variable)
        if value:
            _set_path(overrides, path, value)
    if "url" in overrides.get("state", {}).get("redis", {}):
        overrides["state"]["backend"] = "redis"
    return overrides


def _set_path(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        data = data.setdefault(part, {})
    data[path[-1]] = value


@dataclass(frozen=True)
class _Layer:
    """One source of config keys, in merge order: the shipped profile, the file, the environment."""

    data: Mapping[str, Any]
    source: str
    lines: Lines
    env: Mapping[str, str] | None = None  # set for the environment layer


def _lookup(data: Any, path: tuple[Any, ...]) -> tuple[bool, Any]:
    for part in path:
        in_mapping = isinstance(data, Mapping) and part in data
        in_list = isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        if not (in_mapping or in_list):
            return False, None
        data = data[part]
    return True, data


def _origin(loc: tuple[Any, ...], layers: list[_Layer]) -> _Layer | None:
    """The layer the value at `loc` came from, following the merge: a mapping merges with the mappings
    below it; anything else (a scalar, a list) replaces what is below, so its layer owns the subtree."""
    candidates = list(layers)  # lowest first
    owner: _Layer | None = None
    for depth in range(1, len(loc) + 1):
        present = [layer for layer in candidates if _lookup(layer.data, loc[:depth])[0]]
        if not present:
            break
        owner = present[-1]
        if not isinstance(_lookup(owner.data, loc[:depth])[1], Mapping):
            return owner
        merging: list[_Layer] = []
        for layer in reversed(present):  # the mappings stacked on top merge; a non-mapping ends it
            if not isinstance(_lookup(layer.data, loc[:depth])[1], Mapping):
                break
            merging.insert(0, layer)
        candidates = merging
    return owner


def _shown_value(variable: str, value: str) -> str:
    if variable not in _URL_VARIABLES:
        return repr(value)
    shown = redact_url(value)
    if shown == "<unparsable url>":  # still show what can be shown, minus any user:password@
        shown = re.sub(r"//[^/@]*@", "//***@", value)
    return repr(shown)


def _key_text(loc: tuple[Any, ...]) -> str:
    parts = [str(part) for part in loc]
    for prefix in _KEYED_BY_API_KEY:
        if tuple(loc[: len(prefix)]) == prefix and len(loc) > len(prefix):
            parts[len(prefix)] = key_fingerprint(str(loc[len(prefix)]))
    return ".".join(parts)


def _where(loc: tuple[Any, ...], layer: _Layer) -> str:
    """` (file, line N)` for the deepest part of `loc` the layer has a line for."""
    for depth in range(len(loc), 0, -1):
        if loc[:depth] in layer.lines:
            return f" ({layer.source}, line {layer.lines[loc[:depth]]})"
    return f" ({layer.source})" if layer.lines else ""


def _problem(loc: tuple[Any, ...], message: str, layers: list[_Layer]) -> str:
    """One problem, named as the user wrote it: the environment variable and its value, or the key
    path and the file and line it came from."""
    key = _key_text(loc)
    layer = _origin(loc, layers)
    if layer is not None and layer.env is not None:
        for variable, path in ENV_OVERRIDES.items():
            overlaps = loc[: len(path)] == path or path[: len(loc)] == loc
            if overlaps and variable in layer.env:
                value = _shown_value(variable, layer.env[variable])
                return f"{variable}={value} (overrides {'.'.join(path)}): {message}"
    return f"{key}: {message}" + (_where(loc, layer) if layer is not None else "")


_PLAIN_MESSAGES = {
    "extra_forbidden": "unknown key",
    "missing": "required, but not given",
    "model_type": "must be a mapping of keys",
    "model_attributes_type": "must be a mapping of keys",
    "dict_type": "must be a mapping",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
}


def _describe(error: Mapping[str, Any], layers: list[_Layer]) -> str:
    """A pydantic error as the user would fix it: no pydantic wording, the key and where it was set."""
    loc = tuple(error["loc"])
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, CrossFieldError):
        # Name the key the user set (the environment or their file), not a default or the profile.
        chosen = cause.candidates[0]
        for candidate_loc, message in cause.candidates:
            layer = _origin(candidate_loc, layers)
            if layer is not None and layer is not layers[0] and _lookup(layer.data, candidate_loc)[0]:
                chosen = (candidate_loc, message)
                break
        return _problem(*chosen, layers)
    message = _PLAIN_MESSAGES.get(error["type"]) or str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    if message.startswith("Input should be "):
        message = "must be " + message.removeprefix("Input should be ")
    return _problem(loc, message, layers)


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> SeawallConfig:
    """Read the config file (or the shipped default) over its profile, apply env overrides, validate."""
    env = os.environ if env is None else env
    named_by_env = path is None and bool(env.get("SEAWALL_CONFIG"))
    chosen = Path(path or env.get("SEAWALL_CONFIG") or default_config_path())
    try:
        user, user_lines = _read_yaml(chosen)
    except ConfigError as error:
        if named_by_env:
            raise ConfigError(f"SEAWALL_CONFIG={str(chosen)!r}: {error}") from None
        raise
    return build_config(user, env, source=str(chosen), lines=user_lines)


def build_config(
    user: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    *,
    source: str = "config",
    lines: Lines | None = None,
) -> SeawallConfig:
    """Validate config data (a file's keys) merged over its profile, with env overrides on top.

    A `ConfigError` names each problem as the user wrote it: an environment variable with its value
    (URL passwords redacted), or the key path with the file and line it came from."""
    env = env or {}
    overrides = _env_overrides(env)
    layers = [_Layer(user, source, lines or {}), _Layer(overrides, "environment", {}, env)]
    profile = overrides.get("profile", user.get("profile", "orderly"))
    if profile not in PROFILES:
        problem = f"must be one of {', '.join(PROFILES)}"
        if "profile" not in overrides:  # the environment's value is shown with its variable
            problem += f", got {profile!r}"
        raise ConfigError(f"invalid config: {_problem(('profile',), problem, layers)}")
    profile_file = profile_path(profile)
    profile_data, profile_lines = _read_yaml(profile_file)
    layers.insert(0, _Layer(profile_data, f"profile {profile_file}", profile_lines))
    merged = _merge(_merge(profile_data, user), overrides)
    merged["profile"] = profile
    _streams_follow_upstream(merged, profile_data, (user, overrides))
    try:
        return SeawallConfig.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(_describe(err, layers) for err in exc.errors())
        raise ConfigError(f"invalid config: {problems}") from None


def _streams_follow_upstream(
    merged: dict[str, Any], profile: Mapping[str, Any], set_by_user: tuple[Mapping[str, Any], ...]
) -> None:
    """The profile's stream URLs belong with the profile's exchange: when `upstream.url` points elsewhere
    (the simulator, a testnet) and a stream URL is not set too, that stream goes to upstream.url's host,
    never to the real exchange behind the bot's back."""
    if _lookup(merged, ("upstream", "url")) == _lookup(profile, ("upstream", "url")):
        return
    streams = merged.get("streams")
    if not isinstance(streams, Mapping):
        return
    kept = dict(streams)
    for key in ("public_url", "private_url"):
        if not any(_lookup(layer, ("streams", key))[0] for layer in set_by_user):
            kept.pop(key, None)
    merged["streams"] = kept


def redact_url(url: str) -> str:
    """A URL safe to print: no password, whether in the authority or the query (`?password=`)."""
    try:
        parsed = URL(url)
        if parsed.password is not None:
            parsed = parsed.with_password("***")
        secrets = [name for name in parsed.query if name.lower().endswith("password")]  # sentinel_password
        if secrets:
            parsed = parsed.update_query({name: "***" for name in secrets})
        return str(parsed)
    except (ValueError, TypeError):
        pass
    scheme, user_info, hosts, rest = split_redis_url(url)
    if not hosts or "://" not in url:
        return "<unparsable url>"
    # Several hosts (the sentinels): yarl cannot parse it; redact the user info and password parameters.
    user, colon, _ = user_info.partition(":")
    authority = (f"{user}:***@" if colon else f"{user}@" if user else "") + ",".join(hosts)
    rest = re.sub(r"(?i)([?&][^=&#]*password=)[^&#]*", r"\1***", rest)
    return f"{scheme}://{authority}{rest}"


def redacted(config: SeawallConfig) -> dict[str, Any]:
    """The effective config as plain data with secrets (keys, Redis passwords) redacted."""
    data = config.model_dump(mode="json")
    identity = data["identity"]
    identity["key_accounts"] = {key_fingerprint(k): v for k, v in identity["key_accounts"].items()}
    identity["aliases"] = {key_fingerprint(k): v for k, v in identity["aliases"].items()}
    data["state"]["redis"]["url"] = redact_url(data["state"]["redis"]["url"])
    data["listen"] = str(config.listen)
    data["admin_listen"] = str(config.admin_listen)
    return data
