"""Upstream answer -> exchange error code and name.

Every answer is read for the exchange's error payload `{"success": false, "code": <int>, "message"}`.
Real exchanges sometimes send the code as a string and vary key order and spacing (docs/exchanges.md),
so the body is parsed rather than pattern-matched; a cheap byte check skips the parse for the bulk of
answers, successes, which carry no `false` at all or a 2xx status without an error code.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.catalog import UNLISTED, ErrorCatalog

# A non-JSON answer is classified by its HTTP status: only the statuses the table gives one code.
_CODE_BY_STATUS = {429: -1003, 409: -1007, 500: -1000}


def classify(status: int, body: bytes, catalog: ErrorCatalog) -> tuple[int | None, str | None]:
    """Return (code, name) for an error answer, (None, None) for a success."""
    code = _payload_code(body) if (b"false" in body or b'"code"' in body) else None
    if code is not None:
        return code, catalog.name_of(code)
    if status < 400:
        return None, None
    mapped = _CODE_BY_STATUS.get(status)
    if mapped is not None:
        return mapped, catalog.name_of(mapped)
    return None, f"HTTP_{status}" if 400 <= status <= 599 else UNLISTED


def _payload_code(body: bytes) -> int | None:
    try:
        payload: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(payload, dict) or payload.get("success") not in (False, "false"):
        return None
    raw = payload.get("code")
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str):
        try:
            return int(raw.strip())
        except ValueError:
            return None
    return None
