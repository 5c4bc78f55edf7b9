"""A real `redis-server` process per test, on a private unix socket, that tests can stop and restart; and,
shared per test module, a real three-master Redis Cluster and a real Sentinel setup on loopback TCP."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync
import redis.asyncio as redis
from fixtures_proxy import wait_until_async


class RedisServer:
    """`redis-server` from PATH (CI installs Debian's `redis-server`), no persistence, no TCP port."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: apt-get install redis-server (make test does)")
        self.binary = binary
        self.directory = directory
        self.socket = directory / "redis.sock"
        self.url = f"unix://{self.socket}"
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.process = subprocess.Popen(  # noqa: ASYNC220 - returns at once; readiness is polled below
            [
                self.binary,
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await wait_until_async(self._answers, timeout=10, interval=0.02)

    async def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError("redis-server exited at start")
        client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(await asyncio.wait_for(client.ping(), 2))  # a server not answering yet: ask again
        except (OSError, redis.RedisError, TimeoutError):
            return False
        finally:
            await client.aclose()

    async def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            await asyncio.to_thread(self.process.wait, 10)
        self.process = None


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path)
    await server.start()
    yield server
    await server.stop()


Backend = dict[str, Any]  # config overrides that choose where policy state lives


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Run a scenario on both backends: state in this process, or on a real Redis (one replica)."""
    if request.param == "memory":
        return {}
    server: RedisServer = request.getfixturevalue("redis_server")
    return {"state": {"backend": "redis", "redis": {"url": server.url}}}


# --- a real Redis Cluster and a real Sentinel setup, on loopback TCP ports ---------------------------


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        package = "redis-tools" if name == "redis-cli" else "redis-server"
        raise RuntimeError(f"{name} is not installed: apt-get install {package} (make test does)")
    return found


def _free_port(with_bus: bool = False) -> int:
    """A loopback port free now; `with_bus`: port + 10000 too (a cluster node's bus port)."""
    for _ in range(100):
        with contextlib.ExitStack() as sockets:
            first = sockets.enter_context(socket.socket())
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            if not with_bus:
                return port
            if port + 10000 > 65535:
                continue
            bus = sockets.enter_context(socket.socket())
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port")


def _poll(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` (synchronously: module fixtures run outside the tests' event loops)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {timeout}s: no")
        time.sleep(0.05)


# The Cluster's and the Sentinel setup's nodes ask for it (the sentinels themselves do not), as a managed
# Redis does: tests also check that it never shows.
PASSWORD = "hunter2-redis"


def _answers(port: int, password: str | None = PASSWORD) -> redis_sync.Redis:
    return redis_sync.Redis(
        host="127.0.0.1", port=port, password=password, socket_timeout=1, socket_connect_timeout=1
    )


def _info(port: int, section: str) -> dict[str, Any]:
    try:
        with _answers(port) as client:
            return dict(client.info(section))
    except (OSError, redis_sync.RedisError):
        return {}


class RedisNode:
    """One `redis-server` on a TCP loopback port that a test can kill and start again (same port)."""

    def __init__(self, directory: Path, port: int, *args: str) -> None:
        self.directory, self.port, self.args = directory, port, args
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *args: str) -> None:
        """Start (again), with `args` in place of the arguments it was made with, if given."""
        self.args = args or self.args
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [_binary("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory), "--requirepass", PASSWORD,
             "--masterauth", PASSWORD, *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _poll(lambda: bool(_info(self.port, "server")), 10, f"redis-server on port {self.port} answers")

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: gone at once, as a crashed host (no last writes flushed to anyone)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class LocalCluster:
    """Three masters, each with one replica: `redis-cli --cluster create`, node timeout 500 ms, so a
    stopped master's replica takes over within a couple of seconds."""

    def __init__(self, directory: Path, masters: int = 3) -> None:
        ports = [_free_port(with_bus=True) for _ in range(2 * masters)]
        self.nodes = [
            RedisNode(directory / str(port), port, "--cluster-enabled", "yes", "--cluster-config-file",
                      "nodes.conf", "--cluster-node-timeout", "500", "--cluster-replica-validity-factor", "0")
            for port in ports
        ]  # fmt: skip
        self.url = f"redis://:{PASSWORD}@127.0.0.1:{ports[0]}"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [
                _binary("redis-cli"),
                "-a",
                PASSWORD,
                "--no-auth-warning",
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )
        self.wait_healthy()

    def _role(self, node: RedisNode) -> dict[str, Any]:
        return _info(node.port, "replication") if node.alive else {}

    def masters(self) -> list[RedisNode]:
        return [node for node in self.nodes if self._role(node).get("role") == "master"]

    def healthy(self) -> bool:
        """Every node up, every slot served, every master with a replica in sync (so it can fail over)."""
        if not all(node.alive for node in self.nodes):
            return False
        states = [_info(node.port, "cluster").get("cluster_enabled") for node in self.nodes]
        if states != [1] * len(self.nodes):
            return False
        try:
            with _answers(self.nodes[0].port) as client:
                if b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                    return False
        except (OSError, redis_sync.RedisError):
            return False
        masters = self.masters()
        synced = [
            node for node in self.nodes
            if self._role(node).get("role") == "slave" and self._role(node).get("master_link_status") == "up"
        ]  # fmt: skip
        return len(masters) == len(self.nodes) // 2 and len(synced) == len(masters)

    def wait_healthy(self) -> None:
        _poll(self.healthy, 30, "the cluster is healthy")

    def master_of(self, key: str) -> RedisNode:
        """The master that serves `key`'s slot now."""
        with _answers(self.nodes[0].port) as client:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    port = int(master[1])
        return next(node for node in self.nodes if node.port == port)

    def restore(self) -> None:
        """Start every killed node again (it rejoins as a replica) and wait until all is in sync."""
        for node in self.nodes:
            if not node.alive:
                node.start()
        self.wait_healthy()

    def flush(self) -> None:
        for node in self.masters():
            with _answers(node.port) as client:
                client.flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class LocalSentinel:
    """A master, its replica and three sentinels (quorum 2, down after 500 ms), as operators run it."""

    MASTER = "seawall-master"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        first, second = _free_port(), _free_port()
        self.nodes = [
            RedisNode(directory / "a", first),
            RedisNode(directory / "b", second, "--replicaof", "127.0.0.1", str(first)),
        ]
        self.sentinel_ports = [_free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen[bytes]] = []
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        self.url = f"redis://:{PASSWORD}@{hosts}/0"
        self._first_master = first

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        binary = shutil.which("redis-sentinel")
        for port in self.sentinel_ports:
            conf = self.directory / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n"
                f"sentinel monitor {self.MASTER} 127.0.0.1 {self._first_master} 2\n"
                f"sentinel auth-pass {self.MASTER} {PASSWORD}\n"
                f"sentinel down-after-milliseconds {self.MASTER} 500\n"
                f"sentinel failover-timeout {self.MASTER} 3000\n"
            )
            command = [binary, str(conf)] if binary else [_binary("redis-server"), str(conf), "--sentinel"]
            self.sentinels.append(
                subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        self.wait_healthy()

    def _sentinel_view(self, port: int) -> dict[str, Any]:
        try:
            with _answers(port, password=None) as client:
                return dict(client.sentinel_master(self.MASTER))
        except (OSError, redis_sync.RedisError):
            return {}

    def master(self) -> RedisNode:
        port = int(self._sentinel_view(self.sentinel_ports[0]).get("port", 0))
        return next(node for node in self.nodes if node.port == port)

    def healthy(self) -> bool:
        """Both nodes up, every sentinel agrees on a master that is one, sees the two other sentinels
        and a replica in sync."""
        if not all(node.alive for node in self.nodes):
            return False
        views = [self._sentinel_view(port) for port in self.sentinel_ports]
        if not all(views) or len({int(view["port"]) for view in views}) != 1:
            return False
        if any(view.get("num-other-sentinels") != 2 or view.get("num-slaves") != 1 for view in views):
            return False
        try:
            master = self.master()
        except StopIteration:
            return False
        replica = next(node for node in self.nodes if node is not master)
        role = _info(replica.port, "replication")
        return (
            _info(master.port, "replication").get("role") == "master"
            and role.get("master_link_status") == "up"
        )

    def wait_healthy(self) -> None:
        _poll(self.healthy, 30, "the sentinels agree on a master with a replica in sync")

    def restore(self) -> None:
        for node in self.nodes:
            if not node.alive:  # back as a replica of the promoted one, as the sentinels would make it
                node.start("--replicaof", "127.0.0.1", str(self.master().port))
        self.wait_healthy()

    def flush(self) -> None:
        with _answers(self.master().port) as client:
            client.flushall()

    def stop(self) -> None:
        for process in self.sentinels:
            if process.poll() is None:
                process.terminate()
                process.wait(10)
        for node in self.nodes:
            node.stop()


@pytest.fixture(scope="module")
def redis_cluster_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster(redis_cluster_module: LocalCluster) -> LocalCluster:
    """One cluster per test module, whole and empty for each test (a failover test's killed master
    rejoins as a replica)."""
    redis_cluster_module.restore()
    redis_cluster_module.flush()
    return redis_cluster_module


@pytest.fixture(scope="module")
def redis_sentinel_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSentinel]:
    setup = LocalSentinel(tmp_path_factory.mktemp("sentinel"))
    try:
        setup.start()
        yield setup
    finally:
        setup.stop()


@pytest.fixture
def redis_sentinel(redis_sentinel_module: LocalSentinel) -> LocalSentinel:
    """One Sentinel setup per test module, whole and empty for each test."""
    redis_sentinel_module.restore()
    redis_sentinel_module.flush()
    return redis_sentinel_module
