"""Effective limits learned from the exchange: lowered when it answers -1003 anyway, restored slowly.

Traffic that bypasses Seawall (another process on the same key) spends the budget Seawall counts on, and
the exchange answers -1003 although Seawall's own window was within the limit. A scope whose requests
earn that is given a lower effective limit; the configured limit stays the ceiling.

Guarantees, per (rule, scope):
- the effective limit is the configured one until the exchange refuses a request of the scope that was
  admitted at or after the last lowering (one admitted earlier went out under the old limit and says
  nothing new); then it becomes `max(floor, min(E - 1, ceil(E * decrease)))`, with
  `floor = max(1, ceil(limit * min_share))`: multiplicative, and bounded below;
- it comes back one slot per `restore_every` without a refusal (additive), up to one slot below the level
  that was refused; the refused level itself is tried again only after `probe_after` without a refusal,
  so once learned, the refusals stop instead of recurring at every probe;
- the exchange's own `X-RateLimit-Limit`, where it sends one, caps it the same way (never above the
  configured limit);
- it never exceeds the configured limit, and a scope back at it is forgotten (bounded memory).

It decides and reports (the limit to use, a log line on each change); the policy applies it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proxy.logs import log

MAX_LEARNED = 50_000  # scopes with a lowered limit; beyond, the oldest lowering is forgotten


@dataclass(slots=True)
class _Lowered:
    label: str
    configured: int
    level: int  # the effective limit set at `at`
    at: float  # when it was set (the policy's clock)
    ceiling: int  # restoring stops here until `probe_after` has passed
    refusals: int = 1

    def effective(self, now: float, restore_every: float, probe_after: float) -> int:
        since = max(0.0, now - self.at)
        cap = self.configured if since >= probe_after else self.ceiling
        return min(cap, self.level + math.floor(since / restore_every))


class LearnedLimits:
    """The effective limit of every scope whose limit was lowered (module docstring)."""

    def __init__(
        self,
        *,
        enabled: bool = True,
        decrease: float = 0.8,
        min_share: float = 0.5,
        restore_every: float = 10.0,
        probe_after: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._table: dict[tuple[str, str], _Lowered] = {}
        self._clock = clock
        self.configure(
            enabled=enabled,
            decrease=decrease,
            min_share=min_share,
            restore_every=restore_every,
            probe_after=probe_after,
        )

    def configure(
        self, *, enabled: bool, decrease: float, min_share: float, restore_every: float, probe_after: float
    ) -> None:
        """New settings (a config reload): what was learned is kept, unless learning is switched off."""
        self.enabled = enabled
        self._decrease, self._min_share = decrease, min_share
        self._restore_every, self._probe_after = restore_every, probe_after
        if not enabled:
            self._table.clear()

    def limit(self, rule: str, scope: str, configured: int, now: float) -> int:
        """The limit to apply to (rule, scope) now."""
        lowered = self._table.get((rule, scope))
        if lowered is None:
            return configured
        value = min(configured, lowered.effective(now, self._restore_every, self._probe_after))
        if value >= configured:
            del self._table[(rule, scope)]
            log.info(
                "rate limit restored",
                extra={"fields": {"rule": rule, "scope": lowered.label, "limit": configured}},
            )
        return value

    def _floor(self, configured: int) -> int:
        return max(1, math.ceil(configured * self._min_share))

    def lower(
        self, rule: str, scope: str, label: str, configured: int, admitted_at: float, now: float
    ) -> bool:
        """The exchange refused a request of (rule, scope) admitted at `admitted_at`: lower the scope's
        limit, unless it went out before the last lowering. True if the limit changed."""
        if not self.enabled:
            return False
        lowered = self._table.get((rule, scope))
        if lowered is not None and admitted_at < lowered.at:
            return False  # sent under the limit before the last lowering: nothing new
        current = self.limit(rule, scope, configured, now)
        target = max(self._floor(configured), min(current - 1, math.ceil(current * self._decrease)))
        refusals = lowered.refusals + 1 if lowered is not None and (rule, scope) in self._table else 1
        self._set(rule, scope, _Lowered(label, configured, target, now, max(target, current - 1), refusals))
        log.warning(
            "rate limit lowered: the exchange answered -1003 (something else spends this budget?)",
            extra={
                "fields": {
                    "rule": rule,
                    "scope": label,
                    "configured": configured,
                    "from": current,
                    "to": target,
                }
            },
        )
        return target != current

    def cap(self, rule: str, scope: str, label: str, configured: int, announced: int, now: float) -> bool:
        """The exchange announced its limit for (rule, scope) (`X-RateLimit-Limit`): use it while below
        the configured one. True if the limit changed."""
        if not self.enabled or announced < 1:
            return False
        current = self.limit(rule, scope, configured, now)
        if announced >= current:
            return False
        self._set(rule, scope, _Lowered(label, configured, announced, now, announced, 0))
        log.warning(
            "rate limit lowered to the exchange's announced limit",
            extra={"fields": {"rule": rule, "scope": label, "configured": configured, "to": announced}},
        )
        return True

    def _set(self, rule: str, scope: str, lowered: _Lowered) -> None:
        self._table.pop((rule, scope), None)  # re-inserted last: the oldest lowering is first
        if len(self._table) >= MAX_LEARNED:
            del self._table[next(iter(self._table))]
        self._table[(rule, scope)] = lowered

    def lowest(self, rule: str, configured: int) -> int:
        """The lowest effective limit among the rule's scopes (the configured one if none is lowered)."""
        now = self._clock()
        return min(
            (
                min(configured, lowered.effective(now, self._restore_every, self._probe_after))
                for (name, _), lowered in self._table.items()
                if name == rule
            ),
            default=configured,
        )

    def forget(self, rule: str) -> None:
        """A rule removed by a config reload: what was learned for it goes too."""
        for key in [key for key in self._table if key[0] == rule]:
            del self._table[key]

    def status(self, now: float) -> list[dict[str, Any]]:
        """The lowered scopes, most lowered first (at most 10), for /status."""
        rows: list[dict[str, Any]] = [
            {
                "rule": rule,
                "scope": lowered.label,
                "limit": lowered.configured,
                "effective": min(
                    lowered.configured, lowered.effective(now, self._restore_every, self._probe_after)
                ),
                "refusals": lowered.refusals,
                "since_s": round(now - lowered.at, 3),
            }
            for (rule, _), lowered in self._table.items()
        ]
        rows.sort(key=lambda row: float(row["effective"]) / float(row["limit"]))
        return rows[:10]

    def __len__(self) -> int:
        return len(self._table)
