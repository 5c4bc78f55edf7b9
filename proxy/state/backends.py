"""Where each policy keeps its state, decided once: in this process, or in Redis for every replica.

`build_policies` (proxy/app.py) asks here for each policy's state and hands it to the policy's
constructor, so no policy chooses its backend or holds the Redis link. One function per policy, all of
the same shape, `(config, link) -> state`: `link` is the Redis link when `state.backend` is `redis`, and
None for the memory backend. The numbers that tie a state to the rest of the config (how long a
shared record may outlive a request whose replica died) are derived here too.
"""

from __future__ import annotations

from proxy.config import SeawallConfig
from proxy.state.breaker import BreakerStateStore, MemoryBreakerStore
from proxy.state.breaker_redis import RedisBreakerStore
from proxy.state.cache import MemoryCache
from proxy.state.dedup import DedupState, MemoryDedupState
from proxy.state.dedup_redis import RedisDedupState
from proxy.state.ratelimit import MemoryRateLimitState, RateLimitState
from proxy.state.ratelimit_redis import RedisRateLimitState
from proxy.state.redis_link import RedisLink

# How long a shared claim outlives the longest possible request (`upstream.timeout`) should its replica
# die before settling it: a rate-limit slot in flight (on top of its hold), a breaker's half-open probe
# (which may first wait in the limiter's queue).
IN_FLIGHT_SLOT_MARGIN = 1.0
PROBE_CLAIM_MARGIN = 5.0


def ratelimit_state(config: SeawallConfig, link: RedisLink | None) -> RateLimitState:
    """The rate limiter's slots: this process's, or Redis' for every replica."""
    if link is None:
        return MemoryRateLimitState()
    return RedisRateLimitState(link, in_flight_expiry=config.upstream.timeout + IN_FLIGHT_SLOT_MARGIN)


def breaker_store(config: SeawallConfig, link: RedisLink | None) -> BreakerStateStore:
    """The circuit breakers' scope storage: this process's, or shared with every replica through Redis."""
    if link is None:
        return MemoryBreakerStore()
    return RedisBreakerStore(link, probe_ttl=config.upstream.timeout + PROBE_CLAIM_MARGIN)


def dedup_state(config: SeawallConfig, link: RedisLink | None) -> DedupState:
    """Dedup entries: this process's, or Redis' for every replica with this process's as the fallback.

    A twin waiting on another replica's claim gives up after the longest possible request
    (`upstream.timeout`) plus the claim's lock TTL, after which a dead owner's claim has expired.
    """
    local = MemoryDedupState(config.dedup.max_entries)
    if link is None:
        return local
    lock_ttl = config.dedup.lock_ttl
    return RedisDedupState(link, local, lock_ttl=lock_ttl, wait_limit=config.upstream.timeout + lock_ttl)


def cache_store(config: SeawallConfig, link: RedisLink | None) -> MemoryCache:
    """The micro-cache's entries: always this process's, even with `state.backend: redis` (an entry is
    small and short-lived; a Redis round trip per hit would cost more than the call it saves)."""
    return MemoryCache(config.cache.max_entries, config.cache.max_bytes)
