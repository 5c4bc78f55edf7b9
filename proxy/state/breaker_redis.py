"""Circuit-breaker state shared by every replica through Redis (the `BreakerStateStore` interface).

pybreaker drives each scope's state machine locally, on a `MemoryScopeStorage` (its storage interface is
synchronous, so it cannot wait for Redis). What replicas share is a few facts per breaker scope, one Redis
hash `<prefix>breaker:{<rule>:<scope digest>}` (the scope is a SHA-256 of the account or key, never the
key; the braces are a hash tag, so on a Redis Cluster the hash and its probe key share a slot):
`epoch` (openings so far), `state` (`open` or `closed`), `until` (end of the open period, Redis server
milliseconds: replicas never compare their own clocks), `code` (the code that tripped it); and the
half-open probe claim, `<...>:probe`, a key set with NX and a TTL.

- **One replica opens, all answer locally.** An opening here is published right after the answer that
  caused it (`publish`: one script; an opening in force that this replica did not know of is kept).
  Before admitting a request the policy calls `sync`, which reads the shared facts at most every
  `sync_interval` per scope (default 50 ms: a locally cached copy in between, so a busy scope costs ~20
  reads a second per replica instead of one per request; requests arriving while a read is on its way
  wait for it, never longer than `state.redis.decision_budget`: past it, the local state decides) and
  adopts what changed since this replica last looked: a newer opening (with the remaining open time
  computed by Redis) or a closing. pybreaker notices the changed storage and tells
  its listeners (metrics, logs). **Consistency window:** a replica may forward requests for up to
  `sync_interval` plus one round trip after another replica opened (or keep answering circuit-open that
  long after another replica's probe closed it).
- **Exactly one probe across replicas.** In half-open, `claim_probe` is `SET NX PX` on the probe key: one
  replica wins; the others answer circuit-open. The TTL (the upstream timeout plus a margin) frees the slot
  if the prober dies; a probe that ends without news releases it at once; the probe's success publishes a
  closing and its failure a new opening, both of which drop the claim.
- **Failure counts are per replica** (kept simple: counting shared consecutive failures would cost a
  write per answer): the first replica to see `failure_threshold` consecutive failures opens the breaker
  for all of them.

**Redis unreachable or slow:** each breaker acts on its local state (`state.redis.on_unavailable` is for
rate limits only): openings stay on this replica, the probe is claimed locally (one per replica). When the
link is back, `sync` resumes on the next request; an opening made locally during the outage is not pushed
(it ends with its own probe), and shared facts lost by a Redis restart are never taken as a closing.
Shared records expire `RECORD_TTL_MS` (a day) after their last change: per-account scopes do not pile up.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
from datetime import UTC, datetime

from pybreaker import STATE_CLOSED, STATE_OPEN

from proxy.state.breaker import BreakerScopeStorage, MemoryScopeStorage
from proxy.state.redis_link import RedisLink, SharedScript, StateUnavailableError

RECORD_TTL_MS = 24 * 3600 * 1000
Facts = tuple[int, str, float, int | None]  # epoch, state, seconds of the open period left, trip code

_NOW = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local r = redis.call('HMGET', KEYS[1], 'epoch', 'state', 'until', 'code')
local epoch, state, untl = tonumber(r[1]) or 0, r[2] or 'closed', tonumber(r[3]) or 0
"""
# -> {epoch, state, ms left, code}
READ = _NOW + "return {epoch, state, untl - now, r[4] or ''}"
# KEYS record, probe; ARGV open ms, code, record TTL ms, the epoch this replica knew of. An opening in
# force that this replica did not know of is kept; one it knew of is superseded (its probe failed).
OPEN = (
    _NOW
    + """
if state == 'open' and untl > now and epoch > tonumber(ARGV[4]) then
  return {epoch, state, untl - now, r[4] or ''}
end
epoch = epoch + 1
redis.call('HSET', KEYS[1], 'epoch', epoch, 'state', 'open', 'until', now + ARGV[1], 'code', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('DEL', KEYS[2])
return {epoch, 'open', tonumber(ARGV[1]), ARGV[2]}
"""
)
# KEYS record, probe; ARGV the epoch the probe tested, record TTL ms. Closes only that opening.
CLOSE = (
    _NOW
    + """
if state == 'open' and epoch == tonumber(ARGV[1]) then
  state = 'closed'
  redis.call('HSET', KEYS[1], 'state', state)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('DEL', KEYS[2])
end
return {epoch, state, untl - now, r[4] or ''}
"""
)
RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end return 0"


def _facts(reply: list[bytes | int]) -> Facts:
    epoch, state, left_ms, code = reply
    text = code.decode() if isinstance(code, bytes) else str(code)
    state_name = state.decode() if isinstance(state, bytes) else str(state)
    return int(epoch), state_name, int(left_ms) / 1000, int(text) if text else None


class RedisScopeStorage(MemoryScopeStorage):
    """One scope: pybreaker's local storage plus its sync with the shared record (module docstring)."""

    shared = True

    def __init__(self, store: RedisBreakerStore, key: str) -> None:
        super().__init__()
        self._store = store
        self._key = key
        self._probe_key = key + ":probe"
        self._synced_at = -math.inf
        self._syncing: asyncio.Future[None] | None = None
        self._seen: tuple[int, str] = (0, STATE_CLOSED)  # the shared (epoch, state) last applied or written
        self._pending: str | None = None  # "open" or "close", to publish
        self._published = 0  # publications so far: a read that overlapped one is stale
        self._probe_token: str | None = None

    def mark_opened(self, open_until: float, trip_code: int) -> None:
        super().mark_opened(open_until, trip_code)
        self._pending = "open"
        self._probe_token = None  # the opening script drops the shared claim

    def mark_closed(self) -> None:
        self._pending = "close"

    async def claim_probe(self) -> bool:
        if not await super().claim_probe():
            return False  # another request of this replica probes: no round trip
        token = secrets.token_hex(8)
        link, ttl_ms = self._store.link, self._store.probe_ttl_ms
        try:
            won = await link.call(lambda r: r.set(self._probe_key, token, nx=True, px=ttl_ms))
        except StateUnavailableError:
            return True  # local state: this replica probes
        if not won:
            super().release_probe()
            return False
        self._probe_token = token
        return True

    def release_probe(self) -> None:
        super().release_probe()
        token, self._probe_token = self._probe_token, None
        if token is not None:
            self._store.release_later(self._probe_key, token)

    async def sync(self, now: float) -> None:
        if self._syncing is not None:  # one read at a time; requests arriving meanwhile wait for it
            await asyncio.shield(self._syncing)
            return
        if now - self._synced_at < self._store.sync_interval:
            return
        self._synced_at = now
        self._syncing = asyncio.get_running_loop().create_future()
        store, published = self._store, self._published
        try:
            reply = await store.link.run(store.read_script, [self._key], [], decides=True)
            if published == self._published:  # else a publication overlapped: this read may be stale
                self._adopt(_facts(reply), now)
        except StateUnavailableError:
            pass
        finally:
            self._syncing.set_result(None)
            self._syncing = None

    async def publish(self, now: float) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        store = self._store
        self._published += 1
        try:
            if pending == "open":
                left_ms = max(1, int((self.open_until - now) * 1000))
                args = [left_ms, self.trip_code or "", RECORD_TTL_MS, self._seen[0]]
                reply = await store.link.call(
                    lambda r: store.open_script(keys=[self._key, self._probe_key], args=args, client=r)
                )
                self._seen = _facts(reply)[:2]  # ours, or an opening already in force: nothing to adopt
            else:
                args = [self._seen[0], RECORD_TTL_MS]
                reply = await store.link.call(
                    lambda r: store.close_script(keys=[self._key, self._probe_key], args=args, client=r)
                )
                self._adopt(_facts(reply), now)  # a newer opening elsewhere wins over our closing
        except StateUnavailableError:
            return
        self._synced_at = now

    def _adopt(self, facts: Facts, now: float) -> None:
        epoch, state, left, code = facts
        seen_epoch, seen_state = self._seen
        self._seen = (epoch, state)
        if epoch < seen_epoch or (epoch, state) == (seen_epoch, seen_state):
            return  # nothing new (or Redis lost the record: never read that as a closing)
        if state == STATE_OPEN:
            if epoch > seen_epoch:  # opened by another replica
                MemoryScopeStorage.mark_opened(self, now + left, code or self.trip_code or -1011)
                self.opened_at = datetime.now(UTC)
                self.reset_counter()
                self.state = STATE_OPEN
        elif self.state != STATE_CLOSED:  # closed by another replica's probe
            MemoryScopeStorage.release_probe(self)
            self.reset_counter()
            self.state = STATE_CLOSED


class RedisBreakerStore:
    """Hands out `RedisScopeStorage`s on one `RedisLink`; owns the scripts and background releases."""

    def __init__(self, link: RedisLink, *, probe_ttl: float, sync_interval: float = 0.05) -> None:
        self.link = link
        self.probe_ttl_ms = max(1, int(probe_ttl * 1000))
        self.sync_interval = sync_interval
        self.read_script = SharedScript("breaker.read", READ)  # batched with the turn's other decisions
        self.open_script = link.client.register_script(OPEN)
        self.close_script = link.client.register_script(CLOSE)
        self._release = link.client.register_script(RELEASE)
        self._tasks: set[asyncio.Task[None]] = set()

    def scope_storage(self, breaker: str, scope_id: str) -> BreakerScopeStorage:
        return RedisScopeStorage(self, self.link.key("breaker", "{" + breaker + ":" + scope_id + "}"))

    def release_later(self, key: str, token: str) -> None:
        """Drop our probe claim without making the (possibly cancelled) caller wait; its TTL is a backstop."""

        async def release() -> None:
            with contextlib.suppress(StateUnavailableError):
                await self.link.call(lambda r: self._release(keys=[key], args=[token], client=r))

        task = asyncio.get_running_loop().create_task(release())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        tasks = list(self._tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
