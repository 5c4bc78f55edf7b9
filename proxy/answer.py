"""What the pipeline returns for a bot request: an upstream answer, a local answer or a replay."""

from __future__ import annotations

from dataclasses import dataclass

from multidict import CIMultiDict


@dataclass(slots=True)
class Answer:
    status: int
    headers: CIMultiDict[str]
    body: bytes
    reason: str | None = None
    source: str = "upstream"  # upstream | local | replay
    code: int | None = None  # the exchange error code, when the answer is an error payload
    name: str | None = None  # the code's name from the table (UNLISTED if not in it)
    latency: float | None = None  # upstream round trip, seconds
