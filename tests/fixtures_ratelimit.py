"""Fixtures for the rate-limit suites: the state backend under test, as config overrides for a Seawall."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Config overrides for the backend under test: none for memory; for Redis, a real redis-server
    started for the test."""
    if request.param == "memory":
        return {}
    url = str(request.getfixturevalue("redis_server").url)
    return {"state": {"backend": "redis", "redis": {"url": url}}}
