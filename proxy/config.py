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
    enforce: bool = Field(
        default=True,
        description="false: a shadow rule — counts what it would have delayed or refused, delays nothing",
    )


class NetworkConfig(_Model):
    """Releasing slots as early as the measured network allows (docs/design.md, "Why it is safe")."""

    enabled: bool = Field(
        default=True, description="false: every slot is held until its answer plus one window and margin"
    )
    period: PositiveSeconds = Field(
        default=30.0, description="the minimum round trip to the exchange is taken over this recent period"
    )
    min_samples: int = Field(
        default=10, ge=1, description="round trips measured before any slot is released early"
    )
    exchange_time_field: str | None = Field(
        default=None,
        description="the answers' last top-level JSON field carrying the exchange's time in milliseconds "
        "(the profile's; null: not used)",
    )


class LearningConfig(_Model):
    """Lowering a scope's limit when the exchange says -1003 anyway (traffic that bypasses Seawall)."""

    enabled: bool = True
    decrease: float = Field(
        default=0.8, gt=0, lt=1, description="the effective limit is multiplied by this on an upstream -1003"
    )
    min_share: float = Field(
        default=0.5, gt=0, le=1, description="never below this share of the configured limit"
    )
    restore_every: PositiveSeconds = Field(
        default=10.0, description="one slot back per this long without an upstream -1003"
    )
    probe_after: PositiveSeconds = Field(
        default=300.0,
        description="restoring stops one slot below where the exchange refused, until this long without one",
    )
    follow_headers: bool = Field(
        default=True, description="follow the exchange's X-RateLimit-Limit / -Remaining / -Reset headers"
    )


class FairShareConfig(_Model):
    """Bots sharing one scope take turns instead of first come, first served."""

    enabled: bool = True
    header: str = Field(
        default="X-Seawall-Client",
        description="names the bot (stripped before forwarding); without it, the bot's source address",
    )
    weights: dict[str, float] = Field(
        default_factory=dict, description="client name -> weight (default 1): a share proportional to it"
    )

    @field_validator("weights")
    @classmethod
    def _positive(cls, weights: dict[str, float]) -> dict[str, float]:
        for name, weight in weights.items():
            if not weight > 0:
                raise ValueError(f"{name!r}: a weight must be above 0, is {weight:g}")
        return weights


class RateLimitConfig(_Model):
    enabled: bool = True
    # Each admitted request holds its slot from send until one window after its answer, less what the
    # measured network proves (docs/design.md); the margin covers scheduler and clock jitter on top.
    margin: Seconds = 0.005
    idle_scope_ttl: PositiveSeconds = 300.0
    rules: tuple[RateLimitRule, ...] = ()
    network: NetworkConfig = NetworkConfig()
    learning: LearningConfig = LearningConfig()
    fair_share: FairShareConfig = FairShareConfig()


class SigningConfig(_Model):
    """Where a bot's signed request carries its timestamp, and how long the exchange accepts it."""

    timestamp_header: str | None = Field(
        default=None, description="the header with the bot's signing time in milliseconds"
    )
    window: PositiveSeconds | None = Field(
        default=None, description="the exchange refuses a timestamp older than this (Orderly: 300 s)"
    )
    recv_window_header: str | None = Field(
        default=None, description="a header in which a bot may shorten that window for its request (ms)"
    )


class ReloadConfig(_Model):
    watch_interval: Seconds = Field(
        default=2.0, description="how often the config file is checked for a change (0: only on SIGHUP)"
    )


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
    on_unavailable: Literal["refuse", "forward"] | None = Field(
        default=None, description="overrides dedup.on_unavailable for these routes"
    )


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
    on_unavailable: Literal["refuse", "forward"] = Field(
        default="refuse",
        description="with state: redis, while shared state is down or being rebuilt: refuse (a transient "
        "-1003) a non-safe request with an identity this replica cannot vouch for, or forward it",
    )
    rules: tuple[DedupRule, ...] = ()


class CacheRule(_Model):
    routes: tuple[str, ...] = Field(min_length=1, description="route names, or * for every route")
    ttl: Seconds = Field(
        default=0.0,
        description="how long a success is answered from memory; 0: identical GETs in flight are "
        "coalesced, nothing is kept",
    )
    shared: bool = Field(
        default=False,
        description="share answers across credentials: only for a signed route whose answer is the same "
        "for every account (e.g. Orderly's order book)",
    )


class CacheConfig(_Model):
    enabled: bool = True
    max_entries: int = Field(default=1000, ge=1, description="answers kept at most (least recently used go)")
    max_bytes: int = Field(default=32 * 1024 * 1024, ge=1024, description="bytes of answers kept at most")
    max_entry_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1, description="a larger answer is passed on but not kept"
    )
    rules: tuple[CacheRule, ...] = ()

    def model_post_init(self, __context: Any) -> None:
        if self.max_entry_bytes > self.max_bytes:
            entry = f"must not exceed cache.max_bytes ({self.max_bytes}), is {self.max_entry_bytes}"
            total = f"must be at least cache.max_entry_bytes ({self.max_entry_bytes}), is {self.max_bytes}"
            raise CrossFieldError((("cache", "max_entry_bytes"), entry), (("cache", "max_bytes"), total))
        for index, rule in enumerate(self.rules):
            if rule.shared and "*" in rule.routes:
                # Sharing ignores credentials: it must name each route whose answer is the same for all.
                raise CrossFieldError(
                    (("cache", "rules", index, "shared"), "a shared rule must name its routes, not *")
                )


def split_redis_url(url: str) -> tuple[str, str, list[str], str]:
    """(scheme, user info, hosts, the rest from the path on) of a Redis URL that may name several hosts
    (`redis://user:password@h1:26379,h2:26379/0`, the sentinels). The user info is everything before the
    last `@` of the authority, so a password may contain `@`."""
    scheme, _, remainder = url.partition("://")
    end = min((i for i in (remainder.find(c) for c in "/?#") if i >= 0), default=len(remainder))
    user_info, _, hosts = remainder[:end].rpartition("@")
    return scheme, user_info, [host for host in hosts.split(",") if host], remainder[end:]


class RedisConfig(_Model):
    url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="redis://, rediss:// or unix://; cluster: any node; sentinel: the sentinels, h1:p1,h2:p2",
    )
    mode: Literal["standalone", "cluster", "sentinel"] = "standalone"
    sentinel_master: str = Field(default="", description="with mode: sentinel, the master's name")
    key_prefix: str = "seawall:"
    timeout: PositiveSeconds = 0.25
    decision_budget: PositiveSeconds | None = Field(
        default=None,
        description="longest a request waits for a shared decision, then decided per on_unavailable; "
        "unset: 200 ms, or timeout if shorter",
    )
    retry_interval: PositiveSeconds = 1.0
    on_unavailable: Literal["local_share", "fail_closed"] = "local_share"
    on_slow: Literal["refuse", "local_share"] = Field(
        default="refuse",
        description="a rate-limit decision past decision_budget while Redis still answers: refuse it "
        "(transient -1003) or admit it on the local share (may overspend: the others decide in Redis)",
    )
    replicas: int | None = Field(
        default=None,
        ge=1,
        description="replicas sharing the budget (local share = 1/N); unset: counted from heartbeats",
    )

    @property
    def decision_seconds(self) -> float:
        """`decision_budget`, or its default: 200 ms, or `timeout` if shorter."""
        if self.decision_budget is not None:
            return self.decision_budget
        return min(0.2, self.timeout)

    @field_validator("url")
    @classmethod
    def _redis_scheme(cls, url: str) -> str:
        if url.partition("://")[0] not in ("redis", "rediss", "unix"):
            raise ValueError("must start with redis://, rediss:// or unix://")
        hosts = split_redis_url(url)[2]
        if len(hosts) <= 1:
            URL(url).port  # noqa: B018 - parses the authority: a malformed one raises ValueError here
            return url
        for host in hosts:
            name, _, port = host.rpartition(":")
            if not name or not port.isdigit():
                raise ValueError("each of several hosts must be host:port")
        return url

    def model_post_init(self, __context: Any) -> None:
        loc = ("state", "redis")
        scheme, _, hosts, rest = split_redis_url(self.url)
        if self.mode == "sentinel" and not self.sentinel_master:
            named = "the master's name as the sentinels know it"
            raise CrossFieldError(
                ((*loc, "sentinel_master"), f"required with state.redis.mode: sentinel ({named})"),
                ((*loc, "mode"), f"sentinel needs state.redis.sentinel_master ({named})"),
            )
        if self.mode != "standalone" and scheme == "unix":
            message = f"mode {self.mode} needs redis:// or rediss:// host:port addresses, not unix://"
            raise CrossFieldError(((*loc, "url"), message), ((*loc, "mode"), message))
        if self.mode != "sentinel" and len(hosts) > 1:
            message = "names several hosts: only mode sentinel takes a list (of sentinels)"
            raise CrossFieldError(((*loc, "url"), message), ((*loc, "mode"), message))
        if self.decision_budget is not None and self.decision_budget > self.timeout:
            message = "decision_budget must not exceed timeout (a decision would outlive its call)"
            raise CrossFieldError(((*loc, "decision_budget"), message), ((*loc, "timeout"), message))
        if self.mode == "cluster" and rest.partition("?")[0].strip("/") not in ("", "0"):
            message = "a Redis Cluster has database 0 only"
            raise CrossFieldError(((*loc, "url"), message), ((*loc, "mode"), message))


class StateConfig(_Model):
    backend: Literal["memory", "redis"] = "memory"
    redis: RedisConfig = RedisConfig()


class StreamConnectsConfig(_Model):
    """Upstream WebSocket handshakes are admitted at this rate (a sliding window, first come first
    served), so a fleet reconnecting at once never earns a handshake refusal from the exchange."""

    limit: int = Field(default=10, ge=1, description="handshakes admitted per window")
    window: PositiveSeconds = 1.0
    max_wait: Seconds = Field(
        default=5.0,
        description="longest wait of a bot's private handshake for its turn; a longer one is refused "
        "locally (429, -1003) before anything is sent",
    )


class StreamsConfig(_Model):
    """The exchange's WebSocket streams through the proxy listener: private streams one to one, public
    topics fanned out from one upstream subscription each (docs/design.md, "Streams")."""

    enabled: bool = True
    public_url: str | None = Field(
        default=None,
        description="the exchange's public stream host, ws(s)://host[:port]; unset: upstream.url's host",
    )
    private_url: str | None = Field(
        default=None,
        description="the exchange's private stream host, ws(s)://host[:port]; unset: upstream.url's host",
    )
    public_path: str = Field(default="/ws/stream/{id}", description="ends with {id}: the account id")
    private_path: str = Field(default="/v2/ws/private/stream/{id}", description="ends with {id}")
    public_id: str | None = Field(
        default=None,
        description="the {id} of Seawall's own public connections; unset: the id of the bot whose "
        "subscription opened the connection",
    )
    max_private_per_id: int = Field(
        default=80, ge=1, description="open private streams per {id} (the exchange's per-account cap)"
    )
    topics_per_connection: int = Field(default=50, ge=1)
    max_topics: int = Field(default=1000, ge=1, description="public topics held upstream at once")
    snapshot_kinds: tuple[str, ...] = Field(
        default=("orderbook", "ticker"),
        description="topic kinds whose latest push a joining bot gets at once",
    )
    on_upstream_loss: Literal["resubscribe", "close"] = Field(
        default="resubscribe",
        description="a lost public upstream connection: reconnect and re-subscribe while bots stay "
        "connected, or close its bots (1012) so they restart their streams",
    )
    connects: StreamConnectsConfig = StreamConnectsConfig()
    reconnect_min: PositiveSeconds = 0.5
    reconnect_max: PositiveSeconds = 30.0
    handshake_timeout: PositiveSeconds = 10.0
    subscribe_timeout: PositiveSeconds = Field(
        default=10.0, description="a bot's subscribe not answered by the exchange by then is refused"
    )
    idle_timeout: Seconds = Field(
        default=30.0, description="a public upstream connection without topics is closed after this"
    )
    ping_interval: PositiveSeconds = 10.0
    max_missed_pings: int = Field(
        default=10, ge=1, description="a public bot silent for this many ping intervals is closed"
    )
    bot_buffer_bytes: int = Field(
        default=1024 * 1024,
        ge=4096,
        description="frames waiting for one bot; a bot that falls further behind is cut off (1013)",
    )
    max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)

    @field_validator("public_url", "private_url")
    @classmethod
    def _stream_host(cls, url: str | None) -> str | None:
        if url is None:
            return None
        if not re.match(r"^wss?://[^/?#\s@]+/?$", url):
            raise ValueError("must be ws(s)://host[:port] with no path, query, fragment or credentials")
        return url.rstrip("/")

    @field_validator("public_path", "private_path")
    @classmethod
    def _ends_with_id(cls, path: str) -> str:
        if not path.startswith("/") or not path.endswith("/{id}") or path.count("{") != 1:
            raise ValueError("must start with / and end with /{id}, e.g. /ws/stream/{id}")
        return path

    def model_post_init(self, __context: Any) -> None:
        if self.public_path == self.private_path:
            message = "the public and the private stream need different paths"
            raise CrossFieldError(
                (("streams", "private_path"), message), (("streams", "public_path"), message)
            )
        if self.reconnect_min > self.reconnect_max:
            message = f"must not be above streams.reconnect_max ({self.reconnect_max:g}s)"
            raise CrossFieldError((("streams", "reconnect_min"), message))


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
    cache: CacheConfig = CacheConfig()
    state: StateConfig = StateConfig()
    signing: SigningConfig = SigningConfig()
    reload: ReloadConfig = ReloadConfig()
    streams: StreamsConfig = StreamsConfig()

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
                ("cache", [rule.routes for rule in self.cache.rules]),
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
        connect_timeout = self.upstream.connect_timeout
        if connect_timeout + min_send_time >= timeout:
            # A connect the deadline cuts short is not blamed on the exchange: with no room for a whole
            # connect_timeout, an unreachable exchange would never open a breaker.
            raise CrossFieldError(
                (
                    ("upstream", "connect_timeout"),
                    f"must be below upstream.timeout less upstream.min_send_time "
                    f"({timeout - min_send_time:g}s), is {connect_timeout:g}s",
                ),
                (
                    ("upstream", "timeout"),
                    f"must be above upstream.connect_timeout + upstream.min_send_time "
                    f"({connect_timeout + min_send_time:g}s), is {timeout:g}s",
                ),
                (
                    ("upstream", "min_send_time"),
                    f"must be below upstream.timeout less upstream.connect_timeout "
                    f"({timeout - connect_timeout:g}s), is {min_send_time:g}s",
                ),
            )
        window = self.signing.window
        for index, rule in enumerate(self.ratelimit.rules):
            # A request queued that long would reach the exchange with a stale signature: refused there.
            if window is not None and rule.max_wait >= window:
                problem = f"must be below signing.window ({window:g}s: the exchange's signature window)"
                raise CrossFieldError(
                    (("ratelimit", "rules", index, "max_wait"), f"{problem}, is {rule.max_wait:g}s"),
                    (("signing", "window"), f"must be above every rule's max_wait, is {window:g}s"),
                )
        self._check_cluster_slots(known)
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

    def _check_cluster_slots(self, known: set[str]) -> None:
        """On a Redis Cluster one decision's keys must share a slot: they are hash-tagged by the value of
        the rule's first scope dimension, so the rules that cover one route must start with the same one."""
        redis = self.state.redis
        if self.state.backend != "redis" or redis.mode != "cluster" or not self.ratelimit.enabled:
            return
        leading: dict[str, tuple[int, str]] = {}  # route -> (first rule covering it, its first dimension)
        for index, rule in enumerate(self.ratelimit.rules):
            dimension = rule.scope[0] if rule.scope else "global"
            for route in sorted(known) if "*" in rule.routes else rule.routes:
                first = leading.setdefault(route, (index, dimension))
                if first[1] != dimension:
                    other = self.ratelimit.rules[first[0]].name
                    message = (
                        f"on a Redis Cluster (state.redis.mode), rules covering route {route!r} must start "
                        f"their scope with the same dimension: {other!r} starts with {first[1]}, this rule "
                        f"with {dimension} (a per-key rule next to a per-account one: scope [account, key])"
                    )
                    raise CrossFieldError(
                        (("ratelimit", "rules", index, "scope"), message),
                        (("state", "redis", "mode"), message),
                    )


class CrossFieldError(ValueError):
    """A check across several keys. It carries, best first, (key path, message) for each key that could
    be at fault, so the message can name the one the user actually set, with its line."""

    def __init__(self, *candidates: tuple[tuple[Any, ...], str]) -> None:
        super().__init__(candidates[0][1])
        self.candidates = candidates
