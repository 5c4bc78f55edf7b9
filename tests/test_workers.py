"""`seawall run --workers N`: real worker processes on one port, sharing a real redis-server.

Each test starts the real command as a subprocess (the supervisor, which starts its workers) against an
in-process upstream, and looks at it as an operator would: the proxy port, the one admin port
(/metrics, /status, /readyz), the exit code, the log lines on stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from fixtures_proxy import RecordingUpstream, held_until, wait_until, wait_until_async
from fixtures_redis import RedisServer

SEAWALL = [sys.executable, "-m", "proxy"]
STARTED = re.compile(rb"proxy on (\S+), admin on (\S+) \((\d+) workers\)")


@dataclass
class Pool:
    process: asyncio.subprocess.Process
    proxy: str
    admin: str

    async def status(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as session, session.get(self.admin + "/status") as response:
            assert response.status == 200
            data: dict[str, Any] = await response.json()
            return data

    async def metrics_text(self) -> str:
        async with aiohttp.ClientSession() as session, session.get(self.admin + "/metrics") as response:
            assert response.status == 200
            return await response.text()

    async def metrics(self) -> dict[str, float]:
        """Every sample of the admin port's /metrics, keyed by its name and labels as printed."""
        samples = {}
        for line in (await self.metrics_text()).splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    async def pids(self) -> list[int]:
        return [worker["pid"] for worker in (await self.status())["workers"]]


def _env(upstream: RecordingUpstream, redis: RedisServer | None, **more: str) -> dict[str, str]:
    env = {
        **os.environ,
        "SEAWALL_UPSTREAM": upstream.url,
        "SEAWALL_LISTEN": "127.0.0.1:0",
        "SEAWALL_ADMIN_LISTEN": "127.0.0.1:0",
        "SEAWALL_LOG_LEVEL": "info",
        **more,
    }
    env.pop("SEAWALL_REDIS_URL", None)
    if redis is not None:
        env["SEAWALL_REDIS_URL"] = redis.url
    return env


@contextlib.asynccontextmanager
async def workers(upstream: RecordingUpstream, redis: RedisServer, count: int = 2) -> AsyncIterator[Pool]:
    """`seawall run --workers COUNT` on Redis, ready (every worker ready) when this yields."""
    process = await asyncio.create_subprocess_exec(
        *SEAWALL,
        "run",
        "--workers",
        str(count),
        env=_env(upstream, redis),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        started = STARTED.search(line)
        assert started is not None, line
        pool = Pool(process, started[1].decode(), started[2].decode())
        assert int(started[3]) == count

        async def ready() -> bool:
            async with aiohttp.ClientSession() as session, session.get(pool.admin + "/readyz") as r:
                return r.status == 200

        await wait_until_async(ready, timeout=15, interval=0.05)
        yield pool
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def _requests_answered(samples: dict[str, float]) -> float:
    return sum(value for name, value in samples.items() if name.startswith("seawall_requests_total{"))


async def test_two_workers_serve_one_port_and_the_admin_port_counts_every_request_once(
    upstream: RecordingUpstream, redis_server: RedisServer
) -> None:
    async with workers(upstream, redis_server) as pool:
        status = await pool.status()
        assert status["supervisor"]["workers_running"] == 2
        assert len({worker["pid"] for worker in status["workers"]}) == 2
        assert all(worker["ready"] for worker in status["workers"])
        sent = 40
        async with aiohttp.ClientSession() as session:
            for _ in range(sent):  # a new connection each: the kernel spreads them over the workers
                async with session.get(
                    pool.proxy + "/v1/public/futures", headers={"Connection": "close"}
                ) as response:
                    assert response.status == 200
        assert len(upstream.seen) == sent

        async def counted() -> dict[str, float] | None:
            samples = await pool.metrics()
            return samples if _requests_answered(samples) == sent else None

        samples = await wait_until_async(counted, timeout=10, interval=0.05)
        # Each worker is a replica of its own in Redis: two share each budget when Redis goes away.
        assert samples["seawall_state_replicas"] == 2
        assert samples["seawall_state_backend_up"] == 1
        assert samples['seawall_workers{state="running"}'] == 2
        # Both workers took requests: each forwarded some over an upstream connection of its own.
        workers_seen = (await pool.status())["workers"]
        assert all(worker["status"]["upstream_connections"]["open"] >= 1 for worker in workers_seen)
        # One valid exposition, each family once (the workers' files and the supervisor's own families).
        text = await pool.metrics_text()
        families = [line for line in text.splitlines() if line.startswith("# TYPE ")]
        assert len(families) == len(set(families))
        promtool = shutil.which("promtool")
        assert promtool is not None, "promtool is not installed: apt-get install prometheus"
        check = await asyncio.create_subprocess_exec(
            promtool,
            "check",
            "metrics",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        said, _ = await asyncio.wait_for(check.communicate(text.encode()), 30)
        assert check.returncode == 0, said


async def test_sigterm_drains_every_worker_then_exits_zero_with_no_worker_left(
    upstream: RecordingUpstream, redis_server: RedisServer
) -> None:
    release = asyncio.Event()
    upstream.responder = held_until(release, {"order_id": 7})
    async with workers(upstream, redis_server) as pool, aiohttp.ClientSession() as session:
        pids = await pool.pids()
        in_flight = asyncio.ensure_future(
            session.get(pool.proxy + "/v1/public/futures", headers={"Connection": "close"})
        )
        await wait_until(lambda: len(upstream.seen) == 1, timeout=10)

        async def one_in_flight() -> bool:  # a function gauge, sampled by its worker into the shared files
            return (await pool.metrics()).get("seawall_in_flight_requests") == 1

        await wait_until_async(one_in_flight, timeout=10, interval=0.05)
        pool.process.send_signal(signal.SIGTERM)
        port = int(pool.proxy.rpartition(":")[2])

        async def refusing() -> bool:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return True
            writer.close()
            return False

        await wait_until_async(refusing, timeout=15, interval=0.05)  # no worker accepts any more
        release.set()
        response = await in_flight
        assert response.status == 200
        assert (await response.json())["data"]["order_id"] == 7
        assert await asyncio.wait_for(pool.process.wait(), 30) == 0
        _, stderr = await pool.process.communicate()
        assert stderr.count(b"draining in-flight requests") == 2  # each worker drained
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


async def test_sighup_to_the_supervisor_reloads_every_worker(
    upstream: RecordingUpstream, redis_server: RedisServer
) -> None:
    async with workers(upstream, redis_server) as pool:
        pool.process.send_signal(signal.SIGHUP)

        async def reloaded() -> bool:  # the file is unchanged: each worker counts one "unchanged" reload
            samples = await pool.metrics()
            return samples.get('seawall_config_reloads_total{result="unchanged"}') == 2

        await wait_until_async(reloaded, timeout=10, interval=0.05)
        assert (await pool.status())["supervisor"]["workers_running"] == 2  # none died of the signal


async def test_a_killed_worker_is_restarted_while_the_others_serve_the_port(
    upstream: RecordingUpstream, redis_server: RedisServer
) -> None:
    async with workers(upstream, redis_server) as pool, aiohttp.ClientSession() as session:
        victim, survivor = await pool.pids()
        os.kill(victim, signal.SIGKILL)

        async def not_ready() -> dict[str, str] | None:  # until the new worker is up (a 0.5 s backoff first)
            async with session.get(pool.admin + "/readyz") as response:
                body = await response.json()
                return body["checks"] if response.status == 503 else None

        checks = await wait_until_async(not_ready, timeout=10, interval=0.02)
        named = {name.partition(" ")[0]: value for name, value in checks.items()}
        assert named["worker-1"] == "ok"
        assert named["worker-0"] != "ok"

        async def replaced() -> dict[str, Any] | None:
            slot = (await pool.status())["workers"][0]
            return slot if slot["pid"] not in (None, victim) and slot["ready"] else None

        slot = await wait_until_async(replaced, timeout=20, interval=0.05)
        assert slot["restarts"] == 1
        assert slot["last_exit_code"] == -signal.SIGKILL
        assert (await pool.pids())[1] == survivor
        assert (await pool.metrics())["seawall_worker_restarts_total"] == 1
        for _ in range(10):
            async with session.get(pool.proxy + "/v1/public/futures", headers={"Connection": "close"}) as r:
                assert r.status == 200
        pool.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(pool.process.wait(), 30) == 0
        _, stderr = await pool.process.communicate()
    restarted = [json.loads(line) for line in stderr.splitlines() if b"worker exited unexpectedly" in line]
    assert len(restarted) == 1
    assert restarted[0]["pid"] == victim
    assert restarted[0]["exit_code"] == -signal.SIGKILL


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--workers", "2"], {}, "--workers 2 needs shared state, but state.backend is memory"),
        ([], {"SEAWALL_WORKERS": "3"}, "SEAWALL_WORKERS='3' needs shared state"),
        (["--workers", "0"], {}, "--workers 0: must be a whole number from 1 to 64"),
        ([], {"SEAWALL_WORKERS": "many"}, "SEAWALL_WORKERS='many': must be a whole number"),
    ],
)
def test_a_worker_count_seawall_cannot_run_with_is_refused_with_what_to_do(
    args: list[str], env: dict[str, str], expected: str
) -> None:
    full_env = {**os.environ, "SEAWALL_LISTEN": "127.0.0.1:0", "SEAWALL_ADMIN_LISTEN": "127.0.0.1:0", **env}
    full_env.pop("SEAWALL_REDIS_URL", None)
    result = subprocess.run(
        [*SEAWALL, "run", *args], capture_output=True, text=True, timeout=30, env=full_env, check=False
    )
    assert result.returncode == 2
    assert expected in result.stderr
    if "shared state" in expected:  # what to do about it
        assert "state.redis.url" in result.stderr
        assert "SEAWALL_REDIS_URL" in result.stderr
    assert "Traceback" not in result.stderr
