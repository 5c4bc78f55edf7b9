"""One link to the shared-state Redis for every policy, and whether it is usable right now.

Policies that share state (limits, dedup, breakers) take this link. Each Redis call they make goes
through `call`, which bounds it by `state.redis.timeout`. Only a failure that says Redis cannot be used —
a connection error, a timeout, a server still loading or read-only (a replica after a failover) — marks
the link down: policies then serve from their local state (or fail closed, per
`state.redis.on_unavailable`) and a background probe (PING every `retry_interval`) marks it up again when
Redis returns. `/readyz`, the `seawall_state_backend_up` gauge and a log line on every change say which it is.

Any other error is about that one call, not the link (a script error, `OOM command not allowed` under
maxmemory): it is logged (at most once per kind every few seconds), counted, and raised as
`StateCallFailed`, which callers handle like an outage for that one decision (their fail mode), while the
link stays up for everyone else. A script Redis forgot (`NOSCRIPT`, after a restart or SCRIPT FLUSH) is
loaded again by redis-py's `Script` and retried once, transparently.

redis-py 8 would otherwise retry for ~4.8 s against a dead server and raise at once past its pool size
(measured; docs/design.md): retries are off here, timeouts explicit, and the pool blocks briefly instead
of raising.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as redis
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import BusyLoadingError, ReadOnlyError, RedisError, ResponseError

from proxy.config import RedisConfig
from proxy.config_loader import redact_url
from proxy.logs import log
from proxy.metrics import Metrics

T = TypeVar("T")


class StateUnavailableError(Exception):
    """Redis did not answer (in time); the caller falls back to local state or fails closed."""


class StateCallFailed(StateUnavailableError):
    """Redis answered this one call with an error (a script error, OOM): the caller decides this request
    per its fail mode, as in an outage, but the link stays up."""


# Replies that mean this server cannot serve state now, whatever the command: treated as the link down.
_LINK_DOWN_REPLIES = (BusyLoadingError, ReadOnlyError)
_ERROR_LOG_INTERVAL = 5.0  # seconds between two log lines for one kind of call error


class RedisLink:
    def __init__(self, config: RedisConfig, metrics: Metrics) -> None:
        self.config = config
        self.prefix = config.key_prefix
        self._metrics = metrics
        pool = BlockingConnectionPool.from_url(
            config.url,
            max_connections=64,
            timeout=config.timeout,  # wait this long for a free connection, then fail
            socket_timeout=config.timeout,
            socket_connect_timeout=config.timeout,
            retry_on_timeout=False,
            retry=Retry(NoBackoff(), 0),  # no hidden retries: the link decides what a failure means
            protocol=2,
        )
        self.client: redis.Redis = redis.Redis(connection_pool=pool)
        self._up: bool | None = None  # unknown until the first ping, whose result is always logged
        self._probe: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[bool], None]] = []
        self._error_logged: dict[str, float] = {}  # kind of call error -> when it was last logged
        self.call_errors = 0  # calls Redis answered with an error (shown in /status)
        metrics.state_backend_up.set(0)

    @property
    def up(self) -> bool:
        return bool(self._up)

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def on_change(self, listener: Callable[[bool], None]) -> None:
        """Call `listener(up)` whenever the link goes down or comes back (e.g. to resync local state)."""
        self._listeners.append(listener)

    async def start(self) -> None:
        """Try Redis once (startup must not hang on it), then keep probing in the background."""
        await self._ping()
        self._probe = asyncio.ensure_future(self._probe_loop())

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        await self.client.aclose()

    def ready(self) -> tuple[bool, str, str]:
        """Ready while Redis answers; without it, still ready when serving on local state (degraded)."""
        if self._up:
            return True, "shared_state", "ok"
        if self.config.on_unavailable == "local_share":
            return True, "shared_state", "degraded: redis unreachable, serving on local state"
        return False, "shared_state", "failing: redis unreachable, failing closed"

    async def call(self, operation: Callable[[redis.Redis], Awaitable[T]]) -> T:
        """Run one Redis operation, bounded in time; any failure marks the link down and raises
        StateUnavailableError (never a raw Redis error, whose text could carry the URL)."""
        if not self._up:
            raise StateUnavailableError("shared state is down")
        try:
            async with asyncio.timeout(self.config.timeout * 2):
                return await operation(self.client)
        except ResponseError as error:
            if isinstance(error, _LINK_DOWN_REPLIES):
                self._set(False, type(error).__name__)
                raise StateUnavailableError("shared state cannot serve now") from None
            self._call_failed(error)
            raise StateCallFailed("shared state refused the call") from None
        except (RedisError, OSError, TimeoutError) as error:
            self._set(False, type(error).__name__)
            raise StateUnavailableError("shared state did not answer") from None

    def _call_failed(self, error: ResponseError) -> None:
        self.call_errors += 1
        # The first word of a Redis error reply is its kind (WRONGTYPE, ERR, ...; redis-py turns some into
        # classes, e.g. OutOfMemoryError for OOM). Only the kind is logged: the rest may quote anything.
        if type(error) is ResponseError:
            kind = (str(error).split(" ", 1)[0] or "ResponseError")[:32]
        else:
            kind = type(error).__name__
        now = time.monotonic()
        if now - self._error_logged.get(kind, -_ERROR_LOG_INTERVAL) >= _ERROR_LOG_INTERVAL:
            self._error_logged[kind] = now
            log.warning(
                "shared state (redis) refused a call: deciding it per the fail mode, link stays up",
                extra={
                    "fields": {
                        "redis": redact_url(self.config.url),
                        "error": kind,
                        "errors_so_far": self.call_errors,
                    }
                },
            )

    async def _ping(self) -> None:
        try:
            async with asyncio.timeout(self.config.timeout * 2):
                await self.client.ping()
        except (RedisError, OSError, TimeoutError) as error:
            self._set(False, type(error).__name__)
        else:
            self._set(True, None)

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.retry_interval)
            await self._ping()

    def _set(self, up: bool, reason: str | None) -> None:
        if up == self._up:
            return
        self._up = up
        self._metrics.state_backend_up.set(1 if up else 0)
        fields: dict[str, Any] = {"redis": redact_url(self.config.url), "up": up}
        if reason:
            fields["reason"] = reason
        if up:
            log.info("shared state (redis) is up", extra={"fields": fields})
        else:
            log.warning("shared state (redis) is down: serving on local state", extra={"fields": fields})
        for listener in self._listeners:
            listener(up)
