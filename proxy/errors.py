"""One error module: local failures as exceptions that know their exchange code, and the one function
that turns any of them into the exchange's own error payload plus `X-Seawall`.

Bots handle exchange errors by code, so a local answer uses the exchange's payload, code and HTTP status
from the table (`proxy/catalog.py`); `X-Seawall` names the policy that answered.
"""

from __future__ import annotations

import math

import orjson
from multidict import CIMultiDict

from proxy.answer import Answer
from proxy.catalog import ErrorCatalog, default_catalog


class SeawallError(Exception):
    """A request Seawall answers itself. Subclasses fix the exchange code and the `X-Seawall` policy."""

    code: int = -1000
    policy: str = "internal-error"
    outcome: str = "rejected"  # the `outcome` label of seawall_requests_total

    cause: str | None = None  # what went wrong, as a metric label (`seawall_upstream_errors_total`)

    def __init__(
        self,
        detail: str = "",
        *,
        retry_after: float | None = None,
        code: int | None = None,
        cause: str | None = None,
    ):
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after
        if code is not None:
            self.code = code
        if cause is not None:
            self.cause = cause


class BadRequest(SeawallError):
    """Malformed or refused request (absolute-form target, CONNECT, oversize or unreadable body)."""

    code = -1005
    policy = "bad-request"


class UpstreamUnavailable(SeawallError):
    """The exchange could not be reached, or did not answer in time."""

    code = -1011
    policy = "upstream-unavailable"
    outcome = "upstream_error"


class UpstreamUnreached(UpstreamUnavailable):
    """No connection to the exchange could be made: nothing was sent, so it cannot have acted on it."""


class Congested(SeawallError):
    """Seawall's own congestion: no upstream connection came free in time, or the request's deadline was
    spent queueing so that too little was left to send it. Nothing was sent: transient, and never news
    about the exchange (breakers do not count it). `cause`: `pool_timeout`, `deadline`, or
    `local_resources` (Seawall out of file descriptors, memory or local ports to open a connection)."""

    code = -1003
    policy = "congested"
    outcome = "throttled"


class UpstreamInvalid(SeawallError):
    """The exchange answered with something Seawall cannot pass on (e.g. over the response size cap)."""

    code = -1000
    policy = "upstream-invalid"
    outcome = "upstream_error"


class RateLimited(SeawallError):
    code = -1003
    policy = "ratelimit"
    outcome = "throttled"


class CircuitOpen(SeawallError):
    code = -1011
    policy = "circuit-open"
    outcome = "circuit_open"


class DedupConflict(SeawallError):
    code = -1007
    policy = "dedup-conflict"


class StateUnavailable(SeawallError):
    """Shared state (Redis) is gone and the config says to fail closed."""

    code = -1003
    policy = "state-unavailable"
    outcome = "throttled"


def local_answer(error: SeawallError, catalog: ErrorCatalog | None = None) -> Answer:
    """The exchange-format answer for a local failure: `{"success": false, "code", "message"}`."""
    catalog = catalog or default_catalog()
    if error.code in catalog:
        entry = catalog[error.code]
        status, name, message = entry.status, entry.name, entry.message
    else:  # a code outside the table (only reachable through config): a generic 400
        status, name, message = 400, "UNLISTED", "Request refused."
    if error.detail:
        message = f"{message} (seawall: {error.detail})"
    body = orjson.dumps({"success": False, "code": error.code, "message": message})
    headers = CIMultiDict({"Content-Type": "application/json;charset=utf-8", "X-Seawall": error.policy})
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    return Answer(status, headers, body, source="local", code=error.code, name=name)
