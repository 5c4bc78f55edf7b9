"""The byte-exact upstream call: the strict point of cut-off between Seawall and the exchange.

Everything above this module works on the request context; this one turns it into the bytes the
exchange receives (the bot's request line target, headers and body as received, minus hop-by-hop
fields, with Host for the upstream) and the exchange's answer back into an `Answer`. The connection
pool and HTTP parsing live in proxy/upstream.py.

The request's deadline is `upstream.timeout` counted from its arrival (`ctx.started`): what the
rate-limit queue used is gone before the upstream client starts. Every failure is accounted for here:
Seawall's own congestion in `seawall_congestion_total{cause}` (and, when Seawall is out of local resources
to connect, a WARNING line that says so), the exchange's failures in `seawall_upstream_errors_total{cause}`,
a WARNING line (at most one per cause every LOG_INTERVAL seconds, with the count of those not logged) and
the last one in /status. Logs carry the upstream's host:port, the cause and the system's error text, never
request bytes.
"""

from __future__ import annotations

import resource
import ssl
import time
from collections.abc import Callable
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy, istr
from yarl import URL

from proxy.answer import Answer
from proxy.config import UpstreamConfig
from proxy.context import RequestContext
from proxy.errors import (
    BadRequest,
    Congested,
    SeawallError,
    UpstreamInvalid,
    UpstreamUnavailable,
    UpstreamUnreached,
)
from proxy.logs import log
from proxy.metrics import Metrics
from proxy.upstream import LOCAL_RESOURCES, UpstreamAnswer, UpstreamClient

# At most one WARNING line per cause in this many seconds: an unreachable exchange fails every request.
LOG_INTERVAL = 5.0

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


class LinesPerCause:
    """At most one log line per cause every `interval` seconds, and how many were held back meanwhile."""

    def __init__(self, interval: float, clock: Callable[[], float]) -> None:
        self._interval = interval
        self._clock = clock
        self._logged_at: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def admit(self, cause: str) -> int | None:
        """None: hold this line back. Else log it, with this count of lines of its cause held back."""
        now = self._clock()
        logged_at = self._logged_at.get(cause)
        if logged_at is not None and now - logged_at < self._interval:
            self._held[cause] = self._held.get(cause, 0) + 1
            return None
        self._logged_at[cause] = now
        return self._held.pop(cause, 0)


class UpstreamErrors:
    """The exchange's failures by cause: a metric, a rate-limited WARNING line, counts and the last one."""

    def __init__(
        self,
        metrics: Metrics,
        upstream: str,
        interval: float = LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metric = metrics.upstream_errors
        self._upstream = upstream  # host:port, safe to log
        self._lines = LinesPerCause(interval, clock)
        self._counts: dict[str, int] = {}
        self._last: dict[str, Any] | None = None

    def note(self, error: SeawallError) -> None:
        cause = error.cause
        if cause is None:  # not the exchange's doing (Seawall shutting down)
            return
        self._counts[cause] = self._counts.get(cause, 0) + 1
        self._metric.labels(cause).inc()
        message = describe(error)
        self._last = {"cause": cause, "message": message, "at": round(time.time(), 3)}
        held_back = self._lines.admit(cause)
        if held_back is None:
            return
        log.warning(
            "upstream error: %s",
            cause,
            extra={
                "fields": {
                    "upstream": self._upstream,
                    "cause": cause,
                    "error": message,
                    "suppressed": held_back,  # same cause, not logged since the last
                }
            },
        )

    def status(self) -> dict[str, Any]:
        return {"last": self._last, "counts": dict(self._counts)}


class Congestion:
    """Seawall's own congestion by cause (nothing was sent): a metric and counts for /status. Running out
    of local resources to connect (descriptors, kernel memory, ports) is also a rate-limited WARNING: it
    needs the operator, and it is Seawall's problem, not the exchange's."""

    def __init__(
        self,
        metrics: Metrics,
        upstream: str,
        interval: float = LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metric = metrics.congestion
        self._upstream = upstream
        self._lines = LinesPerCause(interval, clock)
        self._counts: dict[str, int] = {}

    def note(self, error: Congested) -> None:
        cause = error.cause or "pool_timeout"
        self._counts[cause] = self._counts.get(cause, 0) + 1
        self._metric.labels(cause).inc()
        if cause != LOCAL_RESOURCES:
            return  # the pool and the deadline at work: the metric says enough
        held_back = self._lines.admit(cause)
        if held_back is None:
            return
        log.warning(
            "seawall out of local resources: requests answered locally, not sent",
            extra={
                "fields": {
                    "upstream": self._upstream,
                    "cause": cause,
                    "error": describe(error),  # e.g. "[Errno 24] Too many open files"
                    "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                    "suppressed": held_back,
                }
            },
        )

    def status(self) -> dict[str, int]:
        return dict(self._counts)


def describe(error: SeawallError) -> str:
    """The error's own words, plus the system's (e.g. the TLS verification failure) when it has them.
    Neither ever contains request bytes."""
    reason = error.__cause__
    text = str(reason) if isinstance(reason, OSError) else ""
    return f"{error.detail}: {text}" if text else error.detail


class Forwarder:
    """Sends a request context to the configured upstream over pooled keep-alive connections."""

    def __init__(self, upstream: UpstreamConfig, metrics: Metrics) -> None:
        self._config = upstream
        self._timeout = upstream.timeout
        self._url = URL(upstream.url)
        host = self._url.host
        assert host is not None and self._url.port is not None  # validated by the config model
        host = f"[{host}]" if ":" in host else host
        self._host_header = host if self._url.is_default_port() else f"{host}:{self._url.port}"
        self._client: UpstreamClient | None = None
        self._errors = UpstreamErrors(metrics, f"{host}:{self._url.port}")
        self._congestion = Congestion(metrics, f"{host}:{self._url.port}")

    @property
    def ready(self) -> bool:
        return self._client is not None and not self._client.closed

    async def start(self) -> None:
        url, config = self._url, self._config
        assert url.host is not None and url.port is not None
        tls = None
        if url.scheme == "https":  # certificate and host name verified, against ca_file or the system's CAs
            tls = ssl.create_default_context(cafile=config.ca_file)
        self._client = UpstreamClient(
            url.host,
            url.port,
            tls=tls,
            limit=config.max_connections,
            connect_timeout=config.connect_timeout,
            max_body=config.max_response_bytes,
            pool_timeout=config.pool_timeout,
            answer_timeout=config.answer_timeout,
            min_send_time=config.min_send_time,
            request_timeout=config.timeout,
        )

    def stats(self) -> dict[str, int]:
        return self._client.stats() if self._client is not None else {}

    def error_status(self) -> dict[str, Any]:
        """For /status: the exchange's failures (last one, counts by cause)."""
        return self._errors.status()

    def congestion_status(self) -> dict[str, int]:
        """For /status: requests answered locally for Seawall's own congestion, by cause."""
        return self._congestion.status()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def send(self, ctx: RequestContext) -> Answer:
        """Forward within what is left of the request's deadline. `Answer.latency` is the exchange's
        time: from writing the request to the answer's last byte (no pool wait, no connect)."""
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
        head_request = ctx.method == "HEAD"
        left = self._timeout - (time.monotonic() - ctx.started)
        try:
            upstream = await client.request(head, ctx.body, head_request, left)
            status, reason, answer_headers = decode_answer_head(upstream, head_request)
        except Congested as error:
            self._congestion.note(error)
            raise
        except (UpstreamUnavailable, UpstreamInvalid) as error:
            self._errors.note(error)
            raise
        return Answer(status, answer_headers, upstream.body, reason, latency=upstream.latency)


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


def decode_answer_head(
    answer: UpstreamAnswer, head_request: bool = False
) -> tuple[int, str, CIMultiDict[str]]:
    """Status, reason and end-to-end headers of an upstream answer, as text for the listener.

    The listener frames the body it sends, so the answer's own framing fields are dropped, except a HEAD
    answer's Content-Length: it has no body to frame, and the length is what the bot asked for (aiohttp's
    server sends a HEAD answer's Content-Length as given)."""
    try:
        reason = _shared_reason(answer.reason)
        pairs = [(_shared_name(name), value.decode("utf-8")) for name, value in answer.headers]
    except UnicodeDecodeError:
        raise UpstreamInvalid("the exchange sent a header that is not UTF-8", cause="invalid") from None
    headers = CIMultiDict(pairs)
    drop = hop_by_hop_names(headers)
    if head_request:
        drop = drop - _HEAD_KEEPS
    for name in drop:
        headers.popall(name, None)
    return answer.status, reason, headers


_HEAD_KEEPS = frozenset({"content-length"})
