"""The types every layer shares: a request handler and the policy interface.

This module sits at the bottom of the house: at run time it imports nothing of the proxy (the names it
mentions are for type checkers only), so a policy depends on it and not on the pipeline, the forwarder or
the upstream client (as Starlette keeps its own in `starlette.types`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proxy.answer import Answer
    from proxy.context import RequestContext

Handler = Callable[["RequestContext"], Awaitable["Answer"]]
# (ready, name) or (ready, name, detail): a check may be ready yet degraded, and say so in `detail`.
Readiness = tuple[Any, ...]


class Policy:
    """A resilience policy: one async entry point, `handle`, that answers the request itself (raising a
    `SeawallError` or returning an `Answer`) or passes it on with `await call_next(ctx)`.

    The app drives every policy through the same lifecycle: `start` once before the first request,
    `close` once after the last; `ready` and `status` feed `/readyz` and `/status`. The defaults do
    nothing, so a policy overrides only what it has.
    """

    name: str = "policy"

    async def handle(self, ctx: RequestContext, call_next: Handler) -> Answer:
        raise NotImplementedError

    async def start(self) -> None:
        """Open what the policy needs (e.g. its shared state); called once, before serving."""

    async def close(self) -> None:
        """Release what `start` opened; called once, after the listeners drained."""

    def ready(self) -> Readiness | None:
        """A readiness check for `/readyz`, or None when the policy has none."""
        return None

    def status(self) -> dict[str, Any] | None:
        """What `/status` shows under the policy's name, or None."""
        return None
