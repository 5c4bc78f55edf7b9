"""Live reload: SIGHUP or a change of the config file reloads it — validated first, swapped at once.

Guarantees:
- The file is read and validated as at start (`load_config`: its profile, the same environment
  overrides). If it is invalid the running config stays, the error is logged naming the key (and its file
  and line), and `seawall_config_reloads_total{result="invalid"}` counts it.
- A change only a restart can make refuses the whole reload, nothing applied, with an error naming each
  key (`result="refused"`): the upstream (its URL, deadlines and pool), the listeners and their server
  settings, the shared-state backend, the breakers (open breakers would be forgotten), the sizes of the
  dedup and cache stores.
- Otherwise (`result="applied"`; `"unchanged"` when nothing differs) the swap is one step of the event
  loop with no await in it: a request is either read before it and served entirely under the old config,
  or after it and served under the new one — none is dropped or answered twice; requests under way finish
  in the chain they started in. The rate limiter takes its new rules in place: queued requests keep their
  place, the windows of rules that keep their name keep their slots (a reload never empties a window, so
  it never earns a -1003), and what it learned about the exchange stays. Dedup and the cache are rebuilt
  only if their section changed, on the states in use: dedup entries and cached answers survive.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from proxy.app import Seawall, build_policies
from proxy.config import SeawallConfig
from proxy.config_loader import ConfigError, load_config
from proxy.logs import LEVELS, log, request_level
from proxy.policies.ratelimit import RateLimitPolicy
from proxy.routing import RouteTable
from proxy.shipped import default_config_path
from proxy.types import Policy

# Keys only a restart can change: what the listeners, the upstream client and the states were built with.
RESTART_ONLY: tuple[tuple[str, ...], ...] = (
    ("upstream",),
    ("listen",),
    ("admin_listen",),
    ("server",),
    ("state",),
    ("breakers",),
    ("dedup", "max_entries"),
    ("dedup", "lock_ttl"),
    ("cache", "max_entries"),
    ("cache", "max_bytes"),
)


def _at(data: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _differences(before: Any, after: Any, path: tuple[str, ...]) -> list[str]:
    """The dotted keys under `path` whose values differ (the deepest mapping keys)."""
    if isinstance(before, dict) and isinstance(after, dict):
        found: list[str] = []
        for key in sorted(set(before) | set(after)):
            found += _differences(before.get(key), after.get(key), (*path, str(key)))
        return found
    return [".".join(path)] if before != after else []


def restart_only_changes(old: SeawallConfig, new: SeawallConfig) -> list[str]:
    """The keys that differ between `old` and `new` and need a restart (dotted, as in the file)."""
    before, after = old.model_dump(mode="json"), new.model_dump(mode="json")
    changed: list[str] = []
    for path in RESTART_ONLY:
        changed += _differences(_at(before, path), _at(after, path), path)
    return changed


def changed_sections(old: SeawallConfig, new: SeawallConfig) -> set[str]:
    return {name for name in type(new).model_fields if getattr(old, name) != getattr(new, name)}


def apply_config(seawall: Seawall, config: SeawallConfig) -> set[str]:
    """Swap `seawall` over to `config` (already validated, nothing restart-only changed), in one step;
    the sections that changed."""
    changed = changed_sections(seawall.config, config)
    current = {policy.name: policy for policy in seawall.policies}
    keep: dict[str, Policy] = {}
    limiter = current.get("ratelimit")
    if isinstance(limiter, RateLimitPolicy):
        limiter.configure(config.ratelimit, config.signing)  # in place: queues, windows, what it learned
        keep["ratelimit"] = limiter
    if "breaker" in current:
        keep["breaker"] = current["breaker"]  # breakers.* is restart-only: open breakers stay open
    if "dedup" not in changed:
        keep["dedup"] = current["dedup"]
    if "cache" in current and not changed & {"cache", "identity"}:
        keep["cache"] = current["cache"]
    policies = build_policies(config, seawall.metrics, seawall.shared, seawall.states, keep)
    routes = seawall.routes
    if changed & {"routes", "identity"}:
        routes = RouteTable(config.routes, config.identity)
    # From here on, new requests see the new config.
    seawall.pipeline.use(policies)
    seawall.policies = policies
    seawall.listener.use_routes(routes)
    seawall.routes = routes
    seawall.recorder.use_level(request_level(config.logging.request_level))
    logging.getLogger("seawall").setLevel(LEVELS.get(config.logging.level, logging.INFO))
    seawall.config = config
    return changed


def config_path(path: str | None, env: Mapping[str, str]) -> Path:
    """The file `load_config(path, env)` reads."""
    return Path(path or env.get("SEAWALL_CONFIG") or default_config_path())


class ConfigReloader:
    """Reloads a running Seawall's config on request (`reload`, e.g. on SIGHUP) and when its file changes
    (checked every `reload.watch_interval`; module docstring)."""

    def __init__(
        self, seawall: Seawall, path: str | None = None, env: Mapping[str, str] | None = None
    ) -> None:
        self._seawall = seawall
        self._path = path
        self._env = os.environ if env is None else env
        self._file = config_path(path, self._env)
        self._seen = self._digest()
        self._watcher: asyncio.Task[None] | None = None

    def _digest(self) -> bytes | None:
        try:
            return hashlib.sha256(self._file.read_bytes()).digest()
        except OSError:
            return None  # gone for a moment (an editor's swap, a ConfigMap update): checked again later

    def reload(self, trigger: str) -> str:
        """Read, validate and apply the config file now; the result (`applied`, `unchanged`, `invalid`,
        `refused`), also counted and logged."""
        seawall = self._seawall
        self._seen = self._digest()
        try:
            config = load_config(self._path, self._env)
        except ConfigError as error:
            log.error(
                "config reload failed, the running config stays: %s",
                error,
                extra={"fields": {"trigger": trigger}},
            )
            return self._count("invalid")
        refused = restart_only_changes(seawall.config, config)
        if refused:
            log.error(
                "config reload refused: %s change only with a restart; the running config stays",
                ", ".join(refused),
                extra={"fields": {"trigger": trigger, "keys": refused}},
            )
            return self._count("refused")
        if config == seawall.config:
            log.info("config reload: nothing changed", extra={"fields": {"trigger": trigger}})
            return self._count("unchanged")
        changed = apply_config(seawall, config)
        log.info("config reloaded", extra={"fields": {"trigger": trigger, "changed": sorted(changed)}})
        self._watch()  # the interval may have changed
        return self._count("applied")

    def _count(self, result: str) -> str:
        self._seawall.metrics.config_reloads.labels(result).inc()
        return result

    def start(self) -> None:
        """Count every result from 0, and watch the file if `reload.watch_interval` says so."""
        for result in ("applied", "unchanged", "invalid", "refused"):
            self._seawall.metrics.config_reloads.labels(result)
        self._watch()

    def _watch(self) -> None:
        if self._seawall.config.reload.watch_interval > 0 and self._watcher is None:
            self._watcher = asyncio.ensure_future(self._poll())

    async def _poll(self) -> None:
        while (interval := self._seawall.config.reload.watch_interval) > 0:
            await asyncio.sleep(interval)
            digest = self._digest()
            if digest is not None and digest != self._seen:
                self.reload("file changed")
        self._watcher = None

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
