"""Sends the releases of answered requests to the shared rate-limit state: in the background, in batches.

A release is not a decision: it only starts the hold-after-answer countdown of slots Redis already counts
in flight. Guarantees:
- the answer never waits for it: `add` queues it, and one background sender per replica sends what is
  queued, up to `BATCH` releases per call (one script call blocks Redis while it runs), so a busy replica
  sends few calls;
- each slot is held until its answer + hold (less the release's credit), whenever the call is made: the
  call carries what is left;
- a release that cannot be sent is kept, in order, and sent when Redis answers again (`resume`). Kept
  ones are reported to `on_kept` (the local share counts their holds meanwhile). At most `MAX_KEPT` are
  kept: beyond, the oldest is dropped, and Redis, which still counts its slots in flight, frees them after
  the in-flight expiry by itself — late, on the safe side.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.commands.core import AsyncScript

from proxy.logs import log
from proxy.state.ratelimit import Claim
from proxy.state.redis_link import RedisLink, StateUnavailableError

MAX_KEPT = 10_000  # releases kept while Redis is away
BATCH = 256  # releases per call


@dataclass(frozen=True, slots=True)
class Release:
    """An answered request admitted by Redis: its slots (named by `ticket`), answered at `answered`."""

    claims: Sequence[Claim]
    ticket: str
    answered: float  # on the caller's clock
    credit: float = 0.0  # seconds the hold after the answer is shortened by (the measured network)


class ReleaseSender:
    """The queue of releases for Redis and the one task that sends it (module docstring)."""

    def __init__(
        self,
        link: RedisLink,
        script: AsyncScript,
        keys_of: Callable[[str, str], tuple[str, str, str]],
        on_kept: Callable[[Sequence[Release]], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        server_clock: bool = True,
        on_sent: Callable[[Sequence[Release]], None] | None = None,
    ) -> None:
        """`script`: the RELEASE script; `keys_of(rule, scope)`: the scope's in-flight, held and cool-down
        keys; `server_clock=False` (tests): stamp with the releases' own times instead of Redis' TIME."""
        self._link = link
        self._script = script
        self._keys_of = keys_of
        self._on_kept = on_kept
        self._clock = clock
        self._server_clock = server_clock
        self.on_sent = on_sent  # told of each batch once Redis has it
        self._queue: deque[Release] = deque()
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        return len(self._queue)

    def add(self, release: Release) -> None:
        if len(self._queue) >= MAX_KEPT:
            self._queue.popleft()
            log.error("too many rate-limit releases kept for redis: dropped the oldest")
        self._queue.append(release)
        if not self._link.up:
            self._on_kept([release])
        self.resume()

    def resume(self) -> None:
        """Start sending what is queued, unless Redis is away or a sender already runs."""
        if self._queue and self._link.up and (self._task is None or self._task.done()):
            self._task = asyncio.ensure_future(self._send())

    async def _send(self) -> None:
        while self._queue and self._link.up:
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), BATCH))]
            reference = self._clock() if self._server_clock else max(r.answered for r in batch)
            keys: list[str] = []
            args: list[Any] = ["" if self._server_clock else repr(reference)]
            for release in batch:
                for claim in release.claims:
                    keys += self._keys_of(claim.rule, claim.scope)[:2]
                    held_until = release.answered + max(0.0, claim.hold - release.credit)
                    args += [release.ticket, claim.cost, max(0.0, held_until - reference)]
            try:
                await self._link.call(functools.partial(self._script, keys, args))
            except StateUnavailableError:
                self._queue.extendleft(reversed(batch))  # kept, in order, for Redis' return
                self._on_kept(batch)
                return
            if self.on_sent is not None:
                self.on_sent(batch)

    async def settled(self) -> None:
        """Wait for the sender under way (each call is bounded by the link's timeout)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def close(self) -> None:
        await self.settled()
        if self._queue:
            log.warning(
                "rate-limit releases never reached redis: their slots expire there by themselves",
                extra={"fields": {"kept": len(self._queue)}},
            )
