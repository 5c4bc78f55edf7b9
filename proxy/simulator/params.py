"""Reading request parameters the way the exchange validates them (-1004 unknown, -1005 malformed).

Values may arrive as JSON numbers/booleans or as strings (form bodies, and ccxt sends prices as
strings even in JSON), so every reader accepts both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from proxy.simulator.errors import SimError

# ccxt adds these to placements when not in sandbox mode (docs/exchanges.md): tolerated everywhere.
TOLERATED = frozenset({"broker_id", "brokerId"})


def check_known(params: Mapping[str, Any], allowed: Iterable[str]) -> None:
    unknown = sorted(set(params) - set(allowed) - TOLERATED)
    if unknown:
        raise SimError(-1004, f"An unknown parameter was sent: {', '.join(unknown)}.")


def text(params: Mapping[str, Any], name: str, *, required: bool = False) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise SimError(-1005, f"{name} must not be blank")
        return None
    if isinstance(value, dict | list):
        raise SimError(-1005, f"{name} must be a string")
    return str(value)


def decimal(params: Mapping[str, Any], name: str, *, required: bool = False) -> Decimal | None:
    """A positive finite number, or None when absent and optional."""
    raw = text(params, name, required=required)
    if raw is None:
        return None
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise SimError(-1005, f"{name} must be a positive number") from None
    if not value.is_finite() or value <= 0:
        raise SimError(-1005, f"{name} must be a positive number")
    return value


def ratio(params: Mapping[str, Any], name: str, default: str) -> Decimal:
    raw = text(params, name) or default
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise SimError(-1005, f"{name} must be a number") from None
    if not value.is_finite():
        raise SimError(-1005, f"{name} must be a number")
    return value


def integer(params: Mapping[str, Any], name: str, *, required: bool = False) -> int | None:
    raw = text(params, name, required=required)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise SimError(-1005, f"{name} must be an integer") from None


def boolean(params: Mapping[str, Any], name: str) -> bool:
    value = params.get(name)
    if value is None or isinstance(value, bool):
        return bool(value)
    if str(value).lower() in ("true", "false"):
        return str(value).lower() == "true"
    raise SimError(-1005, f"{name} must be true or false")


def choice(params: Mapping[str, Any], name: str, options: Iterable[str]) -> str:
    value = (text(params, name, required=True) or "").upper()
    allowed = sorted(options)
    if value not in allowed:
        raise SimError(-1005, f"{name} must be one of {', '.join(allowed)}")
    return value


def number(value: Decimal | None) -> float | None:
    """Decimal -> JSON number (the exchanges answer prices and quantities as JSON numbers)."""
    return None if value is None else float(value)
