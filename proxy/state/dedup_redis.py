"""Deduplication state shared by every replica through Redis, with the memory state as its fallback.

Implements `DedupState` (proxy/state/dedup.py), so `DedupPolicy` is the same for both backends.

One identity is one Redis hash, `<prefix>dedup:<identity>`; identities are already SHA-256 digests of
(kind, account, id), so no API key, account or client order id appears in a key name or value. Fields:
`s` state (`f` in flight, `s` answer stored, `u` unknown), `r` set when the stored answer is a refusal,
`fp` payload fingerprint, `o` owner token, `w` set when a twin waits, `m` answer metadata (JSON: status,
headers, reason, code, name) and `b` the body, raw bytes. A refusal is a stored answer plus the `r` flag
(not a state of its own) so that a replica of an older version, during a rolling upgrade, reads it as a
plain stored answer: it replays it to identical twins and refuses other payloads, as it always did.

Guarantees, across replicas:
- **Atomic claim.** `claim` is one Lua script: return the record if there is one, else write an in-flight
  record with a lock TTL (`dedup.lock_ttl`). No two replicas forward the same identity while it is held.
  A refusal held against another payload is replaced by the new in-flight record in that same script, so
  of two corrected retries on two replicas exactly one takes the identity over; the other finds it in
  flight with the first one's payload (a conflict, or its twin).
- **A dead owner does not block retries.** The owner refreshes its locks every `lock_ttl / 3` while its
  request runs; if its replica dies, the record expires within `lock_ttl` and the next request claims the
  identity and is forwarded. An in-flight record carries no answer, and a stored answer is written in one
  script with its TTL, so nobody is ever answered from a half-written entry.
- **Twins wait for the first answer.** A twin on the owner's replica awaits the owner's future (no Redis
  traffic). A twin on another replica marks the record (`w`) in its claim; the owner's settle script then
  publishes the settlement (answer byte for byte, or the local error of a transient failure) on
  `<prefix>dedup:settled`, which wakes it. It also re-reads the record every `POLL_INTERVAL` (a missed
  message: pub/sub is fire-and-forget) and gives up after `wait_limit` (the upstream timeout plus the lock
  TTL) with a transient -1011, so it never hangs. A missed message about a transient failure makes the
  twin claim again and send once more — the same as the bot's own retry would. Messages and waiters are
  matched on identity *and* fingerprint: a twin never receives the answer to another payload that took
  the identity over after a refusal. (A replica of an older version publishes without the fingerprint;
  its messages are ignored here and the poll picks the answer up instead, and the other way round.)
- **Conflicts** (same identity, other payload) are seen on every replica: the fingerprint is in the record.
- **Memory** is bounded by Redis TTLs: every record expires (`lock_ttl` in flight, the rule's TTL once
  settled, `dedup.unknown_ttl` when the outcome is unknown). `max_entries` bounds only this replica's
  memory: the local fallback and the local copy of answers it settled. Size Redis `maxmemory` for
  (identities per second x TTL x answer size) and use `maxmemory-policy volatile-lru`: `noeviction`
  turns a full Redis into errors (the link goes down and replicas dedup locally), and `volatile-ttl`
  would evict in-flight claims (shortest TTL) first.

This replica keeps a copy of every entry it settles (`MemoryDedupState.keep`), so its own retries replay
without a round trip and `/status` counts what this replica holds (entries settled elsewhere are not
counted: counting Redis would need a scan). A copy of a refusal answers only its identical twin; a request
with another payload drops the copy and claims on Redis, where the takeover is decided for every replica.

**Redis unreachable, slow, or forgetful** (`RedisLink.call` failed, or the link is down; or Redis lost
data: `redis_fleet.py`). A claim asked to be vouched for (`vouched_only`: the policy's default for a
non-safe request) is answered from this replica's memory when it holds the identity (a claim in flight
here, a copy of an answer settled here), and otherwise refused with `Unvouched` — another replica may have
sent it — unless `state.redis.replicas` is 1. Other claims are taken on local memory, as before. While the
fleet rebuilds after Redis forgot, such a claim only looks in Redis (a record there is used) and is
refused when Redis holds nothing. The claim script itself refuses to create a record on a server whose run
id this replica does not know, or (off a Cluster) whose generation marker changed: a restarted or
promoted master is noticed by the first claim, which also makes the fleet beat at once.

Whatever Redis has not seen — claims taken on local memory, settlements that could not be written (the
in-flight record's owner token is kept and refreshed, so twins elsewhere keep waiting) — is `unsynced`:
the next beat that reaches Redis starts a new generation, and every replica writes back all it holds
(`_write_back`: only where Redis holds nothing, or holds this replica's own unsettled claim). A local claim
written back in flight is settled in Redis like any other when it ends, waking twins on other replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import secrets
from dataclasses import dataclass
from typing import Any

import orjson
from redis.crc import key_slot
from redis.exceptions import RedisError

from proxy import errors
from proxy.state.dedup import (
    ANSWERED,
    Entry,
    Kept,
    MemoryDedupState,
    Settlement,
    StoredAnswer,
    Unvouched,
    takes_over,
)
from proxy.state.redis_batch import merging
from proxy.state.redis_fleet import WriteBack
from proxy.state.redis_link import OverBudget, RedisLink, StateUnavailableError

POLL_INTERVAL = 0.1  # a waiter re-reads the record this often, in case the pub/sub message was missed

# KEYS[1] record, KEYS[2] (not on a Cluster, where it is in another slot) the fleet's generation record;
# ARGV fingerprint, owner token, lock TTL ms, '1' to look only (claim nothing), the run ids of the masters
# this replica knows (comma-separated, '' unknown), the generation it knows. Nil: claimed — also when the
# record is a refusal (`r`) of another payload, which this claim replaces; 0: nothing holds the identity
# (looking only); -1: nothing holds it, but this server is not one this replica knows, or its generation
# record changed — it may have forgotten a claim (restarted, promoted, flushed): nothing claimed. Else the
# record (HGETALL) followed by TTL_FIELD and its remaining TTL in ms.
CLAIM = """
local state = redis.call('HGET', KEYS[1], 's')
local replaced = redis.call('HGET', KEYS[1], 'r') and redis.call('HGET', KEYS[1], 'fp') ~= ARGV[1]
if state and not replaced then
  if state == 'f' then redis.call('HSET', KEYS[1], 'w', '1') end
  local record = redis.call('HGETALL', KEYS[1])
  record[#record + 1] = '~ttl'
  record[#record + 1] = redis.call('PTTL', KEYS[1])
  return record
end
if ARGV[4] == '1' then return 0 end
if ARGV[5] ~= '' then
  local id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
  if not id or not string.find(ARGV[5], id, 1, true) then return -1 end
end
if KEYS[2] and redis.call('HGET', KEYS[2], 'id') ~= ARGV[6] then return -1 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 's', 'f', 'fp', ARGV[1], 'o', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return false
"""
TTL_FIELD = b"~ttl"

# KEYS[1] record; ARGV token, keep ('' drop, 's' stored, 'r' refused, 'u' unknown), TTL ms, fingerprint,
# meta, body, channel, message. Only the owner settles (its lock may have expired and been taken by
# another replica meanwhile).
SETTLE = """
local owner = redis.call('HGET', KEYS[1], 'o')
if owner and owner ~= ARGV[1] then return 0 end
local waited = redis.call('HGET', KEYS[1], 'w')
redis.call('DEL', KEYS[1])
if ARGV[2] ~= '' then
  local state = ARGV[2] == 'r' and 's' or ARGV[2]
  redis.call('HSET', KEYS[1], 's', state, 'fp', ARGV[4], 'o', ARGV[1], 'm', ARGV[5], 'b', ARGV[6])
  if ARGV[2] == 'r' then redis.call('HSET', KEYS[1], 'r', '1') end
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
if waited then redis.call('PUBLISH', ARGV[7], ARGV[8]) end
return 1
"""

# KEYS records; ARGV[1] lock TTL ms, then one owner token per key: extend the locks still ours.
REFRESH = """
for i, key in ipairs(KEYS) do
  if redis.call('HGET', key, 'o') == ARGV[i + 1] and redis.call('HGET', key, 's') == 'f' then
    redis.call('PEXPIRE', key, ARGV[1])
  end
end
return 0
"""

# KEYS[1] record; ARGV state ('f', 's', 'u'), '1' if a refusal, fingerprint, owner token ('' none), TTL
# ms, meta, body. Writes the record only where Redis holds none, or holds this replica's own claim in
# flight (the same owner token) that it could not settle there: anything else is newer than what a
# replica could put back.
WRITE_BACK = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  if ARGV[4] == '' or redis.call('HGET', KEYS[1], 'o') ~= ARGV[4] then return 0 end
  redis.call('DEL', KEYS[1])
end
redis.call('HSET', KEYS[1], 's', ARGV[1], 'fp', ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'o', ARGV[4]) end
if ARGV[1] ~= 'f' then redis.call('HSET', KEYS[1], 'm', ARGV[6], 'b', ARGV[7]) end
if ARGV[2] == '1' then redis.call('HSET', KEYS[1], 'r', '1') end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""
WRITE_BACK_CONCURRENCY = 16  # write-back calls in flight at once (one key each: any Cluster slot)

STATES: dict[bytes, Kept] = {b"s": "stored", b"u": "unknown"}
KEEP_ARGS: dict[Kept, bytes] = {"stored": b"s", "refused": b"r", "unknown": b"u"}


def encode_settlement(settlement: Settlement) -> tuple[bytes, bytes]:
    """(metadata JSON, body): the answer byte for byte, or the local error by class name."""
    answer, error = settlement.answer, settlement.error
    if answer is not None:
        meta = {
            "st": answer.status,
            "h": answer.headers,
            "r": answer.reason,
            "c": answer.code,
            "n": answer.name,
        }
        return orjson.dumps(meta), answer.body
    error = error or errors.SeawallError("the request ended without answer")
    meta = {"e": type(error).__name__, "d": error.detail, "c": error.code, "ra": error.retry_after}
    return orjson.dumps(meta), b""


def decode_settlement(meta: bytes, body: bytes) -> Settlement:
    data = orjson.loads(meta)
    if "e" in data:
        kind = getattr(errors, data["e"], errors.SeawallError)
        if not (isinstance(kind, type) and issubclass(kind, errors.SeawallError)):
            kind = errors.SeawallError
        return Settlement(error=kind(data["d"], retry_after=data["ra"], code=data["c"]))
    headers = tuple((name, value) for name, value in data["h"])
    return Settlement(answer=StoredAnswer(data["st"], headers, body, data["r"], data["c"], data["n"]))


@dataclass(slots=True)
class _Owned:
    """A Redis claim this replica holds: its twins here wait on `done`."""

    fingerprint: str
    token: str
    done: asyncio.Future[Settlement]


class RedisDedupState:
    """`DedupState` on Redis (see the module docstring), falling back to `local` when Redis fails."""

    backend = "redis"

    def __init__(
        self, link: RedisLink, local: MemoryDedupState, *, lock_ttl: float, wait_limit: float
    ) -> None:
        self._link = link
        self._local = local
        self._lock_ms = max(1, int(lock_ttl * 1000))
        self._lock_ttl = lock_ttl
        self._wait_limit = wait_limit
        self._channel = link.key("dedup", "settled")
        self._claim = merging("dedup.claim", "", CLAIM)  # the claims of a batch: one script call
        self._settle = merging("dedup.settle", "", SETTLE)  # batched; the answer does not wait
        self._settling: dict[str, asyncio.Future[Any]] = {}  # settlements on their way to Redis
        self._refresh = link.client.register_script(REFRESH)
        self._write_back_script = link.client.register_script(WRITE_BACK)
        self._owned: dict[str, _Owned] = {}
        self._replica, self._tokens = secrets.token_hex(4), itertools.count()
        # Identities decided on this replica's memory, or whose end Redis missed, that Redis has not seen
        # yet (written back when it returns); and the owner token of the in-flight record Redis may hold
        # for such a claim (refreshed meanwhile, so twins elsewhere keep waiting rather than claim).
        self._unsynced: set[str] = set()
        self._local_tokens: dict[str, str] = {}
        # Claims that ended with nothing to keep while Redis could not be told: released when it answers
        # again, so twins elsewhere stop waiting on them (else they wait out the lock TTL).
        self._dropped: dict[str, str] = {}
        self._releasing: set[asyncio.Task[None]] = set()
        # Twins waiting on another replica's claim, by (identity, fingerprint).
        self._watched: dict[tuple[str, str], asyncio.Future[Settlement]] = {}
        self._watchers: dict[tuple[str, str], int] = {}
        self._link_up = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.fallbacks = 0  # decisions taken on local state because Redis failed
        self.unvouched = 0  # claims refused: shared state could not decide and this replica cannot vouch
        link.on_change(self._on_link_change)
        link.fleet.on_rebuild(WriteBack(self._write_back, lambda: bool(self._unsynced)))

    def _key(self, identity: str) -> str:
        return self._link.key("dedup", identity)

    # -- DedupState -------------------------------------------------------------------------------------

    async def claim(self, identity: str, fingerprint: str, *, vouched_only: bool = False) -> Entry | None:
        entry = self._local.peek(identity)  # a local fallback claim, or a copy of an entry settled here
        if entry is not None:
            if not takes_over(entry.state, entry.fingerprint, fingerprint):
                return entry
            # A refusal of another payload: the takeover is decided where every replica sees it.
            self._local.forget(identity)
        owned = self._owned.get(identity)
        if owned is not None:
            return Entry("in_flight", owned.fingerprint)
        settling = self._settling.get(identity)
        if settling is not None:  # Redis decides next on what this replica told it last
            await asyncio.gather(asyncio.shield(settling), return_exceptions=True)
        # While Redis is being rebuilt it may not know yet what another replica holds: it may still answer
        # from what it does hold (look only), but a claim it cannot see is not vouched for.
        fleet = self._link.fleet
        look_only = vouched_only and not self._link.healthy and not fleet.alone
        token = f"{self._replica}{next(self._tokens)}"  # unique across replicas; need not be secret
        # The server must still be one this replica knows, holding the generation it knows: a restarted,
        # promoted or flushed one may have forgotten a claim, before the next probe could tell.
        keys = [self._key(identity)]
        if not self._link.clustered and fleet.generation is not None:
            keys.append(fleet.generation_key)
        args: list[str | int] = [fingerprint, token, self._lock_ms, "1" if look_only else "0"]
        args += [",".join(sorted(fleet.run_ids)), fleet.generation or ""]
        late = functools.partial(self._claimed_late, identity, token)
        slow = False
        try:
            record = await self._link.run(self._claim, keys, args, decides=True, on_late=late)
        except OverBudget:  # decided as if Redis were away; Redis may still make the claim (on_late)
            record, slow = -1, True
        except StateUnavailableError:
            record = -1
        if record == -1:  # Redis cannot decide: down, slow, or it may have forgotten
            self.fallbacks += 1
            if self._link.up and not slow:
                fleet.suspect()  # tell at once, not at the next probe
            if vouched_only and not fleet.alone:
                raise self._unvouched() from None
            self._unsynced.add(identity)
            return await self._local.claim(identity, fingerprint)
        if record == 0:
            raise self._unvouched()
        if record is None:
            future = asyncio.get_running_loop().create_future()
            self._owned[identity] = _Owned(fingerprint, token, future)
            return None
        fields = dict(zip(record[::2], record[1::2], strict=True))
        fingerprint_held = fields[b"fp"].decode()
        state = STATES.get(fields[b"s"])
        if state is None:
            return Entry("in_flight", fingerprint_held)
        if state == "stored" and b"r" in fields:
            state = "refused"
        left_ms = fields.get(TTL_FIELD)
        expires_in = left_ms / 1000 if isinstance(left_ms, int) and left_ms >= 0 else None
        answer = None
        if state in ANSWERED:
            answer = decode_settlement(fields[b"m"], fields.get(b"b", b"")).answer
        return Entry(state, fingerprint_held, answer, expires_in)

    def _claimed_late(self, identity: str, token: str, record: Any) -> None:
        """Redis made a claim its caller no longer waited for (past the decision budget, or the bot hung
        up). If this replica went on with the identity on its memory, the Redis claim becomes that
        one's (settled there under its token, so Redis ends up holding the answer, not nothing); else
        nobody will settle it: drop it now rather than have twins wait out its lock."""
        if record is not None:
            return  # not claimed: nothing to undo
        local = self._local.peek(identity)
        if local is not None and local.state == "in_flight":
            self._local_tokens.setdefault(identity, token)  # its end is settled in Redis with it
            self._unsynced.add(identity)
            return
        if local is not None:  # already ended here: write its end over the claim (same owner token)
            task = asyncio.ensure_future(self._put_back(identity, local, token))
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)
            task.add_done_callback(lambda done: done.cancelled() or done.exception())
            return
        dropped = self._link.submit(self._settle, [self._key(identity)], self._drop_args(token))
        dropped.add_done_callback(
            lambda done: (
                done.cancelled() or done.exception() is None or self._dropped.update({identity: token})
            )
        )

    async def wait(self, identity: str, fingerprint: str) -> Settlement | None:
        owned = self._owned.get(identity)
        if owned is not None:
            if owned.fingerprint != fingerprint:
                return None
            # Shielded: a cancelled waiter (its bot hung up) must not cancel what every twin awaits.
            return await asyncio.shield(owned.done)
        if self._local.peek(identity) is not None:
            return await self._local.wait(identity, fingerprint)
        return await self._wait_remote(identity, fingerprint)

    def _unvouched(self) -> Unvouched:
        self.unvouched += 1
        return Unvouched(retry_after=self._link.config.retry_interval)

    async def settle(self, identity: str, settlement: Settlement, keep: Kept | None, ttl: float) -> None:
        owned = self._owned.get(identity)
        if owned is None:  # claimed on local state (Redis was down)
            claimed = self._local.peek(identity)
            await self._local.settle(identity, settlement, keep, ttl)
            if claimed is not None:
                await self._sync_local(identity, claimed.fingerprint, settlement, keep, ttl)
            return
        # Twins here are answered at once, and this replica's copy is kept before Redis is told, so its
        # own retries replay from memory; the answer does not wait for Redis: the settlement goes with the
        # next batch of shared decisions, and twins on other replicas are woken when it lands. Until then
        # they find the claim in flight and wait for it, as they would a moment earlier.
        if not owned.done.done():
            owned.done.set_result(settlement)
        if keep is not None:
            answer = settlement.answer if keep in ANSWERED else None
            self._local.keep(identity, owned.fingerprint, keep, answer, ttl)
        self._owned.pop(identity, None)
        args = self._settle_args(identity, owned.fingerprint, owned.token, settlement, keep, ttl)
        sent = self._link.submit(self._settle, [self._key(identity)], args)
        self._settling[identity] = sent
        landed = functools.partial(self._settled, identity, owned.token, owned.fingerprint, keep, ttl)
        sent.add_done_callback(landed)

    def _settle_args(
        self,
        identity: str,
        fingerprint: str,
        token: str,
        settlement: Settlement,
        keep: Kept | None,
        ttl: float,
    ) -> list[bytes | str | int]:
        """SETTLE's arguments: keep the settlement (or drop the claim) and tell waiting twins."""
        meta, body = encode_settlement(settlement)
        stored = b"" if keep is None else KEEP_ARGS[keep]
        message = b" ".join((identity.encode(), fingerprint.encode(), meta)) + b"\n" + body
        return [token, stored, max(1, int(ttl * 1000)), fingerprint, meta, body, self._channel, message]

    def _drop_args(self, token: str) -> list[bytes | str | int]:
        """SETTLE's arguments to delete a claim this replica holds (the token matches), keeping nothing."""
        return [token, b"", 1, "", b"", b"", self._channel, b""]

    def _settled(
        self, identity: str, token: str, fingerprint: str, keep: Kept | None, ttl: float, sent: Any
    ) -> None:
        if self._settling.get(identity) is sent:
            del self._settling[identity]
        if not sent.cancelled() and sent.exception() is None:
            # This replica's copy now ends after Redis's: when it has expired here, it has expired for
            # every replica (a retry here after that is forwarded, not replayed from Redis).
            copy = self._local.peek(identity)
            if keep is not None and copy is not None and copy.fingerprint == fingerprint:
                self._local.keep(identity, fingerprint, keep, copy.answer, ttl)
            return
        self.fallbacks += 1  # kept here only, and written back when Redis returns
        if keep is not None:
            self._unsynced.add(identity)
            self._local_tokens[identity] = token
        else:  # nothing to keep, but Redis may still hold the claim: twins elsewhere would wait on it
            self._dropped[identity] = token

    async def _sync_local(
        self, identity: str, fingerprint: str, settlement: Settlement, keep: Kept | None, ttl: float
    ) -> None:
        """A claim decided on this replica's memory has ended: tell Redis, if it answers now (else it stays
        unsynced, for the next write-back)."""
        token = self._local_tokens.pop(identity, None)
        if token is None and (keep is None or not self._link.up):
            if keep is None:
                self._unsynced.discard(identity)  # nothing to keep: nothing Redis must learn
            return
        try:
            if token is not None:  # written back in flight: settle it there, waking twins elsewhere
                args = self._settle_args(identity, fingerprint, token, settlement, keep, ttl)
                await self._link.run(self._settle, [self._key(identity)], args)
            else:
                entry = self._local.peek(identity)
                if entry is not None:
                    await self._put_back(identity, entry)
        except StateUnavailableError:
            if token is not None:
                self._local_tokens[identity] = token  # the record may still be there, in flight
            return
        self._unsynced.discard(identity)

    async def _put_back(self, identity: str, entry: Entry, token: str = "") -> None:
        """Write one entry this replica holds to Redis, unless Redis holds something for it already."""
        if entry.state == "in_flight":
            state, ttl_ms, meta, body = b"f", self._lock_ms, b"", b""
        else:
            state = KEEP_ARGS["stored" if entry.state == "refused" else entry.state]
            ttl_ms = max(1, int((entry.expires_in or 0) * 1000))
            lost = errors.UpstreamUnavailable("the answer was lost after sending")
            meta, body = encode_settlement(
                Settlement(answer=entry.answer, error=None if entry.answer else lost)
            )
        refused = "1" if entry.state == "refused" else ""
        args: list[bytes | str | int] = [state, refused, entry.fingerprint, token, ttl_ms, meta, body]
        await self._link.call(
            lambda r: self._write_back_script(keys=[self._key(identity)], args=args, client=r)
        )

    async def _write_back(self) -> bool:
        """Put back in Redis every entry this replica holds — copies of answers settled here, claims in
        flight (this replica's on Redis, and those taken on its memory while Redis was away) — where Redis
        holds nothing for the identity (after it lost data). True when all of it got through."""
        await self._release_dropped()
        synced = set(self._unsynced)
        entries: list[tuple[str, Entry, str]] = []
        for identity, entry in self._local.held():
            if entry.state == "in_flight":  # claimed on memory: Redis must see it in flight, and its end
                token = self._local_tokens.setdefault(identity, secrets.token_hex(8))
            else:  # ended: replaces the record of its claim, if Redis still holds it
                token = self._local_tokens.get(identity, "")
            entries.append((identity, entry, token))
        for identity, owned in self._owned.items():
            entries.append((identity, Entry("in_flight", owned.fingerprint), owned.token))
        try:
            for start in range(0, len(entries), WRITE_BACK_CONCURRENCY):
                batch = entries[start : start + WRITE_BACK_CONCURRENCY]
                await asyncio.gather(*(self._put_back(*entry) for entry in batch))
        except StateUnavailableError:
            return False
        for identity, entry, _ in entries:
            if entry.state != "in_flight":
                self._local_tokens.pop(identity, None)
        self._unsynced -= synced
        return True

    def counts(self) -> dict[str, int]:
        counts = self._local.counts()
        counts["in_flight"] += len(self._owned)
        counts["entries"] += len(self._owned)
        counts["waiting_remote"] = sum(self._watchers.values())  # twins waiting on another replica's claim
        counts["local_fallbacks"] = self.fallbacks
        counts["unvouched"] = self.unvouched
        counts["unsynced"] = len(self._unsynced)
        counts["to_release"] = len(self._dropped)
        return counts

    def size(self) -> int:
        return self._local.size() + len(self._owned)

    async def start(self) -> None:
        if self._link.up:
            self._link_up.set()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._listen()), loop.create_task(self._keep_locks())]

    async def close(self) -> None:
        await asyncio.gather(*self._settling.values(), return_exceptions=True)  # on their way: let land
        for task in [*self._tasks, *self._releasing]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._releasing, return_exceptions=True)
        shutting_down = Settlement(error=errors.SeawallError("seawall is shutting down"))
        for owned in self._owned.values():
            if not owned.done.done():
                owned.done.set_result(shutting_down)
        self._owned.clear()
        self._local_tokens.clear()
        self._dropped.clear()
        await self._local.close()

    # -- waiting for another replica --------------------------------------------------------------------

    async def _wait_remote(self, identity: str, fingerprint: str) -> Settlement | None:
        loop = asyncio.get_running_loop()
        watch = (identity, fingerprint)
        future = self._watched.get(watch)
        if future is None:
            future = self._watched[watch] = loop.create_future()
        self._watchers[watch] = self._watchers.get(watch, 0) + 1
        deadline = loop.time() + self._wait_limit
        try:
            while True:
                try:
                    record = await self._link.call(
                        lambda r: r.hmget(self._key(identity), "s", "fp", "m", "b")
                    )
                except StateUnavailableError:
                    self.fallbacks += 1
                    return None  # claim again: on local state now
                state, held, meta, body = record
                if held != fingerprint.encode():
                    return None  # gone, or taken over by another payload: claim again to learn which
                if state != b"f":
                    # A transient failure whose message we missed (gone): claim again. Unknown: claim
                    # again to be told so. Stored (a success or a refusal): its answer.
                    if state == b"s" and isinstance(meta, bytes):
                        return decode_settlement(meta, body if isinstance(body, bytes) else b"")
                    return None
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return Settlement(
                        error=errors.UpstreamUnavailable(
                            "timed out waiting for an identical request in flight on another replica"
                        )
                    )
                try:
                    return await asyncio.wait_for(asyncio.shield(future), min(POLL_INTERVAL, remaining))
                except TimeoutError:
                    continue
        finally:
            self._watchers[watch] -= 1
            if not self._watchers[watch]:
                del self._watchers[watch]
                self._watched.pop(watch, None)

    def _deliver(self, message: bytes) -> None:
        """Hand a published settlement to the twins waiting for it. The message is identity, fingerprint
        and metadata separated by spaces, then a newline and the body (metadata JSON has no newline)."""
        head, _, body = message.partition(b"\n")
        identity, _, rest = head.partition(b" ")
        fingerprint, _, meta = rest.partition(b" ")
        watch = (identity.decode("ascii", "replace"), fingerprint.decode("ascii", "replace"))
        future = self._watched.get(watch)
        if future is None or future.done():
            return
        # Not ours to understand: the waiter's poll reads the record instead.
        with contextlib.suppress(ValueError, KeyError, TypeError):
            future.set_result(decode_settlement(meta, body))

    async def _listen(self) -> None:
        """Receive settlements from other replicas; resubscribe whenever the link comes back."""
        while True:
            await self._link_up.wait()
            pubsub = self._link.client.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                while True:
                    message: dict[str, Any] | None = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=1.0
                    )
                    if message is not None and message.get("type") == "message":
                        self._deliver(message["data"])
            except (RedisError, OSError, TimeoutError):
                pass  # the waiters' polls cover the gap; the link's own probe reports the outage
            finally:
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    await pubsub.aclose()
            await asyncio.sleep(self._link.config.retry_interval)

    async def _keep_locks(self) -> None:
        """Extend the lock of every claim this replica holds, so only a dead owner's claim expires."""
        while True:
            await asyncio.sleep(self._lock_ttl / 3)
            held = [(identity, claim.token) for identity, claim in self._owned.items()]
            held += list(self._local_tokens.items())
            if not held or not self._link.up:
                continue
            with contextlib.suppress(StateUnavailableError):
                await self._refresh_locks(held)

    async def _refresh_locks(self, held: list[tuple[str, str]]) -> None:
        """One script call per Cluster slot (every key in one call on a single server)."""
        groups: dict[int, list[tuple[str, str]]] = {}
        for identity, token in held:
            slot = key_slot(self._key(identity).encode()) if self._link.clustered else 0
            groups.setdefault(slot, []).append((self._key(identity), token))
        for group in groups.values():
            args: list[str | int] = [self._lock_ms, *(token for _, token in group)]
            await self._link.call(functools.partial(self._refresh, [key for key, _ in group], args))

    def _on_link_change(self, up: bool) -> None:
        if up:
            self._link_up.set()
            if self._dropped:
                task = asyncio.ensure_future(self._release_dropped())
                self._releasing.add(task)
                task.add_done_callback(self._releasing.discard)
        else:
            self._link_up.clear()

    async def _release_dropped(self) -> None:
        """Delete the claims this replica dropped while Redis could not be told, where it still holds them
        (the owner token matches); a twin waiting elsewhere then claims again at its next look."""
        for identity, token in list(self._dropped.items()):
            try:
                await self._link.run(self._settle, [self._key(identity)], self._drop_args(token))
            except StateUnavailableError:
                return
            if self._dropped.get(identity) == token:
                del self._dropped[identity]
