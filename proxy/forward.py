"""The byte-exact upstream call: the strict point of cut-off between Seawall and the exchange.

Everything above this module works on the request context; this one sends the bot's bytes to the one
configured upstream and brings the exchange's bytes back. PITFALLS.md lists the aiohttp client traps
each line here avoids: URL re-quoting, auto headers, silent resends, transparent decompression.
"""

from __future__ import annotations

import time

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.answer import Answer
from proxy.config import UpstreamConfig
from proxy.context import RequestContext
from proxy.errors import UpstreamInvalid, UpstreamUnavailable, UpstreamUnreached

# RFC 9110 §7.6.1 hop-by-hop fields, plus what the client recomputes (length, framing, Host) and
# Expect (Seawall has the whole body already; forwarding it would make the client wait for a 100).
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Content-Length",
        "Host",
        "Expect",
    )
)
# Headers the aiohttp client would add on its own; the bot's own values (if any) still pass.
_NO_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


def end_to_end_headers(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> CIMultiDict[str]:
    """Copy headers without hop-by-hop fields (and those the Connection header names), keeping repeats."""
    copy = CIMultiDict(headers)  # a C-level copy; then drop the few fields present (hot path)
    named = copy.getall("Connection", ())
    for name in HOP_BY_HOP:
        if name in copy:
            del copy[name]
    for value in named:
        for token in value.split(","):
            copy.popall(token.strip(), None)
    return copy


class Forwarder:
    """One pooled keep-alive client session to the configured upstream; `send` is its only call."""

    def __init__(self, upstream: UpstreamConfig) -> None:
        self._config = upstream
        self._base = upstream.url
        self._session: aiohttp.ClientSession | None = None

    @property
    def ready(self) -> bool:
        return self._session is not None and not self._session.closed

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._config.max_connections, ttl_dns_cache=60, enable_cleanup_closed=True
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,  # a compressed answer stays compressed, with its own headers
            cookie_jar=aiohttp.DummyCookieJar(),  # a proxy keeps no cookies between bots
            # `connect` would include waiting for a pool slot; sock_connect is the TCP/TLS connect.
            timeout=aiohttp.ClientTimeout(
                total=self._config.timeout, sock_connect=self._config.connect_timeout
            ),
            skip_auto_headers=_NO_AUTO_HEADERS,
        )
        # aiohttp >= 3.9 silently resends GET/PUT/DELETE once after a dropped keep-alive connection;
        # each resend spends exchange budget the limiter never saw, and a PUT (order edit) goes twice.
        # There is no public switch; aiohttp's own TestClient sets this private flag the same way.
        self._session._retry_connection = False

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, ctx: RequestContext) -> Answer:
        if self._session is None:
            raise UpstreamUnavailable("proxy is shutting down")
        # encoded=True: the query reaches the exchange byte for byte (a re-quoted query breaks signatures).
        url = URL(self._base + ctx.raw_path, encoded=True)
        headers = ctx.forward_headers if ctx.forward_headers is not None else end_to_end_headers(ctx.headers)
        started = time.monotonic()
        try:
            async with self._session.request(
                ctx.method,
                url,
                headers=headers,
                data=ctx.body if ctx.body else None,
                allow_redirects=False,
            ) as response:
                body = await self._read_body(response)
                answer_headers = end_to_end_headers(response.headers)
                status, reason = response.status, response.reason
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError):
            # No connection, so nothing was sent: dedup may let a retry through (UpstreamUnreached).
            raise UpstreamUnreached("the exchange could not be reached") from None
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamUnavailable("the exchange did not answer in time") from None
        except aiohttp.ClientResponseError as exc:
            raise UpstreamInvalid(f"the exchange sent an invalid response ({exc.status})") from None
        except (aiohttp.ClientError, OSError):
            raise UpstreamUnavailable("the exchange could not be reached") from None
        return Answer(status, answer_headers, body, reason, latency=time.monotonic() - started)

    async def _read_body(self, response: aiohttp.ClientResponse) -> bytes:
        cap = self._config.max_response_bytes
        if response.content_length is not None and response.content_length <= cap:
            return await response.read()
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_any():
            size += len(chunk)
            if size > cap:
                raise UpstreamInvalid(f"the exchange's answer exceeds {cap} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
