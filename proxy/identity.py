"""Safe names for API keys: what logs, metrics and `/status` may show instead of a key."""

from __future__ import annotations

import hashlib
from functools import lru_cache


@lru_cache(maxsize=4096)  # a few keys per deployment: hash each once, not once per request
def key_fingerprint(key: str) -> str:
    """A short, stable, non-reversible name for an API key (`k-` + 10 hex digits of its SHA-256)."""
    return "k-" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:10]
