"""Sends the releases of answered requests to the shared rate-limit state: with the next batch, in bulk.

A release is not a decision: it only starts the hold-after-answer countdown of slots Redis already counts
in flight. Guarantees:
- the answer never waits for it, and it never costs a round trip of its own while decisions flow: `add`
  queues it, and what is queued is sent with the next batch of shared decisions (`redis_batch.py`) —
  one that goes out anyway, or one scheduled for the next loop turn — up to `BATCH` releases per script
  call (one script call blocks Redis while it runs), so a busy replica sends few calls;
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

from proxy.logs import log
from proxy.state.ratelimit import Claim
from proxy.state.redis_link import RedisLink, SharedScript

MAX_KEPT = 10_000  # releases kept while Redis is away
BATCH = 256  # releases per call


@dataclass(frozen=True, slots=True)
class Release:
    """An answered request admitted by Redis: its slots (named by `ticket`), answered at `answered`."""

    claims: Sequence[Claim]
    ticket: str
    answered: float  # on the caller's clock
    credit: float = 0.0  # seconds the hold after the answer is shortened by (the measured network)
    tickets: tuple[str, ...] | None = None  # per claim, when its slots were leased one by one


class ReleaseSender:
    """The queue of releases for Redis, sent along with the link's batches (module docstring)."""

    def __init__(
        self,
        link: RedisLink,
        script: SharedScript,
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
        self._asked = False  # the link will ask for the queue at its next batch
        self._sending: dict[asyncio.Future[Any], int] = {}  # calls on their way: releases in each

    @property
    def pending(self) -> int:
        """Releases Redis has not confirmed: queued, or on their way."""
        return len(self._queue) + sum(self._sending.values())

    def add(self, release: Release) -> None:
        if len(self._queue) >= MAX_KEPT:
            self._queue.popleft()
            log.error("too many rate-limit releases kept for redis: dropped the oldest")
        self._queue.append(release)
        if not self._link.up:
            self._on_kept([release])
        self.resume()

    def resume(self) -> None:
        """Have what is queued go out with the link's next batch, unless Redis is away."""
        if self._queue and self._link.up and not self._asked:
            self._asked = True
            self._link.before_next_batch(self._submit)

    def _submit(self) -> None:
        self._asked = False
        while self._queue and self._link.up:
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), BATCH))]
            reference = self._clock() if self._server_clock else max(r.answered for r in batch)
            keys: list[str] = []
            args: list[Any] = ["" if self._server_clock else repr(reference)]
            for release in batch:
                for i, claim in enumerate(release.claims):
                    keys += self._keys_of(claim.rule, claim.scope)[:2]
                    held_until = release.answered + max(0.0, claim.hold - release.credit)
                    ticket = release.tickets[i] if release.tickets else release.ticket
                    args += [ticket, claim.cost, max(0.0, held_until - reference)]
            sent = self._link.submit(self._script, keys, args)
            self._sending[sent] = len(batch)
            sent.add_done_callback(functools.partial(self._landed, batch))

    def _landed(self, batch: list[Release], sent: asyncio.Future[Any]) -> None:
        self._sending.pop(sent, None)
        if sent.cancelled() or sent.exception() is not None:
            self._queue.extendleft(reversed(batch))  # kept, in order, for Redis' return
            self._on_kept(batch)
            return
        if self.on_sent is not None:
            self.on_sent(batch)

    async def settled(self) -> None:
        """Wait until what is queued has been sent and answered (each batch is bounded by the link)."""
        if self._asked:
            self._link.flush_soon()
        while self._sending or (self._asked and self._link.up):
            if self._sending:
                await asyncio.gather(*list(self._sending), return_exceptions=True)
            else:
                await asyncio.sleep(0)  # the link's batch is assembled at the next loop turn

    async def close(self) -> None:
        await self.settled()
        if self._queue:
            log.warning(
                "rate-limit releases never reached redis: their slots expire there by themselves",
                extra={"fields": {"kept": len(self._queue)}},
            )
