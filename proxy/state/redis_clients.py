"""The redis-py client for each way operators run Redis: one server, a Redis Cluster, or a master watched
by Sentinel (`state.redis.mode`: standalone, cluster, sentinel).

redis-py's own clients do the routing; nothing here routes by hand:
- **cluster**: `RedisCluster`, given any one node of the URL, learns the slot map, follows MOVED/ASK, and
  after a connection error reloads the map on the next call (so after a failover it finds the replica
  that took over);
- **sentinel**: `Sentinel.master_for` asks the sentinels (the URL names them, `h1:26379,h2:26379`) for
  the master of `state.redis.sentinel_master` on every new connection, and drops a connection to a master
  that was demoted (`READONLY`), so after a failover new calls reach the promoted one.

Settings common to all modes, because redis-py's defaults hide failures (docs/design.md, "Shared state on
Redis"): no retries (the link decides what a failure means), every socket operation bounded by
`state.redis.timeout`, RESP2. `rediss://` turns TLS on (for the sentinels too), and TLS options are URL
parameters as redis-py reads them (`?ssl_ca_certs=/etc/seawall/ca.pem`); user and password come from the
URL (for the master and its replicas; the sentinels take `?sentinel_password=`, and `?sentinel_username=`,
only when they have their own).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import BlockingConnectionPool, SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from proxy.config import RedisConfig, split_redis_url

# Connections per Redis server. The link lets fewer calls than this run at once (`CALLS_IN_FLIGHT`), so
# no pool ever has to refuse or make a call wait for a connection; the margin covers pub/sub.
MAX_CONNECTIONS = 64
CALLS_IN_FLIGHT = 40
BATCHES_IN_FLIGHT = 16  # each holds one connection; with CALLS_IN_FLIGHT, 56 < MAX_CONNECTIONS

Client = redis.Redis | RedisCluster


def _common(config: RedisConfig) -> dict[str, Any]:
    return {
        "socket_timeout": config.timeout,
        "socket_connect_timeout": config.timeout,
        "retry_on_timeout": False,
        "retry": Retry(NoBackoff(), 0),  # no hidden retries: the link decides what a failure means
        "protocol": 2,
    }


def open_client(config: RedisConfig) -> tuple[Client, Sentinel | None]:
    """The client for `config.mode` (and, in sentinel mode, the Sentinel manager, to be closed too).
    Nothing connects yet: the first call does."""
    if config.mode == "cluster":
        settings = _common(config)
        del settings["retry_on_timeout"]  # RedisCluster takes `retry` only
        cluster = RedisCluster.from_url(config.url, max_connections=MAX_CONNECTIONS, **settings)
        return cluster, None
    if config.mode == "sentinel":
        return _sentinel_client(config)
    pool = BlockingConnectionPool.from_url(
        config.url,
        max_connections=MAX_CONNECTIONS,
        timeout=config.timeout,  # wait this long for a free connection, then fail
        **_common(config),
    )
    return redis.Redis(connection_pool=pool), None


def sentinel_addresses(url: str) -> list[tuple[str, int]]:
    """The sentinels a sentinel-mode URL names: `redis://[user:password@]h1:26379,h2:26379[/db]`."""
    addresses = []
    for host in split_redis_url(url)[2]:
        name, _, port = host.rpartition(":")
        if not name:
            name, port = host, "26379"
        addresses.append((name.strip("[]"), int(port)))
    return addresses


def _sentinel_client(config: RedisConfig) -> tuple[Client, Sentinel]:
    scheme, user_info, hosts, rest = split_redis_url(config.url)
    # redis-py parses one host per URL: read user, password, db and parameters from the first one.
    first = f"{scheme}://{user_info}{'@' if user_info else ''}{hosts[0]}{rest}"
    kwargs: dict[str, Any] = dict(parse_url(first))
    for name in ("host", "port"):
        kwargs.pop(name, None)
    tls = kwargs.pop("connection_class", None) is SSLConnection
    tls_options = {name: value for name, value in kwargs.items() if name.startswith("ssl")}
    on_sentinels: dict[str, Any] = {
        "socket_timeout": config.timeout,
        "socket_connect_timeout": config.timeout,
        "protocol": 2,
    }
    for name in ("username", "password"):
        value = kwargs.pop(f"sentinel_{name}", None)
        if value:
            on_sentinels[name] = value
    if tls:
        on_sentinels.update(ssl=True, **tls_options)
    manager = Sentinel(sentinel_addresses(config.url), sentinel_kwargs=on_sentinels)
    client = manager.master_for(
        config.sentinel_master,
        max_connections=MAX_CONNECTIONS,
        ssl=tls,
        **_common(config),
        **kwargs,
    )
    return client, manager
