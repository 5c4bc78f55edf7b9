"""The request context: one object that carries a bot request through the pipeline.

Route match fills it once (route, scope keys, raw bytes); policies read it instead of re-parsing the
request, and annotate it (outcome, identity) for the metrics and the log line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from proxy.routing import Route


@dataclass(slots=True)
class RequestContext:
    method: str
    raw_path: str  # path and query exactly as received (signatures are computed over these bytes)
    headers: CIMultiDictProxy[str]
    body: bytes
    client: str  # the bot's address
    route: Route
    key: str | None = None  # the API key: never logged; use `key_name`
    key_name: str | None = None  # alias or fingerprint, safe for logs
    account: str | None = None
    symbol: str | None = None
    client_order_id: str | None = None
    units: int = 1  # orders in a batch placement, else 1
    json_body: Any = None  # parsed JSON body, when the body is JSON
    forward_headers: CIMultiDict[str] | None = None  # set when a policy strips a header
    started: float = field(default_factory=time.monotonic)
    outcome: str = "forwarded"

    @property
    def path(self) -> str:
        return self.raw_path.split("?", 1)[0]

    def scope_value(self, dimension: str) -> str:
        """The value of one scope dimension (key, account, symbol, client, global) for this request."""
        if dimension == "key":
            return self.key or "-"
        if dimension == "account":
            return self.account or self.key or "-"
        if dimension == "symbol":
            return self.symbol or "-"
        if dimension == "client":
            return self.client
        return "*"

    def scope_name(self, dimension: str) -> str:
        """Like scope_value, but safe to show (keys appear as their fingerprint or alias)."""
        if dimension == "key" or (dimension == "account" and not self.account):
            return self.key_name or "-"
        return self.scope_value(dimension)
