"""The proxy listener: HTTP in, request context to the pipeline, the answer back out.

A low-level aiohttp server (no router: every method and path is the exchange's). It adds what the
aiohttp server lacks for an internet-facing proxy (PITFALLS.md): a deadline for receiving a request's
headers and body, and refusal of absolute-form targets and CONNECT, so Seawall is never an open proxy.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from proxy.answer import Answer
from proxy.catalog import ErrorCatalog
from proxy.config import ServerConfig
from proxy.context import RequestContext
from proxy.errors import BadRequest, SeawallError, local_answer
from proxy.logs import log
from proxy.pipeline import Pipeline
from proxy.routing import DEFAULT_ROUTE, RouteTable


class _DeadlineRequestHandler(RequestHandler):
    """Closes a connection whose request headers do not arrive within the read timeout.

    The clock starts on connection and on the first byte of each new request; `ProxyListener.handle`
    stops it once aiohttp has parsed the headers (the body has its own deadline there). The server's
    sweep closes connections whose clock ran out: a timestamp per request instead of a timer each.
    """

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._seawall_busy = False
        self.seawall_started: float | None = self._loop.time()
        peer = transport.get_extra_info("peername")  # once per connection, not a syscall per request
        self.seawall_peer = str(peer[0]) if peer else "unknown"

    def data_received(self, data: bytes) -> None:
        if self.seawall_started is None and not self._seawall_busy:
            self.seawall_started = self._loop.time()
        super().data_received(data)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Answer HTTP aiohttp could not parse in the exchange's format, and log no raw bytes.

        aiohttp's own answer is plain text, and its log line quotes the offending bytes (which may be
        a header carrying a key): both are replaced here.
        """
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error answer")
        log.debug("malformed request refused", extra={"fields": {"status": status}})
        error = (
            BadRequest("malformed HTTP request")
            if status < 500
            else SeawallError("internal error in seawall")
        )
        response = to_response(local_answer(error))
        response.force_close()
        return response

    def set_busy(self, busy: bool) -> None:
        self._seawall_busy = busy
        if busy:
            self.seawall_started = None


class _DeadlineServer(web.Server):
    def __init__(self, *args: Any, read_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_timeout = read_timeout
        self._sweep: asyncio.TimerHandle | None = None

    def __call__(self) -> RequestHandler:
        if self._sweep is None:
            self._schedule_sweep()
        return _DeadlineRequestHandler(self, loop=self._loop, **self._kwargs)

    def _schedule_sweep(self) -> None:
        # A quarter of the timeout: a slow client is cut off between 1x and 1.25x the read timeout.
        self._sweep = self._loop.call_later(self._read_timeout / 4, self._close_late)

    def _close_late(self) -> None:
        deadline = self._loop.time() - self._read_timeout
        for handler in self.connections:
            started = getattr(handler, "seawall_started", None)
            if started is not None and started <= deadline:
                handler.force_close()
        self._schedule_sweep()

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - aiohttp signature
        if self._sweep is not None:
            self._sweep.cancel()
        await super().shutdown(timeout)


class ProxyListener:
    def __init__(
        self, server: ServerConfig, routes: RouteTable, pipeline: Pipeline, catalog: ErrorCatalog
    ) -> None:
        self._server_config = server
        self._routes = routes
        self._pipeline = pipeline
        self._catalog = catalog

    def make_server(self) -> web.Server:
        config = self._server_config
        return _DeadlineServer(
            self.handle,
            read_timeout=config.read_timeout,
            request_factory=None,
            handler_cancellation=False,  # a bot hanging up must not abandon an order mid-flight
            access_log=None,  # an access log halves throughput; requests are logged by the pipeline
            keepalive_timeout=config.keepalive_timeout,
            auto_decompress=False,  # a compressed request body is forwarded as received
            lingering_time=0,  # a refused request's unread body is not drained: the connection closes
        )

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        protocol = request.protocol
        if isinstance(protocol, _DeadlineRequestHandler):
            protocol.set_busy(True)
        try:
            return await self._handle(request)
        finally:
            if isinstance(protocol, _DeadlineRequestHandler):
                protocol.set_busy(False)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        raw_path = request.raw_path
        if request.method == "CONNECT" or not raw_path.startswith("/"):
            # Absolute-form targets and CONNECT would make Seawall an open proxy: refused, never sent.
            return self._refuse(
                request, BadRequest("only origin-form requests to the exchange are proxied"), close=True
            )
        try:
            if request.body_exists:
                async with asyncio.timeout(self._server_config.read_timeout):
                    body = await self._read_body(request)
            else:  # most requests (GET, DELETE with a query) have no body: no timer, no reader
                body = b""
        except TimeoutError:
            return self._refuse(request, BadRequest("request body not received in time"), close=True)
        except BadRequest as error:
            return self._refuse(request, error, close=True)
        route, params = self._routes.match(request.method, request.path)
        query = raw_path.partition("?")[2]
        keys = self._routes.scope_keys(route, params, request.headers, query, body)
        ctx = RequestContext(
            method=request.method,
            raw_path=raw_path,
            headers=request.headers,
            body=body,
            client=_peer(request),
            route=route,
            key=keys.key,
            key_name=keys.key_name,
            account=keys.account,
            symbol=keys.symbol,
            client_order_id=keys.client_order_id,
            units=keys.units,
            json_body=keys.json_body,
        )
        answer = await self._pipeline.handle(ctx)
        return to_response(answer)

    async def _read_body(self, request: web.BaseRequest) -> bytes:
        limit = self._server_config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise BadRequest(f"request body over the {limit}-byte limit")
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise BadRequest(f"request body over the {limit}-byte limit")
                chunks.append(chunk)
        except (ConnectionError, RequestPayloadError, web.HTTPException):
            raise BadRequest("request body could not be read") from None
        return b"".join(chunks)

    def _refuse(self, request: web.BaseRequest, error: BadRequest, close: bool = False) -> web.Response:
        answer = local_answer(error, self._catalog)
        ctx = RequestContext(
            request.method, "/", request.headers, b"", _peer(request), DEFAULT_ROUTE, outcome=error.outcome
        )
        self._pipeline.record(ctx, answer)
        response = to_response(answer)
        if close:
            response.force_close()
        return response


def _peer(request: web.BaseRequest) -> str:
    cached = getattr(request.protocol, "seawall_peer", None)
    if cached is not None:
        return str(cached)
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return str(peer[0]) if peer else "unknown"


def to_response(answer: Answer) -> web.Response:
    return web.Response(status=answer.status, reason=answer.reason, headers=answer.headers, body=answer.body)
