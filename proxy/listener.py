"""The proxy listener: a whole bot request in, a request context to the pipeline, its answer out.

It serves on Seawall's HTTP server (proxy/httpserver.py: deadlines, caps, framing) and adds what makes
it the exchange's front door: every method and path is the exchange's (no router), absolute-form targets
and CONNECT are refused so Seawall is never an open proxy, and every answer Seawall gives itself
(malformed HTTP included) is the exchange's error payload, recorded like any other request.

A WebSocket handshake on one of the exchange's stream paths is handed over to the streams
(proxy/streams/gate.py) on the same connection, so a bot reaches REST and streams by one base URL; any
other upgrade request is forwarded as a plain request, as before.
"""

from __future__ import annotations

from yarl import URL

from proxy.answer import Answer
from proxy.catalog import ErrorCatalog
from proxy.config import ServerConfig
from proxy.context import RequestContext
from proxy.errors import BadRequest, SeawallError, local_answer
from proxy.httpserver import Handover, Limits, Request
from proxy.pipeline import Pipeline
from proxy.recording import RequestRecorder
from proxy.routing import DEFAULT_ROUTE, RouteTable
from proxy.streams.gate import StreamGate


def proxy_limits(server: ServerConfig) -> Limits:
    return Limits(
        read_timeout=server.read_timeout,
        write_timeout=server.write_timeout,
        keepalive_timeout=server.keepalive_timeout,
        write_buffer_bytes=server.write_buffer_bytes,
        max_body_bytes=server.max_body_bytes,
    )


class ProxyListener:
    """The proxy listener's site: routes each request through the pipeline."""

    def __init__(
        self,
        server: ServerConfig,
        routes: RouteTable,
        pipeline: Pipeline,
        recorder: RequestRecorder,
        catalog: ErrorCatalog,
        streams: StreamGate | None = None,
    ) -> None:
        self.limits = proxy_limits(server)
        self._routes = routes
        self._pipeline = pipeline
        self._recorder = recorder
        self._catalog = catalog
        self._streams = streams

    def use_routes(self, routes: RouteTable) -> None:
        """New routes (a config reload): requests read from now on are matched against them."""
        self._routes = routes

    async def handle(self, request: Request) -> Answer | Handover:
        target = request.target
        if request.method == "CONNECT" or not target.startswith("/"):
            # Absolute-form targets and CONNECT would make Seawall an open proxy: refused, never sent.
            request.keep_alive = False
            return self.refuse(BadRequest("only origin-form requests to the exchange are proxied"), request)
        path, _, query = target.partition("?")
        if request.upgrade and self._streams is not None:
            taken = self._streams.accept(request.method, path, request.headers)
            if isinstance(taken, SeawallError):
                request.keep_alive = False
                return self.refuse(taken, request)
            if taken is not None:
                return Handover(taken.protocol, taken.abandoned)
        route, params = self._routes.match(request.method, decoded_path(path))
        keys = self._routes.scope_keys(route, params, request.headers, query, request.body)
        ctx = RequestContext(
            method=request.method,
            raw_path=target,
            headers=request.headers,
            body=request.body,
            client=request.peer,
            route=route,
            key=keys.key,
            key_name=keys.key_name,
            account=keys.account,
            symbol=keys.symbol,
            client_order_id=keys.client_order_id,
            units=keys.units,
            json_body=keys.json_body,
            started=request.received,  # the deadline counts from arrival, pipelined waits included
        )
        return await self._pipeline.handle(ctx)

    def refuse(self, error: SeawallError, request: Request) -> Answer:
        """The exchange-format answer for a request refused before the pipeline, counted and logged as
        one (the log line carries no byte of it: path "/")."""
        answer = local_answer(error, self._catalog)
        ctx = RequestContext(
            request.method,
            "/",
            request.headers,
            b"",
            request.peer,
            DEFAULT_ROUTE,
            outcome=error.outcome,
            started=request.received,
        )
        self._recorder.record(ctx, answer)
        return answer


def decoded_path(path: str) -> str:
    """The path routes are matched on: percent-decoded as aiohttp's `request.path` was (so `%2F` or
    `%41` cannot slip a request past its route's limits), without a fragment."""
    path = path.partition("#")[0]
    if "%" not in path:
        return path  # nearly every request: no URL object built
    return URL.build(path=path, encoded=True).path
