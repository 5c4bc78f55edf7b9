"""The rate at which Seawall opens upstream WebSocket connections.

Guarantee: at most `limit` handshakes start in any `window` seconds, in the order they asked. A fleet
that reconnects at once (after an exchange blip, a deploy) is spread out instead of earning handshake
refusals — which the exchanges answer with a cool-down, and repeated, with an IP ban. A caller whose turn
is further away than its `max_wait` is told at once and reserves nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable


class ConnectThrottled(Exception):
    """This handshake's turn is too far away: nothing was sent."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"next upstream handshake slot in {wait:.2f}s")
        self.wait = wait


class ConnectAdmission:
    """A sliding-window log of handshake start times, reserved first come first served."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._starts: deque[float] = deque()  # ascending: admitted or reserved start times

    def reserve(self, max_wait: float | None = None) -> float:
        """Reserve the next start time and return how long to wait for it; ConnectThrottled (nothing
        reserved) if that is over `max_wait`."""
        now = self._clock()
        starts = self._starts
        while starts and starts[0] <= now - self.window:
            starts.popleft()
        at = now
        if starts:
            at = max(at, starts[-1])  # never ahead of an earlier caller
        if len(starts) >= self.limit:
            at = max(at, starts[-self.limit] + self.window)
        wait = at - now
        if max_wait is not None and wait > max_wait:
            raise ConnectThrottled(wait)
        starts.append(at)
        return wait

    async def admit(self, max_wait: float | None = None) -> None:
        """Wait for this handshake's turn (a cancelled waiter keeps its slot: conservative)."""
        wait = self.reserve(max_wait)
        if wait > 0:
            await asyncio.sleep(wait)

    @property
    def reserved(self) -> int:
        """Handshakes started or reserved within the last window (for /status)."""
        now = self._clock()
        return sum(1 for start in self._starts if start > now - self.window)
