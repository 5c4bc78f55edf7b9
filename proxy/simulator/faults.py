"""Injected faults: what an exchange incident looks like from the client's side.

A fault matches requests by path and/or route-name patterns (fnmatch: ``/v1/order``, ``order.*``) and
methods, and lasts for the next `count` matching requests, for `duration` seconds, or until cleared.
Kinds (what a proxy must survive; docs/exchanges.md):
- ``error``: answer `code` (default -1011) with the table's status, without touching the book;
- ``latency``: add `delay` seconds, then proceed (stacks with other faults);
- ``reset``: drop the connection without an answer;
- ``garbage``: a non-JSON body (default HTML with 502, as a gateway in front of the exchange sends);
- ``hang``: never answer (the client's timeout must fire);
- ``lose_answer``: process the request (the order IS created), then drop the connection or answer 504
  without a body — the case that makes blind placement retries create duplicates.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Literal, cast

FaultKind = Literal["error", "latency", "reset", "garbage", "hang", "lose_answer"]
KINDS: tuple[str, ...] = ("error", "latency", "reset", "garbage", "hang", "lose_answer")
DEFAULT_GARBAGE = "<html><head><title>502 Bad Gateway</title></head><body>502 Bad Gateway</body></html>"


@dataclass(slots=True)
class Fault:
    kind: FaultKind
    code: int = -1011
    message: str | None = None
    status: int | None = None
    code_as_string: bool = False
    paths: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    count: int | None = None
    duration: float | None = None
    delay: float = 0.0
    lose_mode: Literal["reset", "504"] = "reset"
    body: str | None = None
    id: str = ""
    installed_at: float = 0.0
    matched: int = field(default=0)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fault:
        """Build from control-API JSON; raises ValueError naming the bad field."""
        allowed = {
            "kind",
            "code",
            "message",
            "status",
            "code_as_string",
            "paths",
            "routes",
            "methods",
            "count",
            "duration",
            "delay",
            "lose_mode",
            "body",
        }
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        kind = data.get("kind")
        if kind not in KINDS:
            raise ValueError(f"'kind' must be one of {KINDS}")
        lose_mode = data.get("lose_mode", "reset")
        if lose_mode not in ("reset", "504"):
            raise ValueError("'lose_mode' must be 'reset' or '504'")
        count = data.get("count")
        if count is not None and (not isinstance(count, int) or count < 1):
            raise ValueError("'count' must be a positive integer")
        return cls(
            kind=cast(FaultKind, kind),
            code=int(data.get("code", -1011)),
            message=data.get("message"),
            status=None if data.get("status") is None else int(data["status"]),
            code_as_string=bool(data.get("code_as_string", False)),
            paths=tuple(_as_list(data.get("paths"))),
            routes=tuple(_as_list(data.get("routes"))),
            methods=tuple(m.upper() for m in _as_list(data.get("methods"))),
            count=count,
            duration=None if data.get("duration") is None else float(data["duration"]),
            delay=float(data.get("delay", 0.0)),
            lose_mode=cast(Literal["reset", "504"], lose_mode),
            body=data.get("body"),
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("paths", "routes", "methods"):
            data[key] = list(data[key])
        return data

    def matches(self, method: str, path: str, route: str) -> bool:
        return (
            (not self.methods or method in self.methods)
            and (not self.paths or any(fnmatchcase(path, p) for p in self.paths))
            and (not self.routes or any(fnmatchcase(route, r) for r in self.routes))
        )


def _as_list(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [str(item) for item in value]
    raise ValueError("paths/routes/methods must be a string or a list of strings")


@dataclass(slots=True)
class FaultPlan:
    """What to do to one request: wait `delay`, then apply `terminal` (if any)."""

    delay: float = 0.0
    terminal: Fault | None = None


class FaultInjector:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._faults: list[Fault] = []
        self._ids = itertools.count(1)
        self.applied: dict[str, int] = {}

    def add(self, fault: Fault) -> str:
        fault.id = fault.id or f"f{next(self._ids)}"
        fault.installed_at = self._clock()
        self._faults.append(fault)
        return fault.id

    def remove(self, fault_id: str) -> bool:
        before = len(self._faults)
        self._faults = [f for f in self._faults if f.id != fault_id]
        return len(self._faults) != before

    def clear(self) -> None:
        self._faults.clear()

    def active(self) -> list[Fault]:
        self._expire()
        return list(self._faults)

    def plan(self, method: str, path: str, route: str) -> FaultPlan:
        """Consume one use of every matching fault and say what happens to this request."""
        self._expire()
        plan = FaultPlan()
        for fault in self._faults:
            if not fault.matches(method, path, route):
                continue
            if fault.kind != "latency" and plan.terminal is not None:
                continue  # the first terminal fault wins; later ones keep their uses
            fault.matched += 1
            if fault.count is not None:
                fault.count -= 1
            self.applied[fault.kind] = self.applied.get(fault.kind, 0) + 1
            if fault.kind == "latency":
                plan.delay += fault.delay
            else:
                plan.terminal = fault
        self._expire()
        return plan

    def _expire(self) -> None:
        now = self._clock()
        self._faults = [
            f
            for f in self._faults
            if (f.count is None or f.count > 0) and (f.duration is None or now - f.installed_at < f.duration)
        ]
