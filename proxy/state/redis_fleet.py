"""The replicas sharing one Redis: how many there are, and whether Redis forgot what they shared.

**Heartbeats.** At every probe of the link (`state.redis.retry_interval`) each replica refreshes its
member of the sorted set `<prefix>{fleet}:replicas`, scored by when it expires on Redis' clock (`ttl`,
three probe intervals, at least `MIN_TTL`), and drops the expired ones. So every replica knows how many
replicas share each budget; when Redis goes away it keeps the last count, and its local share of every
budget is 1/N of that (`state.redis.replicas`, when set, overrides the count).

**Noticing that Redis forgot.** Redis holds claims, answers and slots that exist nowhere else in full.
It may have lost some of them when:
- `generation`: the record `<prefix>{fleet}:generation` is gone (a restart without persistence, a
  FLUSHALL, an eviction);
- `run_id`: a master's run id changed (a restart, perhaps from an older snapshot; a failover, where
  replication is asynchronous, so the last writes before it may be missing on the promoted replica);
- `local`: this replica made decisions Redis never saw (it served on local state, or could not settle
  a claim it held there).
The replica that notices first starts a new generation (one script, compare-and-set, so two that notice
together start one); every replica that sees a generation it does not know **writes back what it holds
locally** (`on_rebuild`: dedup entries and claims, rate-limit slots; written only where Redis holds
nothing newer) and then marks itself done in the generation record. Until every replica with a live
heartbeat has done so, and at least one heartbeat TTL after the generation began (so that every live
replica has beaten once and noticed), the fleet is **rebuilding**: `settled` is False, and dedup refuses
placements this replica cannot vouch for.

One script per beat, on two keys hash-tagged `{fleet}` (one slot on a Cluster), plus one `INFO server`
per master.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.asyncio.cluster import RedisCluster

from proxy.logs import log
from proxy.metrics import Metrics
from proxy.state.redis_errors import StateUnavailableError

if TYPE_CHECKING:
    from proxy.state.redis_link import RedisLink

MIN_TTL = 0.5  # seconds a heartbeat lives at least, whatever the probe interval

# KEYS generation record, heartbeats. ARGV replica id, heartbeat TTL ms, the generation this replica
# knows ('' none), a new generation id, '1' to start it if the record still holds the known one, the
# generation this replica has written back for ('' none). -> {generation, its age ms, live replicas,
# live replicas not done writing back, 1 if this call started the generation}
BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gen = redis.call('HGET', KEYS[1], 'id')
local started = 0
if (not gen) or (ARGV[5] == '1' and (ARGV[3] == '' or gen == ARGV[3])) then
  redis.call('DEL', KEYS[1])
  gen = ARGV[4]
  redis.call('HSET', KEYS[1], 'id', gen, 'born', now)
  started = 1
end
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[2], ttl)
if ARGV[6] == gen then redis.call('HSET', KEYS[1], 'd:' .. ARGV[1], '1') end
local live, alive, pending = redis.call('ZRANGE', KEYS[2], 0, -1), {}, 0
for _, replica in ipairs(live) do
  alive['d:' .. replica] = true
  if redis.call('HEXISTS', KEYS[1], 'd:' .. replica) == 0 then pending = pending + 1 end
end
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do  -- done marks of replicas gone
  if string.sub(field, 1, 2) == 'd:' and not alive[field] then redis.call('HDEL', KEYS[1], field) end
end
return {gen, now - tonumber(redis.call('HGET', KEYS[1], 'born')), #live, pending, started}
"""


async def _info_of(cluster: RedisCluster, node: Any) -> dict[str, Any]:
    info: dict[str, Any] = await cluster.info("server", target_nodes=node)
    return info


@dataclass(frozen=True, slots=True)
class WriteBack:
    """A state's part in a rebuild: `write` puts back what it holds locally (True when all of it reached
    Redis); `unsynced` says whether it holds decisions Redis never saw."""

    write: Callable[[], Awaitable[bool]]
    unsynced: Callable[[], bool]


class Fleet:
    """This replica's heartbeat and its view of the generation (module docstring)."""

    def __init__(self, link: RedisLink, metrics: Metrics) -> None:
        self._link = link
        self._metrics = metrics
        self.replica = secrets.token_hex(6)
        self.ttl = max(MIN_TTL, 3 * link.config.retry_interval)
        self.counted: int | None = None  # live replicas at the last beat
        self._settled_count: int | None = None  # ... at the last beat while settled
        self.generation: str | None = None
        # joining (not beaten since start or since Redis came back), rebuilding, settled
        self.phase = "joining"
        self.rebuilds = 0
        self._written = ""  # the generation this replica has written everything back for
        self.run_ids: frozenset[str] = frozenset()  # of the masters, at the last beat
        self._suspected: asyncio.Task[None] | None = None
        self._write_backs: list[WriteBack] = []
        self._writing: asyncio.Task[None] | None = None
        self._settled = asyncio.Event()
        self._beating = asyncio.Lock()
        self.generation_key = link.key("{fleet}", "generation")
        self._keys = [self.generation_key, link.key("{fleet}", "replicas")]
        self._script = link.client.register_script(BEAT)

    @property
    def settled(self) -> bool:
        return self.phase == "settled"

    @property
    def known(self) -> int | None:
        """Replicas sharing the budget: the last count while settled, or more if more beat since (after
        Redis lost data, heartbeats come back one by one: the count from before the loss stands)."""
        if self.counted is None or self.settled:
            return self.counted
        return max(self.counted, self._settled_count or 0)

    @property
    def alone(self) -> bool:
        """The operator says this is the only replica (`state.redis.replicas: 1`): nobody else can have sent
        what it has not. Never inferred from heartbeats: a replica that started a moment ago is not
        counted yet by the others."""
        return self._link.config.replicas == 1

    def on_rebuild(self, write_back: WriteBack) -> None:
        self._write_backs.append(write_back)

    def lost(self) -> None:
        """Redis went away: nothing decided there counts until the next beat says it still holds it all."""
        self.phase = "joining"
        self._settled.clear()
        self._metrics.state_rebuilding.set(0)

    def suspect(self) -> None:
        """A decision found a server or a generation this replica does not know: beat now rather than at
        the next probe, to learn whether Redis forgot."""
        if self._suspected is None or self._suspected.done():
            self._suspected = asyncio.ensure_future(self.beat())

    async def settle(self, within: float) -> bool:
        """Wait until the fleet is settled, at most `within` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._settled.wait()
        return self.settled

    async def beat(self) -> None:
        async with self._beating:
            try:
                reply = await self._beat()
            except StateUnavailableError:
                return  # the link says why; the next probe beats again
        self._apply(*reply)

    async def _beat(self) -> tuple[str, int, int, int, str]:
        run_ids = await self._read_run_ids()
        writing = self._writing is not None and not self._writing.done()
        reason = ""
        if self.run_ids and run_ids and run_ids != self.run_ids:
            reason = "run_id"
        elif not writing and any(part.unsynced() for part in self._write_backs):
            reason = "local"
        args: list[str | int] = [self.replica, int(self.ttl * 1000), self.generation or ""]
        args += [secrets.token_hex(8), "1" if reason else "0", self._written]
        generation, age_ms, live, pending, started = await self._link.call(
            lambda r: self._script(keys=self._keys, args=args, client=r)
        )
        if started and not reason:
            reason = "generation"
        # Learnt only now: had the beat failed, the next one must still see the change.
        self.run_ids = run_ids or self.run_ids
        return generation.decode(), int(age_ms), int(live), int(pending), reason if started else ""

    async def _read_run_ids(self) -> frozenset[str]:
        """The run id of every master (one for a single server or a Sentinel-managed master)."""
        client = self._link.client
        if isinstance(client, RedisCluster):
            run_ids = set()
            for node in client.get_primaries():
                info = await self._link.call(functools.partial(_info_of, node=node))
                run_ids.add(str(info.get("run_id", "")))
            return frozenset(run_ids)
        info = await self._link.call(lambda r: r.info("server"))
        return frozenset({str(info.get("run_id", ""))})

    def _apply(self, generation: str, age_ms: int, live: int, pending: int, reason: str) -> None:
        self.counted = live
        if self.settled:
            self._settled_count = live
        self._metrics.state_replicas.set(self._link.config.replicas or self.known or live)
        if generation != self.generation:
            known, self.generation = self.generation, generation
            self.phase = "rebuilding"
            self._settled.clear()
            self._metrics.state_rebuilding.set(1)
            if known is not None:  # at its first beat a replica cannot tell a new fleet from a loss
                self.rebuilds += 1
                self._metrics.state_rebuilds.labels(reason or "generation").inc()
                log.warning(
                    "shared state (redis) may have lost what the replicas shared: writing back what this "
                    "replica holds; placements it cannot vouch for are refused until every replica has",
                    extra={"fields": {"reason": reason or "generation", "replicas": live}},
                )
            self._start_write_back(generation)
            return
        if self._written != generation and (self._writing is None or self._writing.done()):
            self._start_write_back(generation)  # the last attempt did not get everything through
            return
        if not self.settled and self._written == generation and age_ms >= self.ttl * 1000 and pending == 0:
            was_rebuilding = self.phase == "rebuilding" and self.rebuilds > 0
            self.phase = "settled"
            self._settled_count = live
            self._settled.set()
            self._metrics.state_rebuilding.set(0)
            if was_rebuilding:
                fields = {"replicas": live}
                log.info("shared state (redis) rebuilt: every replica wrote back", extra={"fields": fields})

    def _start_write_back(self, generation: str) -> None:
        if self._writing is not None and not self._writing.done():
            self._writing.cancel()  # an older generation's: what it wrote is kept, the new one writes all
        self._writing = asyncio.ensure_future(self._write_back(generation))

    async def _write_back(self, generation: str) -> None:
        complete = True
        for part in self._write_backs:
            try:
                complete = await part.write() and complete
            except Exception:  # a write-back must not kill the beat; this generation stays unwritten
                log.exception("writing shared state back to redis failed")
                complete = False
        if complete and self.generation == generation:
            self._written = generation
            await self.beat()  # say so at once, rather than at the next probe

    def describe(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "replicas": self._link.config.replicas or self.known,
            "replicas_counted": self.counted,
            "heartbeat_ttl_seconds": self.ttl,
            "rebuilds": self.rebuilds,
        }

    async def close(self) -> None:
        for task in (self._writing, self._suspected):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
