"""`seawall simulate`'s WebSocket part: what `--help` says about the streams, and their options.

Every option maps to one `StreamSettings` field and both streams (public and private) share them.
"""

from __future__ import annotations

import argparse
from typing import Any

from proxy.simulator.stream_socket import StreamSettings

STREAMS = """\
streams (WebSocket, on the same port; ccxt.pro appends the id to urls.api.ws.public / .private):
  public   ws://HOST:PORT/ws/stream/{id}                 id: the Orderly account id / WOO X application id
           No auth. Topics {symbol}@orderbook, @orderbookupdate, @ticker, @trade.
  private  ws://HOST:PORT/v2/ws/private/stream/{id}      id: the account id (the woox demo's: its API key)
           First {"id": "1", "event": "auth", "params": {...}}, signed over the bare timestamp (ms):
             orderly  {"orderly_key": "ed25519:...", "timestamp": TS, "sign": base64(ed25519(TS))}
                      (or in the URL: ?orderly_key=...&timestamp=...&sign=...)
             woox     {"apikey": KEY, "timestamp": TS, "sign": hex(HMAC-SHA256(secret, "|" + TS))}
           The key must belong to the account {id} names, the timestamp be within 300 s. Answer
           {"event": "auth", "success": true}; a refusal says "errorMsg": "auth failed" and closes the
           connection. A subscribe before auth is answered "Auth is needed.".
           Topics: executionreport (orderly: "params": {"symbol": "PERP_ETH_USDC,..."} narrows it),
           balance, position; algoexecutionreport (orderly) / algoexecutionreportv2 (woox) are
           accepted and stay silent (the simulator has no algo orders). Every order change of the
           account (placed, cancelled, filled) pushes an executionreport, then a balance; a fill of a
           perpetual also a position.
  Both: the server sends {"event": "ping"} every --stream-ping-interval and closes a connection that
  left --stream-max-missed-pongs in a row unanswered; {"event": "ping"} gets {"event": "pong"}. More
  than --stream-max-connections per id and per stream is refused (HTTP 429, -1003). Counters:
  GET /__sim/counters, sections "stream" and "private_stream".
"""

_DEFAULTS = StreamSettings()
# option -> (StreamSettings field, type, help)
_OPTIONS: dict[str, tuple[str, type, str]] = {
    "--stream-ping-interval": ("ping_interval", float, "seconds between server pings"),
    "--stream-max-missed-pongs": ("max_missed_pongs", int, "unanswered pings in a row before a close"),
    "--stream-max-connections": ("max_connections_per_id", int, "open connections per id and stream"),
    "--stream-queue-limit": ("queue_limit", int, "pending messages before a slow reader is closed"),
    "--stream-orderbook-interval": ("orderbook_interval", float, "seconds between @orderbook pushes"),
    "--stream-update-interval": ("update_interval", float, "seconds between @orderbookupdate pushes"),
    "--stream-ticker-interval": ("ticker_interval", float, "seconds between @ticker pushes"),
}


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text!r}")
        return value

    return parse


def add_stream_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("streams (see below)")
    for option, (name, kind, text) in _OPTIONS.items():
        default = getattr(_DEFAULTS, name)
        group.add_argument(
            option,
            dest=name,
            type=_positive(kind),
            default=default,
            metavar="SECONDS" if kind is float else "N",
            help=f"{text} (default {default})",
        )


def stream_settings(args: argparse.Namespace) -> StreamSettings:
    return StreamSettings(**{name: getattr(args, name) for name, _, _ in _OPTIONS.values()})


def stream_urls(base_url: str) -> str:
    ws = "ws" + base_url.removeprefix("http")
    return f"{ws}/ws/stream/{{id}} (public), {ws}/v2/ws/private/stream/{{id}} (private)"
