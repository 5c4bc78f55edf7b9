"""Method + path -> route, and the request context every route handler receives.

A route names an endpoint (``order.place``), says whether it needs a signature, and which rate-limit
rules it draws from with what cost (a batch order costs one create-order slot per order it carries).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.simulator.accounts import Account


@dataclass(slots=True)
class SimRequest:
    """One received request, raw bytes kept for signature checks, params parsed once.

    `params` merges the query with the form or JSON-object body; `body_error` is set when the body
    could not be parsed (handlers answer -1005 then); `json_body` holds a non-object JSON body."""

    method: str
    path: str
    target: str
    raw_query: str
    body: bytes
    headers: Mapping[str, str]
    remote: str
    params: dict[str, Any] = field(default_factory=dict)
    path_params: dict[str, str] = field(default_factory=dict)
    body_error: str | None = None
    account: Account | None = None
    api_key: str | None = None


Handler = Callable[[SimRequest], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class RuleUse:
    """Draw from limit rule `rule`; `cost` computes the slots a request takes (default 1)."""

    rule: str
    cost: Callable[[SimRequest], int] | None = None

    def cost_of(self, request: SimRequest) -> int:
        return 1 if self.cost is None else self.cost(request)


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    pattern: str
    name: str
    handler: Handler
    private: bool = True
    limits: tuple[RuleUse, ...] = ()


class Router:
    """Routes are tried in order; ``{name}`` in a pattern matches one path segment."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes
        self._compiled = [(route, _compile(route.pattern)) for route in routes]

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        for route, regex in self._compiled:
            if route.method != method:
                continue
            found = regex.fullmatch(path)
            if found:
                return route, found.groupdict()
        return None


def _compile(pattern: str) -> re.Pattern[str]:
    parts = re.split(r"(\{\w+\})", pattern)
    regex = "".join(f"(?P<{part[1:-1]}>[^/]+)" if part.startswith("{") else re.escape(part) for part in parts)
    return re.compile(regex)
