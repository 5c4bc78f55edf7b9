"""Opening upstream WebSocket connections with aiohttp's client: admitted by the connect rate, bounded by
`streams.handshake_timeout`, each counted in `seawall_ws_upstream_connects_total{result}`.

The client never reuses a connection (`force_close`): aiohttp silently resends a GET over a fresh
connection when a pooled one turns out closed, which here would be a handshake the connect rate never saw.
"""

from __future__ import annotations

import asyncio
import ssl

import aiohttp
from yarl import URL

from proxy.config import StreamsConfig
from proxy.logs import log
from proxy.metrics import Metrics
from proxy.streams.admission import ConnectAdmission, ConnectThrottled

Upstream = aiohttp.ClientWebSocketResponse[bool]


class HandshakeRefused(Exception):
    """The exchange answered the handshake with an error status (e.g. 429 over its connection cap)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"the exchange refused the stream handshake with HTTP {status}")
        self.status = status


class HandshakeFailed(Exception):
    """No stream connection could be made (unreachable, TLS, timed out)."""


class Dialer:
    def __init__(self, config: StreamsConfig, metrics: Metrics, ca_file: str | None = None) -> None:
        self._config = config
        self._metrics = metrics
        self._ssl: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
        self.admission = ConnectAdmission(config.connects.limit, config.connects.window)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        self._session = aiohttp.ClientSession(connector=connector)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def dial(self, url: str, kind: str, *, max_wait: float | None, heartbeat: bool) -> Upstream:
        """A connected upstream WebSocket. Text arrives as bytes (passed on as received). `heartbeat`:
        aiohttp pings it every `ping_interval` and closes it if the pong does not come (a dead link is
        noticed even when the exchange is quiet); without it, pings are left to the two ends.

        Raises ConnectThrottled (not attempted), HandshakeRefused or HandshakeFailed."""
        config = self._config
        connects = self._metrics.ws_upstream_connects
        try:
            await self.admission.admit(max_wait)
        except ConnectThrottled:
            connects.labels("throttled").inc()
            raise
        if self._session is None:
            raise HandshakeFailed("streams are stopped")
        try:
            async with asyncio.timeout(config.handshake_timeout):
                upstream = await self._session.ws_connect(
                    URL(url, encoded=True),  # as given: a string would be re-quoted (a signed query!)
                    autoping=heartbeat,  # without the heartbeat, pings and pongs pass through
                    heartbeat=config.ping_interval if heartbeat else None,
                    timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
                    max_msg_size=config.max_message_bytes,
                    decode_text=False,
                    ssl=self._ssl,
                )
        except aiohttp.WSServerHandshakeError as error:
            connects.labels("refused").inc()
            log.warning(
                "stream handshake refused by the exchange",
                extra={"fields": {"kind": kind, "status": error.status}},
            )
            raise HandshakeRefused(error.status) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            connects.labels("failed").inc()
            log.warning(
                "stream connection to the exchange failed",
                extra={"fields": {"kind": kind, "error": type(error).__name__}},
            )
            raise HandshakeFailed(type(error).__name__) from None
        connects.labels("ok").inc()
        self._metrics.ws_connections.labels("upstream", kind).inc()
        return upstream

    def closed(self, kind: str) -> None:
        """An upstream connection `dial` returned has ended."""
        self._metrics.ws_connections.labels("upstream", kind).dec()
