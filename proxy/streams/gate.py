"""The streams' front door on the proxy listener: which upgrade requests are streams, and the aiohttp
server each accepted one is handed to.

How a bot's WebSocket is served with aiohttp on Seawall's own HTTP server, through public API only: the
listener reads the handshake (its deadlines, caps and checks apply as to any request), and `accept`
answers with a protocol factory — a per-connection `aiohttp.web.Server`, the low-level server's public
protocol factory. The HTTP server moves the connection to that protocol (`transport.set_protocol`) and
replays the request head into it; aiohttp parses it again, and the handler upgrades it with
`web.WebSocketResponse.prepare`, which does the handshake, framing, masking, fragments, pings and the
close handshake. A refusal decided here (a path id over its cap, a malformed handshake) is an ordinary
HTTP answer in the exchange's format, given by the listener before anything is taken over.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDictProxy

from proxy.catalog import ErrorCatalog
from proxy.config import SeawallConfig
from proxy.errors import BadRequest, SeawallError
from proxy.logs import log
from proxy.metrics import Metrics
from proxy.streams.dial import Dialer
from proxy.streams.fanout import PublicHub
from proxy.streams.private import PrivateBridge

PUBLIC = "public"
PRIVATE = "private"
STOP_TIMEOUT = 2.0
# aiohttp re-parses the head the listener already accepted: its own caps must not be tighter.
MAX_LINE = 16 * 1024
MAX_FIELD = 64 * 1024
MAX_HEADERS = 256


def stream_host(configured: str | None, upstream_url: str) -> str:
    """The stream host: as configured, else upstream.url's host with ws:// for http://, wss:// for https://."""
    if configured is not None:
        return configured
    return "ws" + upstream_url.removeprefix("http")


@dataclass(frozen=True, slots=True)
class Accepted:
    """An upgrade request taken over: the connection goes to `protocol()`; `abandoned` is called instead
    if the client is gone before that."""

    protocol: Callable[[], asyncio.Protocol]
    abandoned: Callable[[], None]


class StreamGate:
    def __init__(self, config: SeawallConfig, metrics: Metrics, catalog: ErrorCatalog) -> None:
        streams = config.streams
        self.config = streams
        self._prefixes = {
            PUBLIC: streams.public_path.removesuffix("{id}"),
            PRIVATE: streams.private_path.removesuffix("{id}"),
        }
        self.public_host = stream_host(streams.public_url, config.upstream.url)
        self.private_host = stream_host(streams.private_url, config.upstream.url)
        self.dialer = Dialer(streams, metrics, config.upstream.ca_file)
        self.public = PublicHub(streams, self._public_url, self.dialer, metrics)
        self.private = PrivateBridge(streams, self.private_host, self.dialer, metrics, catalog)

    def _public_url(self, stream_id: str) -> str:
        return self.public_host + self._prefixes[PUBLIC] + stream_id

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.dialer.start()
        self.public.start()

    async def stop(self) -> None:
        """Close every stream (bots get 1001), then the upstream connections."""
        await self.private.stop(STOP_TIMEOUT)
        await self.public.stop(STOP_TIMEOUT)
        await self.dialer.close()

    def status(self) -> dict[str, Any]:
        return {
            "public": {"upstream": self.public_host, **self.public.status()},
            "private": {"upstream": self.private_host, **self.private.status()},
            "connects_in_window": self.dialer.admission.reserved,
        }

    # -- the listener's question -------------------------------------------------------------------
    def match(self, path: str) -> tuple[str, str] | None:
        """(kind, stream id) for a stream path, else None."""
        for kind, prefix in self._prefixes.items():
            if path.startswith(prefix) and len(path) > len(prefix):
                return kind, path[len(prefix) :]
        return None

    def accept(
        self, method: str, path: str, headers: CIMultiDictProxy[str]
    ) -> Accepted | SeawallError | None:
        """For an upgrade request: None if `path` is no stream (it is forwarded as before); an error to
        answer it with; or the connection's new owner."""
        matched = self.match(path)
        if matched is None:
            return None
        kind, stream_id = matched
        if (
            method != "GET"
            or headers.get("Upgrade", "").lower() != "websocket"
            or headers.get("Sec-WebSocket-Version") != "13"
            or not headers.get("Sec-WebSocket-Key")
        ):
            return BadRequest("a WebSocket handshake expected: GET, Upgrade: websocket, version 13 and a key")
        if kind == PRIVATE:
            ticket = self.private.reserve(stream_id)
            if isinstance(ticket, SeawallError):
                return ticket
            return Accepted(
                self._serving(lambda request: self.private.serve(request, ticket)), ticket.release
            )
        return Accepted(self._serving(lambda request: self.public.serve(request, stream_id)), _nothing)

    def _serving(
        self, handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
    ) -> Callable[[], asyncio.Protocol]:
        async def serve(request: web.BaseRequest) -> web.StreamResponse:
            try:
                return await handler(request)
            except Exception:  # a bug costs this stream, never the listener
                log.exception("stream failed")
                raise

        # One low-level server per connection: it serves exactly the request replayed into it.
        return web.Server(
            serve,
            access_log=None,
            keepalive_timeout=0,
            max_line_size=MAX_LINE,
            max_field_size=MAX_FIELD,
            max_headers=MAX_HEADERS,
        )


def _nothing() -> None:
    pass
