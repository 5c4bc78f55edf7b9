"""What Seawall reads in a stream frame and the messages it writes itself, in the exchanges' shape.

Orderly's `/ws/stream/{account_id}` and WOO X's `/ws/stream/{application_id}` share the protocol:
`{"id", "event": "subscribe"|"unsubscribe", "topic"}` in, `{"id", "event", "success", "ts"}` back
(`errorMsg` on failure; an unsubscribe answer names its topic in `data`), `{"event": "ping"}` and
`{"event": "pong", "ts"}` both ways, pushes `{"topic": "<symbol>@<kind>", "ts", "data"}`.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

# Close codes Seawall sends a bot (RFC 6455 §7.4; 1012-1014 from the IANA registry).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # Seawall is shutting down
CLOSE_UPSTREAM_LOST = 1012  # "service restart": the exchange's side ended; reconnect
CLOSE_TOO_SLOW = 1013  # "try again later": the bot did not read its frames
# Codes that say something happened but may never be sent in a close frame.
_UNSENDABLE = frozenset({1005, 1006, 1015})

# Topic kinds named in metrics; any other is "other", so a bot cannot grow the label set.
KNOWN_KINDS = frozenset(
    {
        "orderbook",
        "orderbookupdate",
        "ticker",
        "trade",
        "bbo",
        "kline",
        "markprice",
        "indexprice",
        "openinterest",
        "estfundingrate",
    }
)


def now_ms() -> int:
    return int(time.time() * 1000)


def parse(frame: bytes) -> dict[str, Any] | None:
    """A frame's JSON object, or None when it is not one."""
    try:
        message = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    return message if isinstance(message, dict) else None


def encode(message: dict[str, Any]) -> bytes:
    return orjson.dumps(message)


def answer(
    event: str, request_id: Any, *, ts: int | None = None, error: str | None = None, topic: str | None = None
) -> bytes:
    """An answer to a command, as the exchange words it."""
    message: dict[str, Any] = {"id": request_id, "event": event, "success": error is None}
    message["ts"] = now_ms() if ts is None else ts
    if topic is not None:
        message["data"] = topic
    if error is not None:
        message["errorMsg"] = error
    return encode(message)


def with_id(message: dict[str, Any], request_id: Any) -> bytes:
    """`message` re-addressed: the same fields, the bot's own request id."""
    return encode({"id": request_id, **{key: value for key, value in message.items() if key != "id"}})


def ping() -> bytes:
    return encode({"event": "ping", "ts": now_ms()})


def pong() -> bytes:
    return encode({"event": "pong", "ts": now_ms()})


def topic_kind(topic: str) -> str:
    """The metric label of a topic: `SPOT_BTC_USDT@orderbook` -> orderbook; `x@kline_1m` -> kline."""
    kind = topic.rpartition("@")[2].partition("_")[0]
    return kind if kind in KNOWN_KINDS else "other"


def sendable_close(code: int | None, fallback: int) -> int:
    """`code` if a close frame may carry it, else `fallback` (an abnormal end has no code to pass on)."""
    if code is None or code in _UNSENDABLE or not 1000 <= code <= 4999:
        return fallback
    return code
