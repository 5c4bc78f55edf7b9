"""The one typed, validated configuration model, read once at start.

A config file names a shipped profile (`config/profiles/<name>.yaml`: upstream URL, identity, routes and
the exchange's documented limits); the file's own keys are merged over the profile's (mappings merge,
lists replace), environment overrides win over both, and the result is validated into `SeawallConfig`.
Unknown keys are errors; an error names the key path and, where it came from a file, the line.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator
from yarl import URL

from proxy.shipped import default_config_path, profile_path, shipped_config_dir

PROFILES = ("orderly", "woox")
SCOPE_DIMENSIONS = ("key", "account", "symbol", "client", "global")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def _parse_duration(value: Any) -> Any:
    """Accept seconds as a number or a string such as `500ms`, `1s`, `10s`, `1m`."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"not a duration: {value!r} (use e.g. 0.5, 500ms, 1s, 1m)")
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return value


Seconds = Annotated[float, BeforeValidator(_parse_duration), Field(ge=0)]
PositiveSeconds = Annotated[float, BeforeValidator(_parse_duration), Field(gt=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HostPort(_Model):
    host: str
    port: int = Field(ge=0, le=65535)

    @classmethod
    def parse(cls, text: str) -> HostPort:
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"expected host:port, got {text!r}")
        return cls(host=host.strip("[]") or "127.0.0.1", port=int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _host_port(value: Any) -> Any:
    return HostPort.parse(value) if isinstance(value, str) else value


Listen = Annotated[HostPort, BeforeValidator(_host_port)]


class UpstreamConfig(_Model):
    url: str = Field(description="the exchange's base URL, scheme://host[:port], no path")
    connect_timeout: PositiveSeconds = 3.0
    timeout: PositiveSeconds = 10.0
    max_connections: int = Field(default=100, ge=1)
    max_response_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    ca_file: str | None = Field(
        default=None,
        description="PEM file of CA certificates to trust for an https upstream, instead of the system's",
    )

    @field_validator("ca_file")
    @classmethod
    def _readable_ca_file(cls, path: str | None) -> str | None:
        if path is not None:
            try:
                ssl.create_default_context(cafile=path)
            except (OSError, ssl.SSLError) as error:
                raise ValueError(f"cannot load CA certificates from {path!r}: {error}") from None
        return path

    @field_validator("url")
    @classmethod
    def _plain_base_url(cls, url: str) -> str:
        if not re.match(r"^https?://[^/?#\s]+/?$", url):
            raise ValueError("must be http(s)://host[:port] with no path, query or fragment")
        try:
            parsed = URL(url)
        except ValueError as error:  # e.g. a port out of range
            raise ValueError(f"not a valid URL: {error}; use a port between 1 and 65535") from None
        if parsed.user is not None or parsed.password is not None:
            # It would be printed in logs and /status, and sent as Basic auth to the exchange.
            raise ValueError("must not carry credentials (user:password@)")
        try:
            port = parsed.port
        except ValueError:
            port = None
        if not parsed.host or port is None or not 0 < port <= 65535:
            raise ValueError("must name a host and a port between 1 and 65535")
        return url.rstrip("/")


class ServerConfig(_Model):
    max_body_bytes: int = Field(default=1024 * 1024, ge=1)
    read_timeout: PositiveSeconds = Field(
        default=10.0, description="a client must send its headers and body within this time"
    )
    keepalive_timeout: PositiveSeconds = 75.0
    shutdown_timeout: Seconds = 15.0


class LoggingConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    request_level: Literal["debug", "info", "warning", "off"] = "debug"

    @field_validator("level", "request_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        if value is False:  # YAML 1.1 reads a bare `off` as false
            return "off"
        return value.lower() if isinstance(value, str) else value


class IdentityConfig(_Model):
    """Where a request names its API key, account and symbol, and which headers are secret."""

    key_headers: tuple[str, ...] = ()
    account_headers: tuple[str, ...] = ()
    key_accounts: dict[str, str] = Field(
        default_factory=dict, description="API key -> account, for exchanges whose limits are per account"
    )
    aliases: dict[str, str] = Field(
        default_factory=dict, description="API key or account -> a name safe for logs and metrics"
    )
    symbol_fields: tuple[str, ...] = ("symbol",)
    client_order_id_fields: tuple[str, ...] = ("client_order_id",)
    secret_headers: tuple[str, ...] = Field(
        default=(), description="never logged (signatures, keys); matched case-insensitively"
    )


class RouteConfig(_Model):
    name: str = Field(pattern=r"^[a-z][a-z0-9_.-]*$")
    method: str = Field(default="*", description="HTTP method or * for any")
    path: str = Field(description="/literal/segments, {param} for one segment, trailing /* for the rest")
    units_field: str | None = Field(
        default=None, description="a JSON body array whose length is the request's number of units"
    )

    @field_validator("method")
    @classmethod
    def _upper(cls, method: str) -> str:
        return method.upper()

    @field_validator("path")
    @classmethod
    def _absolute(cls, path: str) -> str:
        if not path.startswith("/"):
            raise ValueError("must start with /")
        params = re.findall(r"\{([^}]*)\}", path)
        for name in params:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"{{{name}}}: a path parameter must be an identifier")
        if len(set(params)) != len(params):
            raise ValueError("a path parameter name may appear only once")
        return path


class RateLimitRule(_Model):
    name: str
    routes: tuple[str, ...] = Field(min_length=1, description="route names, or * for every route")
    limit: int = Field(ge=1)
    window: PositiveSeconds = 1.0
    scope: tuple[Literal["key", "account", "symbol", "client", "global"], ...] = ("key",)
    cost: Literal["units", "request"] = "units"
    on_limit: Literal["queue", "reject"] = "queue"
    max_wait: Seconds = 1.0
    priority: dict[str, int] = Field(
        default_factory=dict, description="route -> priority in this rule's queue (higher goes first)"
    )


class RateLimitConfig(_Model):
    enabled: bool = True
    # Each admitted request holds its slot from send until one window after its answer (PITFALLS.md:
    # the exchange stamps it somewhere in between); the margin covers scheduler and network jitter.
    margin: Seconds = 0.01
    idle_scope_ttl: PositiveSeconds = 300.0
    rules: tuple[RateLimitRule, ...] = ()


class BreakerRule(_Model):
    name: str
    routes: tuple[str, ...] = Field(min_length=1)
    per_account: bool = False
    trip_codes: tuple[int, ...] = (-1011, -1012)
    trip_on_transport: bool = True
    failure_threshold: int = Field(default=5, ge=1)
    reset_timeout: PositiveSeconds = 5.0


class BreakerConfig(_Model):
    enabled: bool = True
    rules: tuple[BreakerRule, ...] = ()


class DedupRule(_Model):
    routes: tuple[str, ...] = Field(min_length=1)
    identity: Literal["client_order_id", "body_hash"] = "client_order_id"
    ttl: PositiveSeconds | None = Field(default=None, description="overrides dedup.ttl for these routes")


class DedupConfig(_Model):
    enabled: bool = True
    ttl: PositiveSeconds = 120.0
    max_entries: int = Field(default=100_000, ge=1)
    lock_ttl: PositiveSeconds = Field(
        default=6.0, description="with state: redis, a claim whose replica died expires after this"
    )
    idempotency_header: str = "Idempotency-Key"
    rules: tuple[DedupRule, ...] = ()


class RedisConfig(_Model):
    url: str = Field(default="redis://127.0.0.1:6379/0", description="redis://, rediss:// or unix://")
    key_prefix: str = "seawall:"
    timeout: PositiveSeconds = 0.25
    retry_interval: PositiveSeconds = 1.0
    on_unavailable: Literal["local_share", "fail_closed"] = "local_share"
    replicas: int = Field(default=1, ge=1, description="replicas sharing the budget (local share = 1/N)")

    @field_validator("url")
    @classmethod
    def _redis_scheme(cls, url: str) -> str:
        if URL(url).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return url


class StateConfig(_Model):
    backend: Literal["memory", "redis"] = "memory"
    redis: RedisConfig = RedisConfig()


class SeawallConfig(_Model):
    profile: Literal["orderly", "woox"] = "orderly"
    upstream: UpstreamConfig
    listen: Listen = HostPort(host="127.0.0.1", port=8080)
    admin_listen: Listen = HostPort(host="127.0.0.1", port=9090)
    server: ServerConfig = ServerConfig()
    logging: LoggingConfig = LoggingConfig()
    identity: IdentityConfig = IdentityConfig()
    routes: tuple[RouteConfig, ...] = ()
    ratelimit: RateLimitConfig = RateLimitConfig()
    breakers: BreakerConfig = BreakerConfig()
    dedup: DedupConfig = DedupConfig()
    state: StateConfig = StateConfig()

    def route_names(self) -> set[str]:
        return {route.name for route in self.routes} | {"default"}

    def model_post_init(self, __context: Any) -> None:
        known = self.route_names()
        referenced = [
            *(("ratelimit.rules", name) for rule in self.ratelimit.rules for name in rule.routes),
            *(("breakers.rules", name) for rule in self.breakers.rules for name in rule.routes),
            *(("dedup.rules", name) for rule in self.dedup.rules for name in rule.routes),
        ]
        for where, name in referenced:
            if name != "*" and name not in known:
                raise ValueError(f"{where}: unknown route {name!r} (known: {', '.join(sorted(known))})")
        # Rules are keyed by name (state, metrics): two with one name would silently merge.
        for where, names in (
            ("ratelimit.rules", [rule.name for rule in self.ratelimit.rules]),
            ("breakers.rules", [rule.name for rule in self.breakers.rules]),
        ):
            repeated = sorted({name for name in names if names.count(name) > 1})
            if repeated:
                raise ValueError(f"{where}: rule names must be unique, repeated: {', '.join(repeated)}")


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


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if env.get("SEAWALL_PROFILE"):
        overrides["profile"] = env["SEAWALL_PROFILE"]
    if env.get("SEAWALL_UPSTREAM"):
        overrides["upstream"] = {"url": env["SEAWALL_UPSTREAM"]}
    if env.get("SEAWALL_LISTEN"):
        overrides["listen"] = env["SEAWALL_LISTEN"]
    if env.get("SEAWALL_ADMIN_LISTEN"):
        overrides["admin_listen"] = env["SEAWALL_ADMIN_LISTEN"]
    if env.get("SEAWALL_REDIS_URL"):
        overrides["state"] = {"backend": "redis", "redis": {"url": env["SEAWALL_REDIS_URL"]}}
    if env.get("SEAWALL_LOG_LEVEL"):
        overrides["logging"] = {"level": env["SEAWALL_LOG_LEVEL"]}
    return overrides


def _describe(error: dict[str, Any], sources: list[tuple[str, dict[tuple[Any, ...], int]]]) -> str:
    loc = tuple(part for part in error["loc"] if part not in ("function-after[_host_port(), HostPort]",))
    key = ".".join(str(part) for part in loc) or "(top level)"
    where = ""
    for source, lines in sources:
        for depth in range(len(loc), 0, -1):
            if loc[:depth] in lines:
                where = f" ({source}, line {lines[loc[:depth]]})"
                break
        if where:
            break
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    return f"{key}: {message}{where}"


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> SeawallConfig:
    """Read the config file (or the shipped default) over its profile, apply env overrides, validate."""
    env = os.environ if env is None else env
    chosen = Path(path or env.get("SEAWALL_CONFIG") or default_config_path())
    user, user_lines = _read_yaml(chosen)
    return build_config(user, env, source=str(chosen), lines=user_lines)


def build_config(
    user: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    *,
    source: str = "config",
    lines: dict[tuple[Any, ...], int] | None = None,
) -> SeawallConfig:
    """Validate config data (a file's keys) merged over its profile, with env overrides on top."""
    overrides = _env_overrides(env or {})
    profile = overrides.get("profile", user.get("profile", "orderly"))
    if profile not in PROFILES:
        raise ConfigError(f"profile: must be one of {', '.join(PROFILES)}, got {profile!r}")
    profile_file = profile_path(profile)
    profile_data, profile_lines = _read_yaml(profile_file)
    merged = _merge(_merge(profile_data, user), overrides)
    merged["profile"] = profile
    try:
        return SeawallConfig.model_validate(merged)
    except ValidationError as exc:
        sources = [(source, lines or {}), (str(profile_file), profile_lines)]
        problems = "; ".join(_describe(err, sources) for err in exc.errors())  # type: ignore[arg-type]
        raise ConfigError(f"invalid config: {problems}") from None


def redact_url(url: str) -> str:
    """A URL safe to print: no password, whether in the authority or the query (`?password=`)."""
    try:
        parsed = URL(url)
        if parsed.password is not None:
            parsed = parsed.with_password("***")
        if any(name.lower() == "password" for name in parsed.query):
            parsed = parsed.update_query({name: "***" for name in parsed.query if name.lower() == "password"})
        return str(parsed)
    except (ValueError, TypeError):
        return "<unparsable url>"


def redacted(config: SeawallConfig) -> dict[str, Any]:
    """The effective config as plain data with secrets (keys, Redis passwords) redacted."""
    from proxy.identity import key_fingerprint

    data = config.model_dump(mode="json")
    identity = data["identity"]
    identity["key_accounts"] = {key_fingerprint(k): v for k, v in identity["key_accounts"].items()}
    identity["aliases"] = {key_fingerprint(k): v for k, v in identity["aliases"].items()}
    data["state"]["redis"]["url"] = redact_url(data["state"]["redis"]["url"])
    data["listen"] = str(config.listen)
    data["admin_listen"] = str(config.admin_listen)
    return data


__all__ = [
    "PROFILES",
    "BreakerRule",
    "ConfigError",
    "DedupRule",
    "RateLimitRule",
    "SeawallConfig",
    "build_config",
    "load_config",
    "redact_url",
    "redacted",
    "shipped_config_dir",
]
