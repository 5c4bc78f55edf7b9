"""`seawall demo` runs end to end on loopback, shows progress, ends with the side-by-side table, exit 0."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from proxy.demo.run import MARKET_BOTS
from proxy.demo.streaming import STREAM_TOPICS


def _row(output: str, label: str) -> tuple[str, str]:
    line = next(line for line in output.splitlines() if line.startswith(label))
    cells = re.split(r"\s{2,}", line.strip())
    return cells[-2], cells[-1]


@pytest.mark.slow
def test_demo_runs_the_fleet_twice_and_shows_what_seawall_changed() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "demo", "--scale", "0.4"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "[straight]" in out and "[seawall ]" in out  # live progress from both runs
    straight_429, through_429 = _row(out, "429s from the exchange")
    assert int(straight_429) > 0
    assert through_429 == "0"
    _, answered_locally = _row(out, "  ... answered by Seawall instead")
    assert int(answered_locally) > 0
    _, through_dup = _row(out, "duplicate orders")
    assert through_dup == "0"
    straight_outage, through_outage = _row(out, "calls the exchange had to answer")
    assert int(through_outage) < int(straight_outage) / 3
    _, budget = _row(out, "share of the placement budget")
    assert int(budget.rstrip("%")) >= 80
    # Market data: the fleet's polling is answered with data, for a few calls the exchange must answer.
    _, with_data = _row(out, "  ... answered with data")
    assert float(with_data.rstrip("%")) >= 99
    straight_calls, through_calls = _row(out, "  ... calls the exchange had to answer")
    assert int(through_calls) * 10 < int(straight_calls)
    # Streaming: every bot gets pushes both ways; through Seawall the exchange holds one connection and
    # one subscription per topic for the whole fleet instead of one of each per bot.
    assert _row(out, "  ... bots that received data") == (f"{MARKET_BOTS} of {MARKET_BOTS}",) * 2
    straight_frames, through_frames = _row(out, "market data: pushes to")
    assert int(straight_frames) >= MARKET_BOTS * len(STREAM_TOPICS)
    assert int(through_frames) >= MARKET_BOTS * len(STREAM_TOPICS)
    straight_connections, through_connections = _row(out, "  ... stream connections the exchange held")
    assert (int(straight_connections), int(through_connections)) == (MARKET_BOTS, 1)
    straight_subscriptions, through_subscriptions = _row(out, "  ... subscriptions the exchange served")
    assert int(straight_subscriptions) == MARKET_BOTS * len(STREAM_TOPICS)
    assert int(through_subscriptions) == len(STREAM_TOPICS)
    assert "not built yet" not in out
    assert "Traceback" not in result.stderr
