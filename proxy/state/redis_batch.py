"""Shared decisions at memory speed: the script calls of one loop turn reach Redis in one write.

Every policy's shared decision is one Lua script call (a rate-limit acquire, a dedup claim, a breaker
read). Made one by one through redis-py, each costs ~85 µs of this process' CPU and its own round trip,
so a replica on Redis did 0.36x the requests per second of one on memory (docs/design.md, "Shared
decisions at memory speed"). Here:

- **One write per loop turn.** `Batcher.submit` queues a call and, for the first call of a loop turn,
  schedules a flush at the next turn. Every call queued meanwhile — the decisions of every request that
  arrived in the same turn — is sent in one pipelined write on one connection and its replies read back
  in order (hiredis parses them when installed, as it is with Seawall). On a Redis Cluster, redis-py's
  cluster pipeline splits the batch per master (each call's keys share one slot, so each stays one atomic
  script).
- **Releases ride along.** Work that can wait (`before_next_flush`: the rate limiter's releases) is added
  to the next batch that goes out anyway, or goes on its own after `LINGER` if none does: an answer never
  waits for a release, and a release never costs a round trip of its own while decisions are flowing.
  (Measured on one connection: a release sent at once, in the turn after the answer, cost the next
  request ~100 µs at p50 — its own write, read and task, right when that request came in.)
- **A decision has a budget.** A call submitted with `budget` that has no reply after that many seconds
  is failed with `OverBudget` (the caller decides locally, per its fail mode) while its batch goes on;
  when its reply comes late, `on_late` is given it, so what Redis did for nobody (a slot taken, a claim
  written) can be undone. A caller that gave up (cancelled) is treated the same way.
- **One script call per batch of decisions.** A script built with `merging` (the rate limiter's acquire)
  also has a merged form that runs the decision once per call it is given: the calls of a batch (of one
  Cluster slot) go as one EVALSHA — Redis sets up one script run, reads its clock once, and this process
  sends and parses one command instead of one per decision (Redis spent ~22 µs a decision as separate
  calls, measured with `INFO commandstats`).
- **NOSCRIPT** (Redis restarted or flushed its scripts): the script is loaded again and the calls that
  met it are sent once more, transparently.

What a failure means (the link down, or one call refused) is decided by the owner of the batcher
(`RedisLink`), which is told each batch's outcome.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import NoScriptError, ResponseError

from proxy.logs import log
from proxy.state.redis_clients import Client
from proxy.state.redis_errors import StateUnavailableError

MAX_BATCH = 1024  # calls in one write: more are sent as the next batch of the same turn
MAX_MERGED = 256  # calls merged into one script call
# How long work that can wait (releases) waits for a batch to ride along with. Longer only keeps a slot
# counted in flight that much longer (on the safe side), never an answer waiting.
LINGER = 0.002


class OverBudget(StateUnavailableError):
    """Redis did not decide within the decision budget: decided locally, per the fail mode."""


@dataclass(frozen=True, slots=True)
class SharedScript:
    """A Lua script every replica runs by its SHA-1 (EVALSHA), loaded again when Redis forgot it.
    `name` ("ratelimit.acquire", ...) labels what it decides, its first word the policy; `merged`, when
    set, runs many calls of this script in one (`merging`)."""

    name: str
    source: str
    merged: SharedScript | None = None
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())

    @property
    def policy(self) -> str:
        return self.name.split(".", 1)[0]


def merging(name: str, lib: str, body: str) -> SharedScript:
    """The script `lib + body`, and its merged form: given N calls' keys one after the other, and ARGV
    `N, then per call its number of keys, its number of arguments, its arguments`, it runs `body` once
    per call (with that call's KEYS and ARGV) and returns the list of their replies, each wrapped in a
    list of one (so a nil or false reply keeps its place)."""
    many = f"""{lib}
local function one(KEYS, ARGV)
{body}
end
local out, k, a = {{}}, 0, 2
for i = 1, tonumber(ARGV[1]) do
  local nk, na = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  out[i] = {{one({{unpack(KEYS, k + 1, k + nk)}}, {{unpack(ARGV, a + 2, a + 1 + na)}})}}
  k, a = k + nk, a + 2 + na
end
return out
"""
    return SharedScript(name, lib + body, SharedScript(name + "+", many))


@dataclass(slots=True, eq=False)
class ScriptCall:
    script: SharedScript
    keys: Sequence[str]
    args: Sequence[Any]
    future: asyncio.Future[Any]
    deadline: float | None = None  # loop time past which the caller decides without Redis
    on_late: Callable[[Any], None] | None = None  # given the reply if the caller stopped waiting
    members: list[ScriptCall] | None = None  # a merged call: the calls it stands for


Outcome = Callable[[list[ScriptCall], "list[Any] | BaseException"], None]


class Batcher:
    """Collects the script calls of one loop turn and sends them in one write (module docstring)."""

    def __init__(
        self,
        client: Client,
        *,
        bound: float,
        outcome: Outcome,
        on_over_budget: Callable[[ScriptCall], None],
        batches_in_flight: int,
    ) -> None:
        """`bound`: the longest one batch may take, then it fails (Redis did not answer);
        `outcome(batch, replies or the batch's exception)`: decides what each reply means and resolves
        the callers' futures; `on_over_budget(call)`: told of each decision given up on."""
        self._client = client
        self._bound = bound
        self._outcome = outcome
        self._on_over_budget = on_over_budget
        self._in_flight = asyncio.Semaphore(batches_in_flight)
        self._lanes = Lanes(client, batches_in_flight)
        self._pending: list[ScriptCall] = []
        self._before_flush: list[Callable[[], None]] = []
        self._scheduled = False
        self._lingering: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.batches = 0  # writes sent so far (for /status and tests)
        self.calls = 0  # script calls sent so far

    def submit(
        self,
        script: SharedScript,
        keys: Sequence[str],
        args: Sequence[Any],
        *,
        budget: float | None = None,
        on_late: Callable[[Any], None] | None = None,
    ) -> asyncio.Future[Any]:
        """Queue one call for this turn's batch; the future resolves with its reply (or the error the
        owner decided on)."""
        loop = asyncio.get_running_loop()
        deadline = None if budget is None else loop.time() + budget
        call = ScriptCall(script, keys, args, loop.create_future(), deadline, on_late)
        if self._closed:  # shutting down: nothing more goes out
            call.future.set_exception(StateUnavailableError("shared state is closed"))
            return call.future
        self._pending.append(call)
        self._schedule(loop)
        return call.future

    def before_next_flush(self, provider: Callable[[], None]) -> None:
        """Call `provider` (which submits what can wait) when the next batch is assembled: within
        `LINGER` from now."""
        self._before_flush.append(provider)
        if self._lingering is None and not self._scheduled:
            self._lingering = asyncio.get_running_loop().call_later(LINGER, self._linger_ended)

    def _linger_ended(self) -> None:
        self._lingering = None
        self._schedule(asyncio.get_running_loop())

    def flush_soon(self) -> None:
        """What waits for a batch goes at the next loop turn (someone waits for it to land)."""
        if self._lingering is not None:
            self._lingering.cancel()
            self._linger_ended()

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if self._lingering is not None:
            self._lingering.cancel()
            self._lingering = None
        providers, self._before_flush = self._before_flush, []
        for provider in providers:  # what they submit goes in this batch
            _safely(provider)
        pending, self._pending = self._merged(self._pending), []
        loop = asyncio.get_running_loop()
        for start in range(0, len(pending), MAX_BATCH):
            batch = pending[start : start + MAX_BATCH]
            task = loop.create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            deadlines = [call.deadline for call in batch if call.deadline is not None]
            if deadlines:
                timer = loop.call_at(min(deadlines), self._expire, batch)
                task.add_done_callback(functools.partial(_cancel_timer, timer))

    def _merged(self, pending: list[ScriptCall]) -> list[ScriptCall]:
        """Calls of a script with a merged form, grouped per script (and Cluster slot), each group (of at
        most MAX_MERGED) as one call whose reply is split back to its members' futures."""
        current: dict[tuple[str, int], list[ScriptCall]] = {}
        groups: list[list[ScriptCall]] = []
        calls: list[ScriptCall] = []
        clustered = isinstance(self._client, RedisCluster)
        for call in pending:
            if call.script.merged is None or not call.keys:
                calls.append(call)
                continue
            key = (call.script.sha, key_slot(call.keys[0].encode()) if clustered else 0)
            group = current.get(key)
            if group is None or len(group) >= MAX_MERGED:  # one script call blocks Redis: bounded
                group = current[key] = []
                groups.append(group)
                calls.append(call)  # the group's place in the batch: replaced below when it grew
            group.append(call)
        for group in groups:
            if len(group) > 1:
                calls[calls.index(group[0])] = self._merge(group)
        return calls

    @staticmethod
    def _merge(group: list[ScriptCall]) -> ScriptCall:
        loop = asyncio.get_running_loop()
        keys: list[str] = []
        args: list[Any] = [len(group)]
        for call in group:
            keys += call.keys
            args += [len(call.keys), len(call.args), *call.args]
        merged = group[0].script.merged
        assert merged is not None
        future: asyncio.Future[Any] = loop.create_future()
        deadlines = [call.deadline for call in group if call.deadline is not None]
        late = functools.partial(_late_split, group)
        combined = ScriptCall(merged, keys, args, future, min(deadlines, default=None), late, group)
        future.add_done_callback(functools.partial(_split, group))
        return combined

    def _expire(self, batch: list[ScriptCall]) -> None:
        """The budget of some calls ran out: their callers decide without Redis now."""
        loop = asyncio.get_running_loop()
        now, later = loop.time(), []
        for call in batch:
            if call.future.done() or call.deadline is None:
                continue
            if call.deadline <= now:
                for member in call.members or (call,):
                    if not member.future.done():  # a caller that hung up was not over budget
                        self._on_over_budget(member)
                call.future.set_exception(OverBudget("shared state did not decide within its budget"))
            else:
                later.append(call.deadline)
        if later:
            loop.call_at(min(later), self._expire, batch)

    async def _run(self, batch: list[ScriptCall]) -> None:
        try:
            async with asyncio.timeout(self._bound), self._in_flight:
                self.batches += 1
                self.calls += len(batch)
                replies = await execute(self._client, self._lanes, batch)
        except (Exception, asyncio.CancelledError) as error:
            self._finish(batch, error)
            if isinstance(error, asyncio.CancelledError):
                raise
            return
        self._finish(batch, replies)

    def _finish(self, batch: list[ScriptCall], replies: list[Any] | BaseException) -> None:
        """The owner resolves each call; whatever goes wrong there, no caller is left waiting."""
        try:
            self._outcome(batch, replies)
        except Exception:
            log.exception("shared-state batch outcome failed")
        finally:
            for call in batch:
                if not call.future.done():
                    call.future.set_exception(StateUnavailableError("shared state call failed"))

    async def close(self) -> None:
        """Send what is queued, wait for the batches under way (each is bounded), then take no more."""
        self.flush_soon()
        while self._tasks or self._scheduled:
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            else:
                await asyncio.sleep(0)  # the scheduled flush runs at the next turn
        self._closed = True
        await self._lanes.close()


def _split(group: list[ScriptCall], merged: asyncio.Future[Any]) -> None:
    """A merged call ended: its reply (a list) to each member, or its failure to every member."""
    if merged.cancelled():
        failure: BaseException = StateUnavailableError("shared state did not answer")
    elif merged.exception() is not None:
        failure = merged.exception()  # type: ignore[assignment]
    else:
        _late_split(group, merged.result())
        return
    for call in group:
        if not call.future.done():
            call.future.set_exception(failure)


def _late_split(group: list[ScriptCall], replies: Any) -> None:
    """Each member its reply: to its future, or (it gave up waiting) to its `on_late`."""
    if not isinstance(replies, list) or len(replies) != len(group):
        replies = [StateUnavailableError("shared state answered a merged call short")] * len(group)
    for call, wrapped in zip(group, replies, strict=True):
        if isinstance(wrapped, StateUnavailableError):
            reply: Any = wrapped
        else:  # a list of one; empty when the call returned nil
            reply = wrapped[0] if wrapped else None
        if isinstance(reply, StateUnavailableError):
            if not call.future.done():
                call.future.set_exception(reply)
        elif not call.future.done():
            call.future.set_result(reply)
        elif call.on_late is not None:
            _safely(call.on_late, reply)


def _safely(function: Callable[..., Any], *args: Any) -> None:
    """Run a callback of someone else's; its failure is logged, never let to stop the batch's others."""
    try:
        function(*args)
    except Exception:
        log.exception("shared-state callback failed")


def _cancel_timer(timer: asyncio.TimerHandle, _: object) -> None:
    timer.cancel()


def command_of(call: ScriptCall) -> tuple[Any, ...]:
    return ("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)


def _text(value: Any) -> str:
    kind = type(value)
    if kind is str:
        return value
    if kind is int or kind is float:
        return repr(value)
    raise TypeError  # bytes (or anything else): the general path


def pack(calls: Sequence[ScriptCall]) -> bytes:
    """The batch as one RESP write. redis-py's packer (general, with memoryview splitting) cost ~15 µs a
    call in a profile of a sequential decision, a third of the decision's CPU. A call of ASCII text and
    numbers (a decision) is built as one string and encoded once (~0.15 µs a value); one carrying bytes
    (a dedup settlement: the answer) value by value."""
    chunks: list[bytes] = []
    for call in calls:
        try:
            values = [call.script.sha, str(len(call.keys)), *map(_text, call.keys), *map(_text, call.args)]
            text = f"*{len(values) + 1}\r\n$7\r\nEVALSHA\r\n" + "".join(
                [f"${len(value)}\r\n{value}\r\n" for value in values]
            )
            if text.isascii():  # then a length in characters is a length in bytes
                chunks.append(text.encode("ascii"))
                continue
        except TypeError:
            pass
        chunks.append(_pack_call(call))
    return b"".join(chunks)


def _pack_call(call: ScriptCall) -> bytes:
    command = command_of(call)
    chunks = [b"*%d\r\n" % len(command)]
    for value in command:
        kind = type(value)
        if kind is bytes:
            data = value
        elif kind is str:
            data = value.encode()
        elif kind is int or kind is float:
            data = repr(value).encode()
        else:  # as redis-py: a bool or anything else is not an argument (say 0/1 or '0'/'1')
            raise TypeError(f"not a Redis argument: {kind.__name__}")
        chunks += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(chunks)


class Lanes:
    """Connections kept out of redis-py's pool for batches, one batch on each at a time: a batch does
    not pay the pool's checkout (~29 µs a batch in the same profile: locks, timers, observability).
    Every connection taken is either put back or dropped (back to the pool, disconnected), whatever
    fails; a batch waits for a free one when `size` are out."""

    def __init__(self, client: Client, size: int) -> None:
        self._pool = client.connection_pool if not isinstance(client, RedisCluster) else None
        self._size = size
        self._idle: list[Any] = []
        self._open = 0  # taken from the pool: idle, or carrying a batch
        self._waiting: deque[asyncio.Future[Any]] = deque()

    async def take(self) -> Any:
        assert self._pool is not None
        if self._idle:
            connection = self._idle.pop()  # the most recently used: one hot connection under light load
        elif self._open < self._size:
            self._open += 1
            try:
                return await self._pool.get_connection()
            except BaseException:
                self._open -= 1
                raise
        else:
            waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            try:
                connection = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self.put(waiter.result())  # handed over as we gave up: the next one takes it
                raise
        try:
            # As the pool checks a connection it hands out: closed, holding bytes nobody asked for (a
            # reply left behind), or (Sentinel) to a master that is one no longer: connect again.
            master = getattr(self._pool, "master_address", None)  # Sentinel: the master it last found
            stale = master is not None and (connection.host, connection.port) != master
            if stale or not connection.is_connected or await connection.can_read():
                await connection.disconnect()
                await connection.connect()
        except BaseException:
            await self.drop(connection)
            raise
        return connection

    def put(self, connection: Any) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        self._idle.append(connection)

    async def drop(self, connection: Any) -> None:
        """A connection that failed: replies may still be on their way, never reuse it."""
        assert self._pool is not None
        self._open -= 1
        try:
            await connection.disconnect()
        finally:
            await self._pool.release(connection)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            self._open -= 1
            assert self._pool is not None
            await self._pool.release(connection)


async def execute(client: Client, lanes: Lanes, batch: Sequence[ScriptCall]) -> list[Any]:
    """Send the batch's calls in one pipelined write and return each reply, or the error Redis answered
    that one call with (a `ResponseError`; on a Cluster also a connection error of one master's share).
    Scripts Redis does not know are loaded and their calls sent again; what fails then fails those
    calls only, the others' replies stand."""
    replies = await _pipelined(client, lanes, batch)
    missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if missing:
        try:
            for script in {batch[i].script.sha: batch[i].script for i in missing}.values():
                await client.script_load(script.source)
            again: list[Any] = await _pipelined(client, lanes, [batch[i] for i in missing])
        except Exception as error:
            again = [error] * len(missing)
        for i, reply in zip(missing, again, strict=True):
            replies[i] = reply
    return replies


async def _pipelined(client: Client, lanes: Lanes, batch: Sequence[ScriptCall]) -> list[Any]:
    if isinstance(client, RedisCluster):  # redis-py routes each call to the master of its slot
        pipe = client.pipeline()
        for call in batch:
            pipe.execute_command(*command_of(call))
        return list(await pipe.execute(raise_on_error=False))
    # One server (or Sentinel's master): one connection, one write, the replies read in order. redis-py's
    # Pipeline object costs ~2x this per call (measured: 18.5 vs 12.8 µs a call at 10 a batch).
    data = pack(batch)
    connection = await lanes.take()
    try:
        await connection.send_packed_command(data, check_health=False)
        replies: list[Any] = []
        for _ in batch:
            try:
                replies.append(await connection.read_response())
            except ResponseError as error:  # this call's error reply, read whole: the stream stays in step
                replies.append(error)
    except BaseException:
        await lanes.drop(connection)
        raise
    lanes.put(connection)
    return replies
