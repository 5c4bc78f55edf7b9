"""Circuit-breaker state: where a breaker scope's numbers live, behind a small interface.

pybreaker runs the state machine (closed -> open -> half-open) over a `CircuitBreakerStorage`: state,
consecutive failures, successes, `opened_at`. Seawall keeps four more facts per scope in the same storage,
so one backend holds all of them:
- `open_until`: when the open period ends, on the policy's clock. pybreaker's own `opened_at` is a
  wall-clock datetime (whole seconds in its Redis storage) compared with `datetime.now()` inside `call()`:
  too coarse for sub-second reset timeouts and not injectable in tests.
- `epoch`: bumped on every opening, so the late answer of a request admitted before it is told apart
  (a late failure must not extend the open period, nor a late success close it).
- `trip_code`: the exchange code of the failure that opened it; local answers repeat it.
- the half-open probe claim: pybreaker lets every concurrent call through in half-open (measured: 20 of
  20 concurrent `calling()` blocks), so the claim is a state fact a shared backend must make atomic.

The interface is `BreakerStateStore.scope_storage(breaker, scope_id)` -> `BreakerScopeStorage`. pybreaker
reads and writes its storage synchronously, so a shared backend (proxy/state/breaker_redis.py) keeps a
local storage for pybreaker and exchanges the shared facts at the two points where the policy awaits
anyway: `sync(now)` before admission (pull what other replicas did) and `publish(now)` after an answer
(push an opening or a closing); `claim_probe` is async because across replicas it is an atomic round
trip. (pybreaker's own `CircuitRedisStorage` is synchronous: measured, it blocks the loop ~190 µs per
call and stalled ~4.9 s with Redis down.) In memory these are no-ops that never suspend, so admission
stays atomic.

`MemoryBreakerStore` (here) and `RedisBreakerStore` (`breaker_redis.py`) implement the interface;
`proxy/state/backends.py` picks one. Neither imports the policy, its errors or its metrics.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Protocol

from pybreaker import STATE_CLOSED, CircuitBreakerStorage, CircuitMemoryStorage


class BreakerScopeStorage(CircuitBreakerStorage):
    """pybreaker's storage plus what Seawall needs to drive it from asyncio (see the module docstring)."""

    # False where `sync`/`publish` are no-ops (memory): the policy then skips them on the hot path.
    shared: bool = True

    @property
    @abstractmethod
    def epoch(self) -> int:
        """How many times this scope has opened."""

    @property
    @abstractmethod
    def open_until(self) -> float:
        """The policy-clock time the current open period ends (meaningless when closed)."""

    @property
    @abstractmethod
    def trip_code(self) -> int | None:
        """The exchange code of the failure that last opened the breaker."""

    @abstractmethod
    def mark_opened(self, open_until: float, trip_code: int) -> None:
        """Record an opening: new epoch, end of the open period, its code; any probe claim is void."""

    def mark_closed(self) -> None:
        """Record that this replica's probe succeeded and closed the breaker."""
        return None

    @abstractmethod
    async def claim_probe(self) -> bool:
        """Take the one half-open probe slot; False if another request holds it."""

    @abstractmethod
    def release_probe(self) -> None:
        """Give the probe slot back (the probe settled, was cancelled, or never reached the exchange)."""

    async def sync(self, now: float) -> None:
        """Bring in what other replicas did (a shared backend); `now` is on the policy's clock."""
        return None

    async def publish(self, now: float) -> None:
        """Tell other replicas of an opening or closing recorded here since the last call."""
        return None


class BreakerStateStore(Protocol):
    """Hands out the storage of one breaker scope; the policy bounds how many it keeps alive."""

    def scope_storage(self, breaker: str, scope_id: str) -> BreakerScopeStorage: ...

    async def close(self) -> None: ...


class MemoryScopeStorage(CircuitMemoryStorage, BreakerScopeStorage):
    """One scope's state in process memory."""

    shared = False

    def __init__(self) -> None:
        super().__init__(STATE_CLOSED)
        self._epoch = 0
        self._open_until = 0.0
        self._trip_code: int | None = None
        self._probe_claimed = False

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def open_until(self) -> float:
        return self._open_until

    @property
    def trip_code(self) -> int | None:
        return self._trip_code

    def mark_opened(self, open_until: float, trip_code: int) -> None:
        self._epoch += 1
        self._open_until = open_until
        self._trip_code = trip_code
        self._probe_claimed = False

    async def claim_probe(self) -> bool:
        if self._probe_claimed:
            return False
        self._probe_claimed = True
        return True

    def release_probe(self) -> None:
        self._probe_claimed = False


class MemoryBreakerStore:
    """Process-local state: each scope's storage lives as long as the policy keeps its breaker."""

    def scope_storage(self, breaker: str, scope_id: str) -> BreakerScopeStorage:
        return MemoryScopeStorage()

    async def close(self) -> None:
        return None
