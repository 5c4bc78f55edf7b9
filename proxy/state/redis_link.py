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

Shared decisions — the policies' scripts — do not go one by one: `run` queues them for this loop turn's
batch (`redis_batch.py`: one pipelined write for every decision of the turn, releases riding along),
each bounded by `state.redis.decision_budget` when it decides a request: past it, the caller decides
locally (`OverBudget`, per the fail mode), counted in `seawall_state_over_budget_total`.

redis-py 8 would otherwise retry for ~4.8 s against a dead server and raise at once past its pool size
(measured; docs/design.md): retries are off here, timeouts explicit, and at most `CALLS_IN_FLIGHT` calls
run at once (more wait their turn within their timeout), fewer than any pool holds.

The client depends on `state.redis.mode` (`redis_clients.py`: one server, a Redis Cluster, or Sentinel).
On a Cluster the probe pings every master, so the link comes back only once every slot is served again
(after a failover, once the replica took over). Each probe also beats for this replica in Redis
(`redis_fleet.py`): how many replicas share the budget, and whether Redis forgot what they shared.
`healthy` is `up` and not rebuilding after such a loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
)

from proxy.config import RedisConfig
from proxy.config_loader import redact_url
from proxy.logs import log
from proxy.metrics import Metrics
from proxy.state.redis_batch import Batcher, OverBudget, ScriptCall, SharedScript
from proxy.state.redis_clients import BATCHES_IN_FLIGHT, CALLS_IN_FLIGHT, Client, open_client
from proxy.state.redis_errors import StateCallFailed, StateUnavailableError
from proxy.state.redis_fleet import Fleet

__all__ = ["OverBudget", "RedisLink", "SharedScript", "StateCallFailed", "StateUnavailableError"]

T = TypeVar("T")


# Replies that mean this server cannot serve state now, whatever the command: treated as the link down.
_LINK_DOWN_REPLIES = (BusyLoadingError, ReadOnlyError, ClusterDownError)
# Failures that say Redis cannot be used (a Cluster whose slots are not all served raises the last one).
_LINK_DOWN_ERRORS = (RedisError, OSError, TimeoutError, RedisClusterException)
_ERROR_LOG_INTERVAL = 5.0  # seconds between two log lines for one kind of call error


class RedisLink:
    def __init__(self, config: RedisConfig, metrics: Metrics) -> None:
        self.config = config
        self.prefix = config.key_prefix
        self.clustered = config.mode == "cluster"
        self._metrics = metrics
        self.client: Client
        self.client, self._sentinels = open_client(config)
        self._calls = asyncio.Semaphore(CALLS_IN_FLIGHT)
        self._up: bool | None = None  # unknown until the first ping, whose result is always logged
        self._probe: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[bool], None]] = []
        self._error_logged: dict[str, float] = {}  # kind of call error -> when it was last logged
        self.call_errors = 0  # calls Redis answered with an error (shown in /status)
        self.over_budget = 0  # decisions Redis did not make within the decision budget
        self._batcher = Batcher(
            self.client,
            bound=config.timeout * 2,
            outcome=self._settle_batch,
            on_over_budget=self._over_budget,
            batches_in_flight=BATCHES_IN_FLIGHT,
        )
        metrics.state_backend_up.set(0)
        self.fleet = Fleet(self, metrics)

    @property
    def up(self) -> bool:
        return bool(self._up)

    @property
    def healthy(self) -> bool:
        """Redis answers and holds everything the replicas shared: not rebuilding after it forgot."""
        return bool(self._up) and self.fleet.settled

    @property
    def replicas(self) -> int | None:
        """How many replicas share each budget: `state.redis.replicas` if set, else the replicas that
        announced themselves at the last heartbeat (None: never counted, Redis was never reached)."""
        return self.config.replicas or self.fleet.known

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def on_change(self, listener: Callable[[bool], None]) -> None:
        """Call `listener(up)` whenever the link goes down or comes back (e.g. to resync local state)."""
        self._listeners.append(listener)

    async def start(self) -> None:
        """Try Redis once (startup must not hang on it), then keep probing in the background. When Redis
        answers, wait (briefly, bounded) until the replicas' shared state is settled, so a replica starts
        deciding on Redis rather than refusing what it cannot vouch for."""
        await self._ping()
        self._probe = asyncio.ensure_future(self._probe_loop())
        if self._up:
            await self.fleet.settle(within=2 * self.fleet.ttl + 4 * self.config.timeout)

    async def close(self) -> None:
        if self._probe is not None:
            # Cancelled until it is done: a cancellation that lands as a call's own timeout fires can be
            # turned into that call's error inside redis-py (seen: the probe went on to its next sleep,
            # and close() waited for it forever).
            while not self._probe.done():
                self._probe.cancel()
                await asyncio.wait({self._probe}, timeout=self.config.timeout)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                self._probe.result()
        await self._batcher.close()
        await self.fleet.close()
        await self.client.aclose()
        if self._sentinels is not None:
            await self._sentinels.aclose()

    def ready(self) -> tuple[bool, str, str]:
        """Ready while Redis answers; without it, still ready when serving on local state (degraded)."""
        if self._up and not self.fleet.settled:
            return True, "shared_state", "degraded: redis lost data, replicas are writing back what they hold"
        if self._up:
            return True, "shared_state", "ok"
        if self.config.on_unavailable == "local_share":
            return True, "shared_state", "degraded: redis unreachable, serving on local state"
        return False, "shared_state", "failing: redis unreachable, failing closed"

    def describe(self) -> dict[str, Any]:
        """For /status: the mode, whether Redis answers, and what the replicas' heartbeats say."""
        batches = {"batches": self._batcher.batches, "calls": self._batcher.calls}
        return {
            "mode": self.config.mode,
            "up": self.up,
            "decisions": {**batches, "over_budget": self.over_budget},
            **self.fleet.describe(),
        }

    # --- shared decisions: batched script calls --------------------------------------------------------

    def submit(
        self,
        script: SharedScript,
        keys: Sequence[str],
        args: Sequence[Any],
        *,
        decides: bool = False,
        on_late: Callable[[Any], None] | None = None,
    ) -> asyncio.Future[Any]:
        """Queue one script call for this loop turn's batch. Its future resolves with the reply, or fails
        with StateUnavailableError (down, or `OverBudget` for a call that `decides` a request and took
        longer than the decision budget; its reply then goes to `on_late`) or StateCallFailed."""
        if not self._up:
            future = asyncio.get_running_loop().create_future()
            future.set_exception(StateUnavailableError("shared state is down"))
            return future
        budget = self.config.decision_seconds if decides else None
        return self._batcher.submit(script, keys, args, budget=budget, on_late=on_late)

    async def run(
        self,
        script: SharedScript,
        keys: Sequence[str],
        args: Sequence[Any],
        *,
        decides: bool = False,
        on_late: Callable[[Any], None] | None = None,
    ) -> Any:
        """`submit`, awaited."""
        return await self.submit(script, keys, args, decides=decides, on_late=on_late)

    def before_next_batch(self, provider: Callable[[], None]) -> None:
        """Have `provider` submit what can wait (releases) into the next batch that goes out."""
        self._batcher.before_next_flush(provider)

    def flush_soon(self) -> None:
        """Send what waits for a batch (releases) at the next loop turn."""
        self._batcher.flush_soon()

    def _over_budget(self, call: ScriptCall) -> None:
        self.over_budget += 1
        self._metrics.state_over_budget.labels(call.script.policy).inc()

    def _settle_batch(self, batch: list[ScriptCall], replies: list[Any] | BaseException) -> None:
        """Resolve each caller's future with its reply or what its failure means (as `call` does)."""
        if isinstance(replies, BaseException):
            failure: StateUnavailableError = StateUnavailableError("shared state did not answer")
            if isinstance(replies, _LINK_DOWN_ERRORS):
                self._set(False, "timeout" if isinstance(replies, TimeoutError) else type(replies).__name__)
            elif not isinstance(replies, asyncio.CancelledError):  # not Redis's doing: say so, never hang
                log.error("shared-state batch failed", exc_info=replies)
                failure = StateCallFailed("shared state call failed")
            for call in batch:
                if not call.future.done():
                    call.future.set_exception(failure)
            return
        for call, reply in zip(batch, replies, strict=True):
            refused: StateUnavailableError | None = None
            if isinstance(reply, _LINK_DOWN_REPLIES):
                self._set(False, type(reply).__name__)
                refused = StateUnavailableError("shared state cannot serve now")
            elif isinstance(reply, ResponseError):
                self._call_failed(reply)
                refused = StateCallFailed("shared state refused the call")
            elif isinstance(reply, BaseException):  # a Cluster master's share of the batch failed
                if isinstance(reply, _LINK_DOWN_ERRORS):
                    self._set(False, type(reply).__name__)
                refused = StateUnavailableError("shared state did not answer")
            if call.future.done():  # the caller gave up (over budget, or cancelled): undo what it did
                if refused is None and call.on_late is not None:
                    try:
                        call.on_late(reply)
                    except Exception:
                        log.exception("undoing a late shared decision failed")
            elif refused is not None:
                call.future.set_exception(refused)
            else:
                call.future.set_result(reply)

    async def call(self, operation: Callable[[Any], Awaitable[T]]) -> T:
        """Run one Redis operation, bounded in time; any failure marks the link down and raises
        StateUnavailableError (never a raw Redis error, whose text could carry the URL)."""
        if not self._up:
            raise StateUnavailableError("shared state is down")
        try:
            async with asyncio.timeout(self.config.timeout * 2), self._calls:
                return await operation(self.client)
        except ResponseError as error:
            if isinstance(error, _LINK_DOWN_REPLIES):
                self._set(False, type(error).__name__)
                raise StateUnavailableError("shared state cannot serve now") from None
            self._call_failed(error)
            raise StateCallFailed("shared state refused the call") from None
        except _LINK_DOWN_ERRORS as error:
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
                if isinstance(self.client, RedisCluster):  # every master: each serves its share of slots
                    await self.client.ping(target_nodes=RedisCluster.PRIMARIES)
                else:
                    await self.client.ping()
        except _LINK_DOWN_ERRORS as error:
            self._set(False, type(error).__name__)
        else:
            self._set(True, None)
            await self.fleet.beat()

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
            self.fleet.lost()
        for listener in self._listeners:
            try:
                listener(up)
            except Exception:  # one policy's failure must not keep the others from knowing
                log.exception("shared state listener failed")
