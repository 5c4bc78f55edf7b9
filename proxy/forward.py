"""The byte-exact upstream call: the strict point of cut-off between Seawall and the exchange.

Everything above this module works on the request context; this one turns it into the bytes the
exchange receives (the bot's request line target, headers and body as received, minus hop-by-hop
fields, with Host for the upstream) and the exchange's answer back into an `Answer`. The connection
pool and HTTP parsing live in proxy/upstream.py.
"""

from __future__ import annotations

import ssl
import time

from multidict import CIMultiDict, CIMultiDictProxy, istr
from yarl import URL

from proxy.answer import Answer
from proxy.config import UpstreamConfig
from proxy.context import RequestContext
from proxy.errors import BadRequest, UpstreamInvalid, UpstreamUnreached
from proxy.upstream import UpstreamAnswer, UpstreamClient

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


def end_to_end_headers(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> CIMultiDict[str]:
    """Copy headers without hop-by-hop fields (and those the Connection header names), keeping repeats."""
    copy = CIMultiDict(headers)  # a C-level copy; then drop the few fields present (hot path)
    _drop_hop_by_hop(copy)
    return copy


def _drop_hop_by_hop(headers: CIMultiDict[str]) -> None:
    for name in hop_by_hop_names(headers):
        headers.popall(name, None)


def hop_by_hop_names(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> frozenset[str]:
    """Lower-case names not to pass on: the fixed hop-by-hop set and what the Connection header(s) name."""
    named = headers.getall("Connection", ())
    if not named:
        return HOP_BY_HOP
    return HOP_BY_HOP | {token.strip().lower() for value in named for token in value.split(",")}


class Forwarder:
    """Sends a request context to the configured upstream over pooled keep-alive connections."""

    def __init__(self, upstream: UpstreamConfig) -> None:
        self._config = upstream
        self._url = URL(upstream.url)
        host = self._url.host
        assert host is not None and self._url.port is not None  # validated by the config model
        host = f"[{host}]" if ":" in host else host
        self._host_header = host if self._url.is_default_port() else f"{host}:{self._url.port}"
        self._client: UpstreamClient | None = None

    @property
    def ready(self) -> bool:
        return self._client is not None and not self._client.closed

    async def start(self) -> None:
        url = self._url
        assert url.host is not None and url.port is not None
        tls = None
        if url.scheme == "https":  # certificate and host name verified, against ca_file or the system's CAs
            tls = ssl.create_default_context(cafile=self._config.ca_file)
        self._client = UpstreamClient(
            url.host,
            url.port,
            tls=tls,
            limit=self._config.max_connections,
            connect_timeout=self._config.connect_timeout,
            max_body=self._config.max_response_bytes,
        )

    def stats(self) -> dict[str, int]:
        return self._client.stats() if self._client is not None else {}

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def send(self, ctx: RequestContext) -> Answer:
        client = self._client
        if client is None:
            raise UpstreamUnreached("proxy is shutting down")
        headers = ctx.forward_headers if ctx.forward_headers is not None else ctx.headers
        # The bot's framing decides whether a length goes out: an empty POST keeps its `Content-Length: 0`,
        # a GET without one gets none.
        framed = bool(ctx.body) or "Content-Length" in ctx.headers or "Transfer-Encoding" in ctx.headers
        head = request_head(
            ctx.method, ctx.raw_path, self._host_header, headers, len(ctx.body) if framed else None
        )
        started = time.monotonic()
        upstream = await client.request(head, ctx.body, ctx.method == "HEAD", self._config.timeout)
        latency = time.monotonic() - started
        status, reason, answer_headers = decode_answer_head(upstream)
        return Answer(status, answer_headers, upstream.body, reason, latency=latency)


def request_head(
    method: str, target: str, host: str, headers: CIMultiDictProxy[str] | CIMultiDict[str], length: int | None
) -> bytes:
    """The request line and header block, end-to-end headers in the bot's order and spelling."""
    drop = hop_by_hop_names(headers)
    parts = [f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"]
    for name, value in headers.items():
        if name.lower() not in drop:
            parts.append(f"{name}: {value}\r\n")
    if length is not None:
        parts.append(f"Content-Length: {length}\r\n")
    parts.append("\r\n")
    head = "".join(parts)
    lines = len(parts) + 1  # the first part holds two lines
    if head.count("\n") != lines or head.count("\r") != lines:
        # The listener's parser refuses CR/LF in a request already; this guards what policies add.
        raise BadRequest("a header carries a line break")
    # surrogateescape: bytes that are not UTF-8 go out exactly as the bot sent them (aiohttp's server
    # decoded them the same way).
    return head.encode("utf-8", "surrogateescape")


# Header names and reason phrases decoded once and shared: an exchange repeats the same few in every
# answer, and dedup keeps tens of thousands of answers. Measured in the memory soak (50k stored answers):
# fresh names per answer cost ~25 MiB of RSS. multidict keeps an `istr` key as given (a plain str it
# copies into a new istr each time), which is how aiohttp's own parser shares them.
_NAMES: dict[bytes, istr] = {}
_REASONS: dict[bytes, str] = {}
_SHARED_CAP = 1024  # made-up names from a misbehaving upstream cannot grow a cache past this


def _shared_name(raw: bytes) -> istr:
    name = _NAMES.get(raw)
    if name is None:
        name = istr(raw.decode("utf-8"))
        if len(_NAMES) < _SHARED_CAP:
            _NAMES[raw] = name
    return name


def _shared_reason(raw: bytes) -> str:
    reason = _REASONS.get(raw)
    if reason is None:
        reason = raw.decode("utf-8")
        if len(_REASONS) < _SHARED_CAP:
            _REASONS[raw] = reason
    return reason


def decode_answer_head(answer: UpstreamAnswer) -> tuple[int, str, CIMultiDict[str]]:
    """Status, reason and end-to-end headers of an upstream answer, as text for the listener."""
    try:
        reason = _shared_reason(answer.reason)
        pairs = [(_shared_name(name), value.decode("utf-8")) for name, value in answer.headers]
    except UnicodeDecodeError:
        raise UpstreamInvalid("the exchange sent a header that is not UTF-8") from None
    headers = CIMultiDict(pairs)
    _drop_hop_by_hop(headers)
    return answer.status, reason, headers
