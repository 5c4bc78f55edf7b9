"""Fair turns among the bots that share one rate-limit queue: start-time fair queueing, and pacing.

Several bots on one API key share its budget. First come, first served lets a bot with 50 requests queued
make a bot with one wait behind all 50. Instead each queued request gets a *tag*, and a queue is served in
tag order (after `priority`): start-time fair queueing, per queue (rule, scope),

    tag    = max(virtual time, finish of the bot's last admitted request) + the turns of those it has queued
    finish = tag + cost * slot / weight            virtual time = the tag last admitted; slot = window / limit

so a bot that queues more than its share gets tags one of its slots apart, and a bot that arrives with
one request is tagged at the virtual time: ahead of the other's backlog, served at the next free slot.
Only requests still queued count: a request refused (its wait beyond its max wait) takes no turn, so a
bot that queues far more than it can get is not pushed ever further back by its own refusals.
Weighted bots (`weights`, default 1) get slots in proportion to their weights; a bot alone gets them all.

Turns alone do not help if the slots all come free at once (a burst at the start, the end of a cool-down,
took them all together, and they keep coming back together, a window apart): the next free slot can then
be a whole window away. So while two or more bots contend in a queue (both queued within the last
`CONTENTION_WINDOWS` windows), requests leave it at most one slot interval apart; the slots then come free
spread out, one every slot interval, and a polite bot waits for at most about one (paced requests leave
in tag order: only the head of the queue may go, so pacing never lets a later tag slip ahead). A bot
alone is never
paced (a backlog that is its own costs it nothing), and a burst that fits the budget never waits.

Pacing holds for requests that find the queue empty too, while bots contend (otherwise slots taken
together at the end of a window would come back together, time out every queued request, and leave the
budget to whoever retries most often).

One tag per request, the same in every queue it waits in (a request under several rules), so two requests
are in the same order in every queue and never wait for each other. A queue nobody queued in for a while
is forgotten (`drop_idle`); at most `MAX_BOTS` bots per queue are remembered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

MAX_BOTS = 1024  # bots remembered per queue; beyond, the one seen longest ago is forgotten
CONTENTION_WINDOWS = 4.0

QueueKey = tuple[str, str]  # (rule, scope)


@dataclass(slots=True)
class _Queue:
    virtual: float = 0.0  # the tag of the request admitted last
    seen: dict[str, float] = field(default_factory=dict)  # bot -> when it last queued here
    served: dict[str, float] = field(default_factory=dict)  # bot -> finish of its last request admitted
    next_at: float = 0.0  # while bots contend: no admission from this queue before this


class FairShare:
    """The turns of every queue (module docstring)."""

    def __init__(self, weights: Mapping[str, float] | None = None) -> None:
        self.weights = dict(weights or {})
        self._queues: dict[QueueKey, _Queue] = {}

    def tag(
        self,
        bot: str,
        spacing: Sequence[tuple[QueueKey, float]],
        queued: Mapping[QueueKey, float],
        now: float,
    ) -> tuple[float, dict[QueueKey, float]]:
        """The tag of a request of `bot` for the queues of `spacing` ((queue, cost * slot interval)), given
        `queued`: per queue, the turns (finish - tag) of the bot's requests still waiting there; and its
        finishes."""
        queues = [self._queues.setdefault(key, _Queue()) for key, _ in spacing]
        tag = 0.0
        for (key, _), q in zip(spacing, queues, strict=True):
            tag = max(tag, max(q.virtual, q.served.get(bot, q.virtual)) + queued.get(key, 0.0))
        weight = self.weights.get(bot, 1.0)
        for queue in queues:
            queue.seen.pop(bot, None)  # re-inserted last: the bot seen longest ago is first
            queue.seen[bot] = now
            if len(queue.seen) > MAX_BOTS:
                oldest = next(iter(queue.seen))
                del queue.seen[oldest]
                queue.served.pop(oldest, None)
        return tag, {key: tag + seconds / weight for key, seconds in spacing}

    def _contended(self, queue: _Queue, window: float, now: float) -> bool:
        since = now - CONTENTION_WINDOWS * window
        return sum(1 for seen in reversed(queue.seen.values()) if seen >= since) >= 2

    def paced(self, queues: Sequence[tuple[QueueKey, float]], now: float) -> float | None:
        """While bots contend in any of `queues` ((queue, rule window)): the earliest the head of those
        queues may leave them. None: no contention, nobody is paced."""
        earliest: float | None = None
        for key, window in queues:
            queue = self._queues.get(key)
            if queue is not None and self._contended(queue, window, now):
                earliest = max(earliest or 0.0, queue.next_at)
        return earliest

    def admitted(
        self,
        bot: str,
        tag: float,
        finish: Mapping[QueueKey, float],
        paced: Sequence[tuple[QueueKey, float, float]],
        now: float,
    ) -> None:
        """A queued request of `bot` with `tag` (and `finish` per queue) left the queues of `paced`
        ((queue, rule window, cost * slot interval)): the virtual time moves on, the bot's turn is taken,
        and the next may leave one slot interval later."""
        for key, window, seconds in paced:
            queue = self._queues.get(key)
            if queue is None:
                continue
            queue.virtual = max(queue.virtual, tag)
            if key in finish:
                queue.served[bot] = max(queue.served.get(bot, 0.0), finish[key])
            if self._contended(queue, window, now):
                queue.next_at = max(now, queue.next_at) + seconds

    def drop_idle(self, now: float, idle_for: float) -> int:
        """Forget the queues where no bot queued for `idle_for` (bounded memory); how many."""
        idle = [
            key
            for key, queue in self._queues.items()
            if queue.next_at <= now and max(queue.seen.values(), default=0.0) <= now - idle_for
        ]
        for key in idle:
            del self._queues[key]
        return len(idle)

    def __len__(self) -> int:
        return len(self._queues)
