"""Exchange-format failures: one exception carrying a table code, one function rendering it.

Every failure the simulator sends goes through `error_payload`, so its HTTP status always comes from the
seed table (config/error-codes.yaml) exactly as the real exchange's would (docs/exchanges.md).
"""

from __future__ import annotations

from typing import Any

from proxy.catalog import ErrorCatalog


class SimError(Exception):
    """A request the exchange refuses with `code`; `message` defaults to the table's first text."""

    def __init__(self, code: int, message: str | None = None) -> None:
        super().__init__(f"{code}: {message or ''}")
        self.code = code
        self.message = message


def error_payload(
    catalog: ErrorCatalog,
    code: int,
    message: str | None = None,
    *,
    status: int | None = None,
    code_as_string: bool = False,
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) for `code`. Real exchanges sometimes send the code as a string (ccxt records
    `"code":"-1011"`), hence `code_as_string`. A code outside the table is answered with 400."""
    entry = None
    if code in catalog:
        entry = catalog[code]
    text = message or (entry.message if entry else "Unknown error.")
    http_status = status or (entry.status if entry else 400)
    return http_status, {"success": False, "code": str(code) if code_as_string else code, "message": text}
