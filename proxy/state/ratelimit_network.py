"""What Seawall measures about the path to the exchange, and how much earlier that lets a slot go.

A slot is held until one window (plus the margin) after its request's answer arrives, less a `credit`
(`NetworkCredit.credit`). The exchange counts a request when it *arrives*: at least one minimum one-way
delay after Seawall sent it, and at least one minimum one-way delay (plus its own processing) before the
answer is back; a request sent later needs at least a minimum one-way delay to arrive too. So the next
use of the slot reaches the exchange a full window after this one if it is sent no earlier than

    answer + window - (minimum way back + minimum way there) = answer + window - minimum round trip.

The credit is that minimum round trip, measured per upstream (here: one Seawall's path to its exchange)
over a recent period. Where the profile's answers carry the exchange's time (a timestamp taken when the
answer is built, after the request was counted), a stamp says how much of *this* answer's way back was
slower than the fastest seen: that much more credit (see docs/design.md, "Why it is safe", for the proof).

Guarantees:
- no credit before `min_samples` round trips have been measured (the first requests hold the full window
  after their answer), none when a request failed (the caller gives none), and never more than the
  request's own round trip (its slot is never free before send + window + margin);
- the minimum round trip is taken over `period` (a path that got faster counts at once; one that got
  slower counts once the faster samples age out, so until then the credit is smaller than it could be);
- exchange stamps count only while the exchange's clock runs steadily against ours. A stamp that no
  steady clock could have produced, given the others of the last `STAMP_PERIOD`, is a *step* (the clock
  stepped, or a path got faster): the stamps kept are moved by it, so that they say what they would under
  the new clock, on the safe side, and that answer's credit is the round trip alone. Steps of
  `STEP_REPORTED` or more are counted and logged.
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from typing import Any

from proxy.logs import log

STAMP_RESOLUTION = 0.001  # exchange timestamps are whole milliseconds: the true time is up to 1 ms later
# How far a stamp may stray from what a steady clock gives before it counts as a step: the stamps'
# resolution, plus the event loop's delay in noting an answer's arrival.
CLOCK_TOLERANCE = 0.002
# Stamps are compared with those of this recent period only: clocks drift apart slowly (NTP slews at most
# 0.5 ms per second), so an old reference would be off by more than the margin covers.
STAMP_PERIOD = 5.0
STEP_LOG_INTERVAL = 60.0
STEP_REPORTED = 0.05  # smaller steps are the path's own jitter as often as the clock's: adjusted silently


class WindowedMin:
    """The minimum of the values added over the last `period` seconds (kept in `slices` slices, so adding
    and reading cost O(slices))."""

    def __init__(self, period: float, slices: int = 6) -> None:
        self._slice = period / slices
        self._slices = slices
        self._mins: deque[tuple[int, float, int]] = deque()  # (slice index, minimum, values)

    def _trim(self, now: float) -> int:
        index = math.floor(now / self._slice)
        while self._mins and self._mins[0][0] <= index - self._slices:
            self._mins.popleft()
        return index

    def add(self, value: float, now: float) -> None:
        index = self._trim(now)
        if self._mins and self._mins[-1][0] >= index:
            last, smallest, count = self._mins[-1]
            self._mins[-1] = (last, min(smallest, value), count + 1)
        else:
            self._mins.append((index, value, 1))

    def get(self, now: float) -> float:
        self._trim(now)
        return min((smallest for _, smallest, _ in self._mins), default=math.inf)

    def count(self, now: float) -> int:
        self._trim(now)
        return sum(count for _, _, count in self._mins)

    def add_and_read(self, value: float, now: float) -> tuple[float, int]:
        """Add `value`, then the minimum and the number of values of the period (one pass)."""
        self.add(value, now)
        return min(smallest for _, smallest, _ in self._mins), sum(count for _, _, count in self._mins)

    def shift(self, delta: float) -> None:
        """Move every value kept by `delta` (the clock they were read on stepped)."""
        self._mins = deque((index, smallest + delta, count) for index, smallest, count in self._mins)


def stamp_pattern(field: str) -> re.Pattern[bytes]:
    """Matches an answer that ends with `"<field>": <13 digits>}`: the envelope's last top-level field
    (a nested one would be followed by a second closing brace)."""
    return re.compile(rb'"' + re.escape(field.encode()) + rb'"\s*:\s*(\d{13})\s*\}\s*$')


def exchange_stamp(body: bytes, pattern: re.Pattern[bytes]) -> int | None:
    """The exchange's time in milliseconds from the end of an answer, if it carries one there."""
    match = pattern.search(body[-64:])
    return int(match[1]) if match else None


class NetworkCredit:
    """Per upstream: the minimum round trip over a recent period, the exchange's clock against ours, and
    the credit each answered request's slot release may take from them (module docstring)."""

    def __init__(
        self,
        *,
        enabled: bool = True,
        period: float = 30.0,
        min_samples: int = 10,
        use_stamps: bool = True,
    ) -> None:
        self.enabled = enabled
        self.min_samples = min_samples
        self.use_stamps = use_stamps
        self._period = period
        self._round_trips = WindowedMin(period)
        self._lags = WindowedMin(STAMP_PERIOD, 5)  # answer arrival - stamp: the clock offset + way back
        self._leads = WindowedMin(STAMP_PERIOD, 5)  # stamp - send: the clock offset + way there
        self.steps = 0
        self._step_logged_at = -math.inf
        self.last_credit = 0.0

    def configure(self, *, enabled: bool, period: float, min_samples: int, use_stamps: bool) -> None:
        """New settings (a config reload); what was measured is kept, unless the period changed."""
        if period != self._period:
            self._period, self._round_trips = period, WindowedMin(period)
        self.enabled, self.min_samples, self.use_stamps = enabled, min_samples, use_stamps

    def min_round_trip(self, now: float) -> float:
        """The minimum round trip once enough are measured, else 0 (seconds)."""
        if self._round_trips.count(now) < self.min_samples:
            return 0.0
        return self._round_trips.get(now)

    def credit(self, sent: float, received: float, stamp_ms: int | None = None) -> float:
        """Record one round trip (our clock; `stamp_ms`: the exchange's time in its answer, if any) and
        return how many seconds earlier than answer + hold its slot may be released."""
        round_trip = received - sent
        if not self.enabled or round_trip < 0:
            return 0.0
        fastest, measured = self._round_trips.add_and_read(round_trip, received)
        if measured < self.min_samples:
            return 0.0  # too few measurements yet: the full hold after the answer
        credit = fastest
        if stamp_ms is not None and self.use_stamps:
            credit = self._by_exchange_time(sent, received, stamp_ms / 1000.0, round_trip, fastest)
        self.last_credit = min(credit, round_trip)
        return self.last_credit

    def _by_exchange_time(
        self, sent: float, received: float, stamp: float, round_trip: float, fastest: float
    ) -> float:
        """The credit with the exchange's stamp: the fastest way there plus the fastest way back, each the
        minimum of its own (never more than the fastest round trip), plus how much longer this answer's
        way back took than the fastest; the round trip alone when the clock cannot be trusted."""
        lag, lead = received - stamp, stamp - sent
        lag_min, lead_min = self._lags.get(received), self._leads.get(received)
        # With a steady clock a stamp is at least the fastest way there after the send, and at least the
        # fastest way back before the answer: `lead` and `lag` never fall below their minimums (those of
        # other requests, moments ago) by more than the tolerance, unless the exchange's clock stepped
        # back (`lead`) or forward (`lag`) — or a way got faster, which is handled the same way.
        if math.isinf(lag_min):
            self._lags.add(lag, received)
            self._leads.add(lead, received)
            return fastest  # nothing to compare with yet
        if lead < lead_min - CLOCK_TOLERANCE or lag < lag_min - CLOCK_TOLERANCE:
            # Back (or a faster way there): the ways back kept look that much longer under the new clock,
            # so they move up, and this answer's way back is not compared with them. Forward (or a faster
            # way back): the ways there kept move up instead, so a later step back is still noticed.
            step = lead - lead_min if lead < lead_min - CLOCK_TOLERANCE else lag_min - lag
            self._lags.shift(-step)
            self._leads.shift(step)
            self._step(step)
            self._lags.add(lag, received)
            self._leads.add(lead, received)
            return fastest
        self._lags.add(lag, received)
        self._leads.add(lead, received)
        # Each way's minimum is found from fewer samples than the round trip's (jitter on the way there and
        # on the way back need not be small in the same request), so their sum is the closer estimate.
        ways = min(fastest, lead_min + lag_min)
        slower = lag - lag_min - STAMP_RESOLUTION
        return ways + max(0.0, min(slower, round_trip - ways))

    def _step(self, seconds: float) -> None:
        """Count and log a step of the exchange's clock (`seconds`: about how far, forward positive)."""
        if abs(seconds) < STEP_REPORTED:
            return
        self.steps += 1
        now = time.monotonic()
        if now - self._step_logged_at >= STEP_LOG_INTERVAL:
            self._step_logged_at = now
            log.warning(
                "the exchange's clock stepped: its timestamps are not used until they are steady again",
                extra={"fields": {"step_ms": round(seconds * 1000, 1), "steps": self.steps}},
            )

    def status(self, now: float) -> dict[str, Any]:
        fastest = self._round_trips.get(now)
        return {
            "enabled": self.enabled,
            "round_trips": self._round_trips.count(now),
            "min_round_trip_ms": None if math.isinf(fastest) else round(fastest * 1000, 3),
            "exchange_time": {
                "used": self.use_stamps,
                "stamps": self._lags.count(now),
                "clock_steps": self.steps,
            },
            "last_credit_ms": round(self.last_credit * 1000, 3),
        }
