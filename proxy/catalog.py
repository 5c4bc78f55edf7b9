"""The exchange's error table as data: code -> HTTP status, name, messages.

Loaded once from `config/error-codes.yaml` (the seed table). Both the proxy and the simulator use it, so
a local answer and a simulated answer for the same code always agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from proxy.shipped import error_table_path

UNLISTED = "UNLISTED"


@dataclass(frozen=True, slots=True)
class ErrorEntry:
    code: int
    status: int
    name: str
    messages: tuple[str, ...]

    @property
    def message(self) -> str:
        return self.messages[0]


class ErrorCatalog:
    """Lookup of the exchange's error codes; unknown codes are named `UNLISTED`."""

    def __init__(self, entries: list[ErrorEntry]) -> None:
        self._by_code = {entry.code: entry for entry in entries}

    @classmethod
    def from_file(cls, path: Path) -> ErrorCatalog:
        rows = yaml.safe_load(path.read_text(encoding="utf-8"))
        return cls(
            [ErrorEntry(int(r["code"]), int(r["status"]), str(r["name"]), tuple(r["messages"])) for r in rows]
        )

    def __getitem__(self, code: int) -> ErrorEntry:
        return self._by_code[code]

    def __contains__(self, code: object) -> bool:
        return code in self._by_code

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._by_code.values())

    def name_of(self, code: int) -> str:
        entry = self._by_code.get(code)
        return entry.name if entry else UNLISTED

    def codes(self) -> list[int]:
        return sorted(self._by_code)


@cache
def default_catalog() -> ErrorCatalog:
    return ErrorCatalog.from_file(error_table_path())
