"""The micro-cache's entries: answers kept for a short TTL, bounded in count and in bytes.

The policy (`proxy/policies/cache.py`) decides what may be kept and who may read it; this module only
keeps entries. It holds at most `max_entries` answers and `max_bytes` of them (body, headers and key
counted); making room drops the least recently used entries first, expired or not. An expired entry is
never returned: it is dropped when it is next looked up, or when room is made.

It lives in this process only, whatever `state.backend` says: an entry is a few kilobytes kept for
seconds, and a Redis round trip on every hit would cost more than the upstream call it saves a replica
— each replica makes at most one upstream call per key and TTL.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from multidict import CIMultiDict

from proxy.answer import Answer

# What an entry costs beyond its bytes (the entry, its key's slot, the header tuples): a rough constant,
# so that max_bytes bounds memory even for answers with empty bodies.
ENTRY_OVERHEAD = 256


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """An answer frozen to be handed to several callers: status, headers and body as the exchange sent
    them. Each caller gets its own `Answer` (`to_answer`), so no caller's headers leak into another's."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    reason: str | None
    code: int | None
    name: str | None

    @classmethod
    def of(cls, answer: Answer) -> CachedAnswer:
        return cls(
            answer.status, tuple(answer.headers.items()), answer.body, answer.reason, answer.code, answer.name
        )

    def to_answer(self) -> Answer:
        return Answer(
            self.status,
            CIMultiDict(self.headers),
            self.body,
            self.reason,
            source="replay",
            code=self.code,
            name=self.name,
        )

    @property
    def size(self) -> int:
        """Bytes this answer holds (body and headers), without the entry's overhead."""
        return len(self.body) + sum(len(name) + len(value) for name, value in self.headers)


@dataclass(slots=True)
class _Entry:
    answer: CachedAnswer
    route: str
    stored_at: float
    expires_at: float
    size: int


@dataclass(frozen=True, slots=True)
class Hit:
    """A live entry: the answer and how many seconds it has been kept."""

    answer: CachedAnswer
    age: float


class MemoryCache:
    """Answers by key, each kept until its TTL ends or room is needed (least recently used first)."""

    backend = "memory"

    def __init__(self, max_entries: int, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._bytes = 0

    def get(self, key: str) -> Hit | None:
        """The live answer for `key` (and mark it recently used), or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        now = self._clock()
        if now >= entry.expires_at:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return Hit(entry.answer, now - entry.stored_at)

    def put(self, key: str, route: str, answer: CachedAnswer, ttl: float) -> list[str] | None:
        """Keep `answer` for `ttl` seconds, replacing any entry for `key`. Returns the routes of the entries
        dropped to make room, or None when the answer alone is larger than `max_bytes` (not kept)."""
        size = answer.size + len(key) + ENTRY_OVERHEAD
        if size > self._max_bytes:
            return None
        if key in self._entries:
            self._drop(key)
        evicted: list[str] = []
        while self._entries and (
            len(self._entries) >= self._max_entries or self._bytes + size > self._max_bytes
        ):
            _, oldest = self._entries.popitem(last=False)
            self._bytes -= oldest.size
            evicted.append(oldest.route)
        now = self._clock()
        self._entries[key] = _Entry(answer, route, now, now + ttl, size)
        self._bytes += size
        return evicted

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key)
        self._bytes -= entry.size

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0
