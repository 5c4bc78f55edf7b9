"""Seawall: a resilient sidecar reverse proxy for Orderly-family exchange REST APIs."""

__version__ = "0.1.0"
