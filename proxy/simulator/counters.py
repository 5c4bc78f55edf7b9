"""What the simulator saw: answers by code and status, requests per path and route.

Together with the limiter's max-in-window figures and the book's orders per (account, client_order_id),
these let a test prove what a client or proxy did to the exchange — e.g. "no -1003 and never more than
N in a window", or "exactly one order accepted for this client id".
"""

from __future__ import annotations

from collections import Counter


class Counters:
    def __init__(self) -> None:
        self.answers_by_code: Counter[int] = Counter()
        self.answers_by_status: Counter[int] = Counter()
        self.requests_by_path: Counter[str] = Counter()
        self.requests_by_route: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()

    def request(self, path: str, route: str) -> None:
        self.requests_by_path[path] += 1
        self.requests_by_route[route] += 1

    def answer(self, status: int, code: int | None) -> None:
        """`code` is the exchange code of an error answer, 0 for a success, None for an answer that is
        neither (e.g. 404 for a path the exchange does not serve)."""
        self.answers_by_status[status] += 1
        if code is not None:
            self.answers_by_code[code] += 1

    def drop(self, kind: str) -> None:
        """An answer that never came or was not JSON: reset, hang, garbage, lost."""
        self.dropped[kind] += 1

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]
