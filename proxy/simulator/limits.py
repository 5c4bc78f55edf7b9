"""The exchange's documented rate limits as strict sliding windows.

Guarantee: for every (rule, scope) at most `limit` requests are admitted in any interval of `window`
seconds — a log of admission times per key, never a token bucket (a bucket with burst N admits up to 2N
in some sliding window: docs/design.md, "Rate limiting"). The limiter also records, per rule, the largest
number of admitted requests seen in any window, and the largest number *attempted*, so a test can prove
a client (or a proxy) stayed within the budget.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

Scope = Literal["ip", "key", "account", "account_symbol"]


@dataclass(frozen=True, slots=True)
class LimitRule:
    """`limit` requests per `window` seconds per `scope` (the client address, the API key, the account,
    or the account and symbol together)."""

    name: str
    limit: int
    window: float
    scope: Scope


@dataclass(frozen=True, slots=True)
class Charge:
    """One request's claim on a rule: `cost` slots in the window of `scope_key`."""

    rule: str
    scope_key: str
    cost: int = 1


def apply_overrides(
    rules: Iterable[LimitRule], overrides: Mapping[str, int | tuple[int, float]] | None
) -> list[LimitRule]:
    """Replace limits by rule name: `{"order_create": 3}` or `{"order_create": (3, 0.5)}`."""
    result = []
    known = {rule.name for rule in rules}
    for name in overrides or {}:
        if name not in known:
            raise KeyError(f"unknown rate-limit rule {name!r}; known: {sorted(known)}")
    for rule in rules:
        override = (overrides or {}).get(rule.name)
        if isinstance(override, tuple):
            rule = replace(rule, limit=override[0], window=override[1])
        elif override is not None:
            rule = replace(rule, limit=override)
        result.append(rule)
    return result


class _Window:
    __slots__ = ("attempts", "max_admitted", "max_attempted", "stamps")

    def __init__(self) -> None:
        self.stamps: deque[float] = deque()
        self.attempts: deque[float] = deque()
        self.max_admitted = 0
        self.max_attempted = 0


class SlidingWindowLimiter:
    """All-or-none admission against several rules at once (a batch order counts as N placements)."""

    def __init__(self, rules: Iterable[LimitRule], clock: Callable[[], float] = time.monotonic) -> None:
        self.rules = {rule.name: rule for rule in rules}
        self._clock = clock
        self._windows: dict[tuple[str, str], _Window] = {}
        self._rejected: dict[str, int] = {}

    def admit(self, charges: Sequence[Charge]) -> LimitRule | None:
        """Admit the request and record it, or return the first rule it would break (nothing recorded
        as admitted then). A request counts in a window while it is younger than the window."""
        now = self._clock()
        windows = []
        for charge in charges:
            rule = self.rules[charge.rule]
            window = self._windows.setdefault((charge.rule, charge.scope_key), _Window())
            horizon = now - rule.window
            for log in (window.stamps, window.attempts):
                while log and log[0] <= horizon:
                    log.popleft()
            window.attempts.extend([now] * charge.cost)
            window.max_attempted = max(window.max_attempted, len(window.attempts))
            windows.append((rule, window, charge.cost))
        for rule, window, cost in windows:
            if len(window.stamps) + cost > rule.limit:
                self._rejected[rule.name] = self._rejected.get(rule.name, 0) + 1
                return rule
        for _rule, window, cost in windows:
            window.stamps.extend([now] * cost)
            window.max_admitted = max(window.max_admitted, len(window.stamps))
        return None

    def max_in_window(self) -> dict[str, int]:
        """Per rule: the most admitted requests any one scope had within one window length."""
        return self._per_rule(lambda window: window.max_admitted)

    def max_attempted_in_window(self) -> dict[str, int]:
        """Per rule: the most requests (admitted or refused) any one scope sent within one window."""
        return self._per_rule(lambda window: window.max_attempted)

    def rejected(self) -> dict[str, int]:
        return dict(self._rejected)

    def in_window(self, rule: str, scope_key: str) -> int:
        """Admitted requests currently inside the window of (rule, scope)."""
        window = self._windows.get((rule, scope_key))
        if window is None:
            return 0
        horizon = self._clock() - self.rules[rule].window
        return sum(1 for stamp in window.stamps if stamp > horizon)

    def reset(self) -> None:
        self._windows.clear()
        self._rejected.clear()

    def _per_rule(self, pick: Callable[[_Window], int]) -> dict[str, int]:
        result = dict.fromkeys(self.rules, 0)
        for (rule, _scope), window in self._windows.items():
            result[rule] = max(result[rule], pick(window))
        return result
