"""Deduplication state: which identities are held, by whom, and with what answer.

The policy (`proxy/policies/dedup.py`) decides; this module only keeps entries. Every call of the
`DedupState` interface is one atomic decision, so a shared implementation can replace the memory one
without touching the policy: on Redis (proxy/state/dedup_redis.py), `claim` is one Lua script (write an
in-flight record with a lock TTL, else return the record), `settle` rewrites the record with the entry
TTL (or deletes it) and publishes the settlement to waiting twins, and `wait` listens and polls until the
record leaves the in-flight state. That backend keeps a `MemoryDedupState` as its fallback and as this
replica's copy of what it settled (`peek`, `keep` and `forget` below).

One rule lives here rather than in the policy because it must be decided in the same atomic step as the
claim: a `refused` entry (the exchange refused the request and executed nothing) holds its identity only
against its own payload. A claim with another fingerprint takes the identity over — the refused entry is
replaced by the new claim in flight — so two corrected retries cannot both be sent (`takes_over`).

Identities and fingerprints arrive already hashed: no API key or raw client order id is ever stored.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol

from multidict import CIMultiDict

from proxy.answer import Answer
from proxy.errors import SeawallError

EntryState = Literal["in_flight", "stored", "refused", "unknown"]
# stored: a settled answer (a success, or the exchange's own duplicate -1007); refused: an answer where
# the exchange executed nothing (the bot's mistake); unknown: sent, but the answer was lost.
Kept = Literal["stored", "refused", "unknown"]
ANSWERED: frozenset[str] = frozenset({"stored", "refused"})  # kept entries that hold an answer to replay


def takes_over(state: EntryState, held_fingerprint: str, fingerprint: str) -> bool:
    """Whether a claim with `fingerprint` replaces the entry that holds its identity: only a refusal, and
    only for another payload (an identical twin gets the refusal replayed)."""
    return state == "refused" and held_fingerprint != fingerprint


class StoredAnswer(NamedTuple):
    """An answer frozen for replay: status, headers and body exactly as the exchange sent them.

    Kept as a plain tuple by `MemoryDedupState` (see there: why)."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    reason: str | None
    code: int | None
    name: str | None

    @classmethod
    def of(cls, answer: Answer) -> StoredAnswer:
        return cls(
            answer.status, tuple(answer.headers.items()), answer.body, answer.reason, answer.code, answer.name
        )

    def to_answer(self) -> Answer:
        return Answer(
            self.status, CIMultiDict(self.headers), self.body, self.reason, code=self.code, name=self.name
        )


@dataclass(frozen=True, slots=True)
class Entry:
    """What holds an identity: a request in flight, a stored answer, or an outcome nobody knows."""

    state: EntryState
    fingerprint: str  # hash of the canonical payload of the request that claimed the identity
    answer: StoredAnswer | None = None  # set when state is "stored" or "refused"
    expires_in: float | None = None  # seconds a kept entry has left (None: in flight, or not known)


class Unvouched(Exception):
    """A claim asked to be vouched for (`vouched_only`) could not be: the shared state cannot decide now
    (unreachable, or being rebuilt after it lost data) and this replica holds nothing for the identity, so
    another replica may already have sent it. Nothing was claimed; the caller answers a transient error."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("shared dedup state cannot vouch for this identity now")
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Settlement:
    """How an in-flight request ended, as the twins waiting for it receive it: an answer or a local error.

    A shared implementation serializes `error` as its class name, detail, code and retry_after.
    """

    answer: StoredAnswer | None = None
    error: SeawallError | None = None


class DedupState(Protocol):
    """Where dedup entries live; every call is one atomic decision (see the module docstring)."""

    backend: str  # "memory" or "redis", for /status

    async def claim(self, identity: str, fingerprint: str, *, vouched_only: bool = False) -> Entry | None:
        """Take `identity` for this request, or return the live entry that holds it.

        None means the caller now owns the identity and must `settle` it exactly once. A `refused` entry
        with another fingerprint does not hold the identity: it is replaced by this claim (`takes_over`).
        `vouched_only`: where a shared state cannot decide now and could only claim on this replica's own
        memory, raise `Unvouched` instead, unless this replica holds the identity or is the only one.
        """
        ...

    async def wait(self, identity: str, fingerprint: str) -> Settlement | None:
        """Wait until the in-flight owner of `identity` with payload `fingerprint` settles and return its
        settlement.

        Cancelling the waiter never affects the owner or other waiters. None means the identity is no
        longer held by a request in flight with this payload and holds no answer for it (it was dropped,
        held as unknown, or taken over by another payload): the caller should claim again.
        """
        ...

    async def settle(self, identity: str, settlement: Settlement, keep: Kept | None, ttl: float) -> None:
        """End the owner's claim: keep the entry for `ttl` seconds as `stored`, `refused` or `unknown`, or
        drop it (keep=None, a transient failure), and hand `settlement` to every waiting twin."""
        ...

    def counts(self) -> dict[str, int]:
        """Live entries by state (in_flight, stored, refused, unknown) and in total, for `/status`."""
        ...

    def size(self) -> int:
        """Entries held, cheap enough to call on every request (expired ones may still count)."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class _InFlight:
    fingerprint: str
    done: asyncio.Future[Settlement]


class _Kept(NamedTuple):
    state: Kept
    fingerprint: str
    answer: StoredAnswer | None
    expires_at: float


_Raw = tuple[Kept, str, "tuple[Any, ...] | None", float]  # a _Kept, its answer as a plain tuple


def _view(raw: _Raw) -> _Kept:
    state, fingerprint, answer, expires_at = raw
    return _Kept(state, fingerprint, None if answer is None else StoredAnswer(*answer), expires_at)


class MemoryDedupState:
    """Entries in this process: in-flight claims (never evicted) and kept entries, oldest first.

    Memory is bounded by the TTL and `max_entries`: when over the cap, the oldest kept entries go first;
    a claim in flight is never evicted (its twins are waiting on it), so the cap can be exceeded only by
    requests in flight at once, which the server's concurrency bounds. Kept entries are ordered by the
    time they settled; one with a shorter TTL behind a longer one is dropped when seen (lookups check
    expiry) or when its turn at the front comes.
    """

    backend = "memory"

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_entries = max_entries
        self._clock = clock
        self._in_flight: dict[str, _InFlight] = {}
        # Kept entries as plain tuples of plain values (`_raw`): CPython's collector stops tracking such
        # tuples (exact tuples only, not NamedTuples or dataclasses), so a full collection does not walk
        # them. Measured with 92,000 answers kept: a full collection took 73 ms with dataclasses, a p99 of
        # 110-137 ms for every request at 50 connections; see tests/test_dedup.py.
        self._kept: OrderedDict[str, _Raw] = OrderedDict()

    async def claim(self, identity: str, fingerprint: str, *, vouched_only: bool = False) -> Entry | None:
        now = self._clock()
        self._expire(now)
        flight = self._in_flight.get(identity)
        if flight is not None:
            return Entry("in_flight", flight.fingerprint)
        kept = self._live(identity, now)
        if kept is not None:
            if not takes_over(kept.state, kept.fingerprint, fingerprint):
                return Entry(kept.state, kept.fingerprint, kept.answer, kept.expires_at - now)
            del self._kept[identity]  # a refusal of another payload: this request takes the identity over
        self._in_flight[identity] = _InFlight(fingerprint, asyncio.get_running_loop().create_future())
        self._enforce_cap()
        return None

    def peek(self, identity: str) -> Entry | None:
        """The live entry holding `identity`, without claiming it."""
        flight = self._in_flight.get(identity)
        if flight is not None:
            return Entry("in_flight", flight.fingerprint)
        now = self._clock()
        kept = self._live(identity, now)
        if kept is None:
            return None
        return Entry(kept.state, kept.fingerprint, kept.answer, kept.expires_at - now)

    def held(self) -> list[tuple[str, Entry]]:
        """Every live entry, in flight or kept (with the seconds it has left): what a shared state writes
        back when it lost its own."""
        now = self._clock()
        self._expire(now)
        entries = [
            (identity, Entry("in_flight", flight.fingerprint)) for identity, flight in self._in_flight.items()
        ]
        entries += [
            (identity, Entry(kept.state, kept.fingerprint, kept.answer, kept.expires_at - now))
            for identity, kept in ((identity, _view(raw)) for identity, raw in self._kept.items())
            if kept.expires_at > now
        ]
        return entries

    def forget(self, identity: str) -> None:
        """Drop the kept entry of `identity` (a claim in flight stays)."""
        self._kept.pop(identity, None)

    def keep(
        self, identity: str, fingerprint: str, state: Kept, answer: StoredAnswer | None, ttl: float
    ) -> None:
        """Hold `identity` as `state` for `ttl` seconds (a settled claim, or a copy of one)."""
        plain = None if answer is None else tuple(answer)
        self._kept[identity] = (state, fingerprint, plain, self._clock() + ttl)
        self._kept.move_to_end(identity)
        self._enforce_cap()

    async def wait(self, identity: str, fingerprint: str) -> Settlement | None:
        flight = self._in_flight.get(identity)
        if flight is None:
            kept = self._live(identity, self._clock())
            if kept is None or kept.state not in ANSWERED or kept.fingerprint != fingerprint:
                return None
            return Settlement(answer=kept.answer)
        if flight.fingerprint != fingerprint:
            return None  # another payload took the identity over: not the answer this twin waits for
        # Shielded: a cancelled waiter (its bot hung up) must not cancel the future every twin awaits.
        return await asyncio.shield(flight.done)

    async def settle(self, identity: str, settlement: Settlement, keep: Kept | None, ttl: float) -> None:
        flight = self._in_flight.pop(identity, None)
        if flight is None:
            return
        if keep is not None:
            answer = settlement.answer if keep in ANSWERED else None
            self.keep(identity, flight.fingerprint, keep, answer, ttl)
        if not flight.done.done():
            flight.done.set_result(settlement)

    def counts(self) -> dict[str, int]:
        now = self._clock()
        self._expire(now)
        kept: dict[str, int] = {"stored": 0, "refused": 0, "unknown": 0}
        for state, _, _, expires_at in self._kept.values():
            if expires_at > now:
                kept[state] += 1
        in_flight = len(self._in_flight)
        return {"entries": in_flight + sum(kept.values()), "in_flight": in_flight, **kept}

    def size(self) -> int:
        return len(self._in_flight) + len(self._kept)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        shutting_down = Settlement(error=SeawallError("seawall is shutting down"))
        for flight in self._in_flight.values():
            if not flight.done.done():
                flight.done.set_result(shutting_down)
        self._in_flight.clear()
        self._kept.clear()

    def _live(self, identity: str, now: float) -> _Kept | None:
        raw = self._kept.get(identity)
        if raw is None:
            return None
        if raw[3] <= now:
            del self._kept[identity]
            return None
        return _view(raw)

    def _expire(self, now: float) -> None:
        while self._kept:
            identity, oldest = next(iter(self._kept.items()))
            if oldest[3] > now:
                return
            del self._kept[identity]

    def _enforce_cap(self) -> None:
        while self._kept and len(self._in_flight) + len(self._kept) > self._max_entries:
            self._kept.popitem(last=False)
