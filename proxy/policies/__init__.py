"""Resilience policies: dedup, breaker, ratelimit — siblings, none imports another."""
