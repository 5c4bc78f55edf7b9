"""The one typed, validated configuration model: what every key means, its default and its bounds.

The schema only: reading YAML files, merging a file over its shipped profile, environment overrides and
the error messages that name the key and line at fault live in `proxy/config_loader.py`. Unknown keys are
errors; cross-field checks raise `CrossFieldError`, naming every key that could be at fault.
"""

from __future__ import annotations

import difflib
import re
import ssl
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from yarl import URL

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
    if isinstance(value, int) and not isinstance(value, bool):  # `listen: 8080` in YAML: say what's missing
        value = str(value)
    return HostPort.parse(value) if isinstance(value, str) else value


Listen = Annotated[HostPort, BeforeValidator(_host_port)]


class UpstreamConfig(_Model):
    url: str = Field(description="the exchange's base URL, scheme://host[:port], no path")
    timeout: PositiveSeconds = Field(
        default=10.0,
        description="overall deadline of a bot request, from its arrival: queueing, pool wait, connect "
        "and the exchange's answer together",
    )
    pool_timeout: PositiveSeconds = Field(
        default=2.0, description="longest wait for a free upstream connection (Seawall's own congestion)"
    )
    connect_timeout: PositiveSeconds = 3.0
    answer_timeout: PositiveSeconds = Field(
        default=10.0, description="longest wait for the exchange's answer once the request was written"
    )
    min_send_time: Seconds = Field(
        default=0.3,
        description="a request is never written to the exchange with less than this much of its deadline "
        "left: it is answered locally instead, as not sent",
    )
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
    write_timeout: PositiveSeconds = Field(
        default=10.0, description="a client must read its answer within this time, or it is cut off"
    )
    write_buffer_bytes: int = Field(
        default=256 * 1024,
        ge=4096,
        description="bytes of an answer buffered per connection before waiting for the client to read",
    )
    admin_max_connections: int = Field(
        default=32, ge=1, description="open connections the admin listener accepts at once"
    )
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
    # Each admitted request holds its slot from send until one window after its answer (docs/design.md:
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
    unknown_ttl: PositiveSeconds = Field(
        default=20.0,
        description="how long an identity whose answer was lost after sending is held as unknown",
    )
    lookup_hint: str = Field(
        default="",
        description="how a bot looks an order up by its client order id (the profile's endpoint); "
        "quoted in the -1007 answer for an unknown outcome",
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
            ((section, "rules", index, "routes", position), name)
            for section, routes_of_rules in (
                ("ratelimit", [rule.routes for rule in self.ratelimit.rules]),
                ("breakers", [rule.routes for rule in self.breakers.rules]),
                ("dedup", [rule.routes for rule in self.dedup.rules]),
            )
            for index, routes in enumerate(routes_of_rules)
            for position, name in enumerate(routes)
        ]
        for loc, name in referenced:
            if name != "*" and name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise CrossFieldError(
                    (loc, f"unknown route {name!r} ({hint}known: {', '.join(sorted(known))})")
                )
        for index, rule in enumerate(self.ratelimit.rules):
            # A priority for a route the rule does not cover would silently do nothing.
            covered = known if "*" in rule.routes else set(rule.routes)
            for route in rule.priority:
                if route not in covered:
                    raise CrossFieldError(
                        (
                            ("ratelimit", "rules", index, "priority", route),
                            f"{route!r} is not one of this rule's routes ({', '.join(rule.routes)})",
                        )
                    )
        timeout, min_send_time = self.upstream.timeout, self.upstream.min_send_time
        if min_send_time >= timeout:
            below = f"must be below upstream.timeout ({timeout:g}s), is {min_send_time:g}s"
            above = f"must be above upstream.min_send_time ({min_send_time:g}s), is {timeout:g}s"
            raise CrossFieldError((("upstream", "min_send_time"), below), (("upstream", "timeout"), above))
        # Rules are keyed by name (state, metrics): two with one name would silently merge.
        for section, names in (
            ("ratelimit", [rule.name for rule in self.ratelimit.rules]),
            ("breakers", [rule.name for rule in self.breakers.rules]),
        ):
            for index, name in enumerate(names):
                if name in names[:index]:
                    raise CrossFieldError(
                        (
                            (section, "rules", index, "name"),
                            f"rule names must be unique: {name!r} is also rule {names.index(name)}",
                        )
                    )


class CrossFieldError(ValueError):
    """A check across several keys. It carries, best first, (key path, message) for each key that could
    be at fault, so the message can name the one the user actually set, with its line."""

    def __init__(self, *candidates: tuple[tuple[Any, ...], str]) -> None:
        super().__init__(candidates[0][1])
        self.candidates = candidates
