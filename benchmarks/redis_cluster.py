"""Shared state on a Redis Cluster (or Sentinel): goodput over three replicas, and a failover timeline.

Everything in its own process on loopback: a real three-master Redis Cluster, each master with a replica
(`redis-server --cluster-enabled yes`, `redis-cli --cluster create`, node timeout 500 ms) — or, with
`--mode sentinel`, a master, its replica and three sentinels (quorum 2, down after 500 ms) —, the
simulator (orderly, strict sliding windows: placements 10 per 1 s per key) and three `seawall run`
replicas (the shipped orderly profile, `SEAWALL_REDIS_MODE`, `state.redis.replicas` NOT set: they count
one another through their heartbeats).

- `goodput` (cluster): 50 bots on ONE key, round-robin over the replicas, place orders as fast as answers
  come back for ~12 s. Reported as in `replicas_redis.py`: upstream -1003s (must be 0), the most the
  exchange saw attempted in any 1 s window, goodput as a share of N (bar: >= 0.95).
- `failover`: 12 bots place MARKET orders (a second order for one client order id would be a real one),
  each with a fresh client order id, retrying the same one through the next replica after a transient
  answer (50 ms back-off). At 4 s the master that holds the budget's keys (cluster) or the master
  (sentinel) is killed with SIGKILL. Reported second by second: what the bots got (placed, replayed, or
  who refused), requests that got no answer, the slowest answer; then orders per client order id (must
  all be 1), upstream -1003s, and when each replica was back on shared state.

    python benchmarks/redis_cluster.py [--run goodput|failover] [--mode cluster|sentinel] [--seconds N]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from harness import free_port, start_seawall, start_simulator, wait_ready  # noqa: E402
from ratelimit_goodput import get  # noqa: E402
from replicas_redis import fleet  # noqa: E402

from proxy.runtime import run_event_loop  # noqa: E402
from proxy.simulator.signing import generate_orderly_keypair, orderly_headers  # noqa: E402

REPLICAS = 3
CONFIG = """
profile: orderly
logging: {level: warning, request_level: off}
state: {redis: {retry_interval: 0.5}}
"""
MASTER_NAME = "seawall"


def redis_cli(*args: str) -> str:
    binary = shutil.which("redis-cli")
    if binary is None:
        raise SystemExit("redis-cli is not installed (apt-get install redis-tools)")
    return subprocess.run([binary, *args], check=True, capture_output=True, text=True, timeout=30).stdout


def bus_free_port() -> int:
    while True:
        port = free_port()
        if port + 10000 < 65536:
            return port


def start_node(directory: Path, port: int, *args: str) -> subprocess.Popen[bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
            *args,
        ],
        stdout=subprocess.DEVNULL,
    )
    until(lambda: ping(port), 10, f"redis-server on {port}")
    return process


def ping(port: int) -> bool:
    try:
        return redis_cli("-p", str(port), "ping").strip() == "PONG"
    except subprocess.CalledProcessError:
        return False


def until(condition: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not within {seconds} s")
        time.sleep(0.1)


class Redis:
    """The Redis setup under test: its URL for Seawall, its processes by port, and which to kill."""

    def __init__(self, mode: str, directory: Path) -> None:
        self.mode = mode
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.sentinel_ports: list[int] = []
        if mode == "cluster":
            ports = [bus_free_port() for _ in range(6)]
            for port in ports:
                self.processes[port] = start_node(
                    directory / str(port),
                    port,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "500",
                    "--cluster-replica-validity-factor",
                    "0",
                    "--cluster-config-file",
                    "nodes.conf",
                )
            redis_cli(
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in ports),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            )
            until(
                lambda: "cluster_state:ok" in redis_cli("-p", str(ports[0]), "cluster", "info"), 20, "cluster"
            )
            self.url = f"redis://127.0.0.1:{ports[0]}"
        else:
            master, replica = free_port(), free_port()
            self.processes[master] = start_node(directory / "a", master)
            self.processes[replica] = start_node(
                directory / "b", replica, "--replicaof", "127.0.0.1", str(master)
            )
            self.sentinel_ports = [free_port() for _ in range(3)]
            for port in self.sentinel_ports:
                conf = directory / f"sentinel-{port}.conf"
                conf.write_text(
                    f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
                    f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n"
                    f"sentinel down-after-milliseconds {MASTER_NAME} 500\n"
                    f"sentinel failover-timeout {MASTER_NAME} 3000\n"
                )
                command = [shutil.which("redis-sentinel") or "", str(conf)]
                if not command[0]:
                    command = [shutil.which("redis-server") or "redis-server", str(conf), "--sentinel"]
                self.processes[port] = subprocess.Popen(command, stdout=subprocess.DEVNULL)
            until(self._sentinels_agree, 30, "sentinels")
            self.url = "redis://" + ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports) + "/0"

    def _sentinels_agree(self) -> bool:
        try:
            views = [redis_cli("-p", str(p), "sentinel", "master", MASTER_NAME) for p in self.sentinel_ports]
        except subprocess.CalledProcessError:
            return False
        return all("num-other-sentinels\n2\n" in view for view in views)

    def env(self) -> dict[str, str]:
        env = {"SEAWALL_REDIS_URL": self.url, "SEAWALL_REDIS_MODE": self.mode}
        if self.mode == "sentinel":
            env["SEAWALL_REDIS_SENTINEL_MASTER"] = MASTER_NAME
        return env

    def master_to_kill(self) -> int:
        if self.mode == "sentinel":
            return int(
                redis_cli(
                    "-p", str(self.sentinel_ports[0]), "sentinel", "get-master-addr-by-name", MASTER_NAME
                ).split()[1]
            )
        for port in self.processes:  # the master holding the budget's keys
            is_master = redis_cli("-p", str(port), "role").split()[0] == "master"
            if is_master and redis_cli("-p", str(port), "--scan", "--pattern", "seawall:rl:*").strip():
                return port
        raise SystemExit("no master holds the budget's keys")

    def kill(self, port: int) -> None:
        self.processes[port].kill()

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
                process.wait(10)


class Fleet:
    """The simulator and three `seawall run` replicas on the Redis setup."""

    def __init__(self, redis: Redis, directory: Path) -> None:
        self.pair = generate_orderly_keypair()
        self.account = "0x" + "cd" * 32
        sim_port = free_port()
        self.sim_url = f"http://127.0.0.1:{sim_port}"
        self.processes = [start_simulator(sim_port, self.account, self.pair.public_key)]
        config = directory / "replica.yaml"
        config.write_text(CONFIG)
        self.proxies: list[str] = []
        self.admins: list[str] = []
        for _ in range(REPLICAS):
            proxy_port, admin_port = free_port(), free_port()
            self.processes.append(
                start_seawall(config, self.sim_url, proxy_port, admin_port, env=redis.env())
            )
            self.proxies.append(f"http://127.0.0.1:{proxy_port}")
            self.admins.append(f"http://127.0.0.1:{admin_port}")
        for admin in self.admins:
            wait_ready(admin + "/readyz")

    def counters(self) -> dict[str, Any]:
        return dict(orjson.loads(get(self.sim_url + "/__sim/counters")))

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(10)


def run_goodput(mode: str, seconds: float, clients: int) -> None:
    directory = Path(tempfile.mkdtemp())
    redis = Redis(mode, directory)
    try:
        replicas = Fleet(redis, directory)
        try:
            result: dict[str, Any] = {}

            async def drive() -> int:
                result.update(
                    await fleet(replicas.proxies, replicas.account, replicas.pair.secret, clients, seconds)
                )
                return 0

            run_event_loop(drive)
            counters = replicas.counters()
            statuses = [orjson.loads(get(admin + "/status"))["state"] for admin in replicas.admins]
        finally:
            replicas.stop()
    finally:
        redis.stop()
        shutil.rmtree(directory, ignore_errors=True)
    answers = ", ".join(f"{k}: {v}" for k, v in sorted(result["answers"].items()))
    print(f"{clients} clients on one key over {REPLICAS} replicas on a Redis {mode} for {seconds:.0f} s\n")
    print(
        "| upstream -1003 | most attempted in any 1 s window | goodput (share of N) | accepted "
        "| replicas counted | answers |"
    )
    print("|---|---|---|---|---|---|")
    counted = "/".join(str(state.get("replicas")) for state in statuses)
    upstream_1003 = counters["answers_by_code"].get("-1003", 0)
    most = counters["max_attempted_in_window"]["order_create"]
    goodput, accepted = f"{result['goodput']:.3f}", result["accepted"]
    print(f"| {upstream_1003} | {most} | {goodput} | {accepted} | {counted} | {answers} |")


async def failover_load(replicas: Fleet, redis: Redis, seconds: float, kill_at: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    numbers = itertools.count(1)
    by_second: dict[int, Counter[str]] = {}
    slowest: dict[int, float] = {}
    orders_settled: dict[str, str] = {}
    back_at: dict[str, float] = {}
    killed: list[float] = []
    stop = asyncio.Event()

    deadline = aiohttp.ClientTimeout(total=15)

    async def bot(session: aiohttp.ClientSession, number: int) -> None:
        while not stop.is_set():
            cid = str(next(numbers))
            body = orjson.dumps(
                {
                    "symbol": "PERP_ETH_USDC",
                    "order_type": "MARKET",
                    "order_quantity": 0.01,
                    "side": "BUY",
                    "client_order_id": cid,
                }
            )
            for attempt in itertools.count():
                url = replicas.proxies[(number + attempt) % REPLICAS]
                headers = orderly_headers(replicas.account, replicas.pair.secret, "POST", "/v1/order", body)
                sent, status = loop.time(), 0
                try:
                    async with session.post(
                        url + "/v1/order", data=body, headers=headers, timeout=deadline
                    ) as answer:
                        await answer.read()
                        status, seen = answer.status, answer.headers.get("X-Seawall", "exchange")
                        if status == 200:
                            seen = "replayed" if seen == "dedup-replay" else "placed"
                except (aiohttp.ClientError, TimeoutError):
                    seen = "no answer"
                second = int(sent - started)
                by_second.setdefault(second, Counter())[seen] += 1
                slowest[second] = max(slowest.get(second, 0.0), loop.time() - sent)
                if status in (200, 409) or seen == "no answer" or attempt > 400:
                    orders_settled[cid] = seen
                    break
                await asyncio.sleep(0.05)

    async def watch(session: aiohttp.ClientSession) -> None:
        await asyncio.sleep(kill_at)
        await asyncio.to_thread(redis.kill, redis.master_to_kill())
        killed.append(loop.time() - started)
        await asyncio.sleep(0.5)
        while len(back_at) < REPLICAS and loop.time() - started < seconds + 30:
            for admin in replicas.admins:
                if admin in back_at:
                    continue
                async with session.get(admin + "/status") as answer:
                    state = orjson.loads(await answer.read())["state"]
                if state.get("up") and state.get("phase") == "settled" and state.get("rebuilds", 0) >= 1:
                    back_at[admin] = loop.time() - started
            await asyncio.sleep(0.1)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        session._retry_connection = False  # never a resend behind the limiter's back
        bots = [asyncio.create_task(bot(session, number)) for number in range(12)]
        watcher = asyncio.create_task(watch(session))
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*bots)
        await watcher
        async with session.get(replicas.sim_url + "/__sim/orders") as answer:
            orders = orjson.loads(await answer.read())
    return {
        "by_second": by_second,
        "slowest": slowest,
        "killed": killed,
        "back_at": sorted(back_at.values()),
        "orders": orders,
        "settled": orders_settled,
    }


def run_failover(mode: str, seconds: float) -> None:
    directory = Path(tempfile.mkdtemp())
    redis = Redis(mode, directory)
    try:
        replicas = Fleet(redis, directory)
        try:
            result: dict[str, Any] = {}

            async def drive() -> int:
                result.update(await failover_load(replicas, redis, seconds, kill_at=4.0))
                return 0

            run_event_loop(drive)
            counters = replicas.counters()
        finally:
            replicas.stop()
    finally:
        redis.stop()
        shutil.rmtree(directory, ignore_errors=True)
    orders = result["orders"]
    orders = orders.get("orders", orders) if isinstance(orders, dict) else orders
    per_cid = Counter(str(order.get("client_order_id")) for order in orders if order.get("client_order_id"))
    kinds = ["placed", "replayed", "ratelimit", "state-unavailable", "exchange", "no answer"]
    print(
        f"12 bots placing MARKET orders through {REPLICAS} replicas on a Redis {mode}; master killed at "
        f"{result['killed'][0]:.1f} s; replicas back on shared state at "
        f"{', '.join(f'{t:.1f}' for t in result['back_at'])} s\n"
    )
    print("| second | " + " | ".join(kinds) + " | other | slowest answer, s |")
    print("|---" * (len(kinds) + 3) + "|")
    for second in sorted(result["by_second"]):
        seen = result["by_second"][second]
        other = ", ".join(f"{kind}: {n}" for kind, n in sorted(seen.items()) if kind not in kinds) or "0"
        print(
            f"| {second} | "
            + " | ".join(str(seen.get(kind, 0)) for kind in kinds)
            + f" | {other} | {result['slowest'][second]:.2f} |"
        )
    twice = sum(1 for n in per_cid.values() if n > 1)
    print(
        f"\norders: {sum(per_cid.values())} for {len(per_cid)} client order ids, placed twice: {twice}; "
        f"upstream -1003: {counters['answers_by_code'].get('-1003', 0)}; most attempted in any 1 s window: "
        f"{counters['max_attempted_in_window']['order_create']}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", choices=["goodput", "failover"])
    parser.add_argument("--mode", choices=["cluster", "sentinel"], default="cluster")
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--clients", type=int, default=50)
    args = parser.parse_args()
    if args.run in (None, "goodput"):
        run_goodput(args.mode, args.seconds, args.clients)
        print()
    if args.run in (None, "failover"):
        run_failover(args.mode, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
