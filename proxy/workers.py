"""`seawall run --workers N`: a supervisor and N worker processes that serve one proxy port together.

**Workers.** Each worker is `seawall run --worker`, a whole Seawall in a process of its own (the same
interpreter and entry point), so one worker's crash, blocked loop or garbage collection touches no other.
Each binds the proxy port with SO_REUSEPORT, and the kernel spreads new connections over them. The
supervisor holds the port too (bound, never listening: it takes no connection), so the port stays
Seawall's while every worker restarts, and a port of 0 is chosen once for all. The workers share
their decisions through Redis: with `state.backend: memory` each would spend the whole budget alone, so
more than one worker is refused at start (`worker_count`). Each worker counts as one replica in Redis
(its heartbeat), and so takes its share of every budget when Redis is away.

**The admin port** is the supervisor's: `/metrics` adds up every worker's metrics (prometheus-client's
multiprocess mode: each worker writes its values to files in a private directory, made empty at start
and removed at exit); `/status` is the supervisor's view plus each worker's own `/status`, fetched from
the worker's private admin listener on 127.0.0.1 (a port of its own, never the configured one);
`/readyz` is ready when every worker is, and names those that are not.

**Signals.** SIGTERM or SIGINT: forwarded to every worker, each drains as a single Seawall does; the
supervisor waits `server.shutdown_timeout` plus STOP_MARGIN, kills what is left (logged) and exits 0.
SIGHUP: forwarded (each worker reloads its config). Workers run in a session of their own, so a
terminal's Ctrl-C reaches the supervisor alone, and they watch a pipe from it, so a supervisor killed
outright leaves no worker behind.

**A worker that dies** is started again after a backoff (doubling from RESTART_BACKOFF up to
RESTART_BACKOFF_MAX while it keeps dying young), logged with its pid and exit code and counted
(`seawall_worker_restarts_total`); the other workers serve the port meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, multiprocess
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from proxy import __version__
from proxy.admin import AdminPages, json_answer, metrics_answer, readiness_answer
from proxy.answer import Answer
from proxy.config import SeawallConfig
from proxy.httpserver import HttpServer
from proxy.logs import log, setup_logging
from proxy.metrics import Metrics
from proxy.runtime import on_reload_signal, on_stop_signal, run_event_loop

MAX_WORKERS = 64
WORKER_START_TIMEOUT = 30.0  # from spawning a worker to its report that it listens
STOP_MARGIN = 5.0  # beyond server.shutdown_timeout, for a worker to close its state and exit
PEEK_TIMEOUT = 1.0  # a worker's own admin page, fetched for /status and /readyz
RESTART_BACKOFF = 0.5
RESTART_BACKOFF_MAX = 10.0
STABLE_AFTER = 10.0  # a worker that lived this long died of something new: its backoff starts over
DIRECTORY_PREFIX = "seawall-workers-"


class WorkersError(Exception):
    """A worker count Seawall cannot run with; the message says why and what to do."""


def worker_count(flag: str | None, env: Mapping[str, str], config: SeawallConfig) -> int:
    """The number of workers from `--workers` (first) or SEAWALL_WORKERS, checked against the config."""
    if flag is not None:
        given, named = flag, f"--workers {flag}"
    elif env.get("SEAWALL_WORKERS"):
        given = env["SEAWALL_WORKERS"]
        named = f"SEAWALL_WORKERS={given!r}"
    else:
        return 1
    try:
        count = int(given)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_WORKERS:
        raise WorkersError(f"{named}: must be a whole number from 1 to {MAX_WORKERS}")
    if count > 1 and config.state.backend != "redis":
        raise WorkersError(
            f"{named} needs shared state, but state.backend is {config.state.backend}: each worker would "
            "keep its own rate-limit windows, breakers and dedup entries, and spend the whole budget "
            "alone. Set state.redis.url (or SEAWALL_REDIS_URL) so the workers share state through "
            "Redis, or run one worker."
        )
    return count


def supervise(config: SeawallConfig, config_path: str | None, count: int) -> int:
    """Run the supervisor until a stop signal; its exit code (0 after a drain, 1 if it cannot start)."""
    setup_logging(config.logging.level)
    return run_event_loop(Supervisor(config, config_path, count).run)


@dataclass
class Worker:
    """One slot of the pool and the process that fills it now."""

    slot: int
    process: asyncio.subprocess.Process | None = None
    admin_url: str | None = None
    started_at: float = 0.0  # time.time() of the current process's start
    restarts: int = 0
    last_exit: int | None = None  # the previous process's exit code (negative: the signal)
    young_deaths: int = 0
    keeper: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def name(self) -> str:
        return f"worker-{self.slot}"


class Supervisor:
    def __init__(self, config: SeawallConfig, config_path: str | None, count: int) -> None:
        self.config = config
        self.config_path = config_path
        self.workers = [Worker(slot) for slot in range(count)]
        self.directory: Path | None = None
        self.metrics = Metrics()  # the supervisor's own admin listener (its refused connections)
        self.restarts = 0
        self._stopping = asyncio.Event()
        self._reserved: list[socket.socket] = []
        self._listen = ""
        self._admin: HttpServer | None = None
        self._session: aiohttp.ClientSession | None = None
        self._started_at = time.time()

    # -- lifecycle ---------------------------------------------------------------------------------
    async def run(self) -> int:
        try:
            self.directory = private_directory()
        except OSError as error:
            log.error(
                "cannot start: no directory for the workers' metrics", extra={"fields": {"error": str(error)}}
            )
            return 1
        try:
            return await self._run()
        finally:
            await self._close()
            shutil.rmtree(self.directory, ignore_errors=True)

    async def _run(self) -> int:
        stop = asyncio.Event()  # handled from the start: a stop during start-up drains what started
        undo = [on_stop_signal(stop.set), on_reload_signal(self._forward_reload)]
        try:
            return await self._serve(stop)
        finally:
            for undo_one in undo:
                undo_one()

    async def _serve(self, stop: asyncio.Event) -> int:
        try:
            self._reserve_port()
            await self._start_admin()
        except OSError as error:
            log.error("cannot start", extra={"fields": {"error": str(error)}})
            return 1
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PEEK_TIMEOUT))
        started = await asyncio.gather(*(self._spawn(worker) for worker in self.workers))
        if not all(started):
            log.error("cannot start: a worker did not come up", extra={"fields": self._summary()})
            await self._stop_workers()
            return 1
        for worker in self.workers:
            worker.keeper = asyncio.create_task(self._keep(worker))
        admin = self._admin.addresses[0] if self._admin is not None else ("", 0)
        print(
            f"seawall: proxy on http://{self._listen}, admin on http://{_host_port(*admin)} "
            f"({len(self.workers)} workers)",
            flush=True,
        )
        log.info("seawall workers started", extra={"fields": self._summary()})
        await stop.wait()
        log.info("stop signal received: draining every worker", extra={"fields": self._summary()})
        await self._stop_workers()
        log.info("seawall stopped")
        return 0

    async def _close(self) -> None:
        if self._admin is not None:
            await self._admin.stop(1.0)
        if self._session is not None:
            await self._session.close()
        for sock in self._reserved:
            sock.close()

    def _reserve_port(self) -> None:
        """Bind (never listen on) the proxy port with SO_REUSEPORT: the workers join it, and a port of 0
        becomes one port for all."""
        host, port = self.config.listen.host, self.config.listen.port
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            self._reserved.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address[0], port, *address[2:]))
            port = sock.getsockname()[1]
        self._listen = _host_port(host, port)

    async def _start_admin(self) -> None:
        site = AdminPages(
            self.config.server,
            {
                "/metrics": self._metrics_page,
                "/healthz": self._healthz,
                "/readyz": self._readyz,
                "/status": self._status,
            },
        )
        self._admin = HttpServer("admin", site, site.limits, self.metrics)
        await self._admin.start(self.config.admin_listen.host, self.config.admin_listen.port)

    # -- the workers -------------------------------------------------------------------------------
    async def _spawn(self, worker: Worker) -> bool:
        """Start the slot's process; True once it reported that it listens."""
        assert self.directory is not None
        argv = [sys.executable, "-m", "proxy", "run", "--worker"]
        if self.config_path is not None:
            argv += ["--config", self.config_path]
        env = {
            **os.environ,
            "PROMETHEUS_MULTIPROC_DIR": str(self.directory / "metrics"),
            "SEAWALL_LISTEN": self._listen,
            "SEAWALL_ADMIN_LISTEN": "127.0.0.1:0",  # private: the supervisor's admin port is the one
        }
        env.pop("SEAWALL_WORKERS", None)
        worker.admin_url = None
        worker.process = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdin=asyncio.subprocess.PIPE,  # never written: its end tells the worker the supervisor is gone
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor, which forwards it
        )
        worker.started_at = time.time()
        stdout = worker.process.stdout
        assert stdout is not None
        try:
            line = await asyncio.wait_for(stdout.readline(), WORKER_START_TIMEOUT)
            worker.admin_url = json.loads(line)["worker"]["admin"]
        except (TimeoutError, ValueError, KeyError, TypeError):
            if worker.running:
                log.error("worker did not report in time: killed", extra={"fields": self._about(worker)})
                worker.process.kill()
            await worker.process.wait()
            self._gone(worker)
            return False
        asyncio.create_task(_forward_output(stdout))  # noqa: RUF006 - ends with the process's stdout
        return True

    async def _keep(self, worker: Worker) -> None:
        """Wait for the slot's process to end; unless stopping, start another after a backoff."""
        while True:
            assert worker.process is not None
            code = await worker.process.wait()
            lived = time.time() - worker.started_at
            self._gone(worker)
            if self._stopping.is_set():
                return
            worker.young_deaths = 0 if lived >= STABLE_AFTER else worker.young_deaths + 1
            delay = min(RESTART_BACKOFF * 2 ** max(worker.young_deaths - 1, 0), RESTART_BACKOFF_MAX)
            worker.restarts += 1
            worker.last_exit = code
            self.restarts += 1
            log.error(
                "worker exited unexpectedly: restarting",
                extra={"fields": {**self._about(worker), "exit_code": code, "restart_in": delay}},
            )
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                if self._stopping.is_set():
                    return
                if await self._spawn(worker):
                    break
                delay = min(delay * 2, RESTART_BACKOFF_MAX)
                assert worker.process is not None
                log.error(
                    "worker did not come up: retrying",
                    extra={
                        "fields": {
                            **self._about(worker),
                            "exit_code": worker.process.returncode,
                            "restart_in": delay,
                        }
                    },
                )
            if self._stopping.is_set():  # the stop came while this one started: it drains like the others
                self._signal(worker, signal.SIGTERM)

    def _gone(self, worker: Worker) -> None:
        """A worker process ended: its gauges stop counting (prometheus-client's `live` modes)."""
        if worker.process is not None and self.directory is not None:
            multiprocess.mark_process_dead(worker.process.pid, str(self.directory / "metrics"))

    def _signal(self, worker: Worker, signum: int) -> None:
        if worker.running:
            assert worker.process is not None
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signum)

    def _signal_all(self, signum: int) -> None:
        for worker in self.workers:
            self._signal(worker, signum)

    def _forward_reload(self) -> None:
        log.info("SIGHUP: forwarded to every worker", extra={"fields": self._summary()})
        self._signal_all(signal.SIGHUP)

    async def _stop_workers(self) -> None:
        """SIGTERM to every worker, a bounded wait for their drains, SIGKILL to what is left."""
        self._stopping.set()
        self._signal_all(signal.SIGTERM)
        budget = self.config.server.shutdown_timeout + STOP_MARGIN
        waits: list[asyncio.Future[Any]] = [w.keeper for w in self.workers if w.keeper is not None]
        waits += [asyncio.ensure_future(w.process.wait()) for w in self.workers if w.process is not None]
        if waits:
            _, late = await asyncio.wait(waits, timeout=budget)
            for task in late:  # a keeper still starting a worker, or a wait on one that ignored SIGTERM
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        for worker in self.workers:
            if worker.running:
                assert worker.process is not None
                log.error(
                    "worker did not stop in time: killed",
                    extra={"fields": {**self._about(worker), "waited": budget}},
                )
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
                await worker.process.wait()
            self._gone(worker)

    # -- the admin pages ---------------------------------------------------------------------------
    async def _peek(self, worker: Worker, page: str) -> tuple[int, Any]:
        """A worker's own admin page: (HTTP status, JSON), or (0, why not) when it does not answer."""
        if not worker.running or worker.admin_url is None or self._session is None:
            return 0, "not running (restarting)" if not self._stopping.is_set() else "stopped"
        try:
            async with self._session.get(worker.admin_url + page) as response:
                return response.status, await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            return 0, f"no answer in {PEEK_TIMEOUT:g}s" if isinstance(error, TimeoutError) else str(error)

    async def _metrics_page(self) -> Answer:
        assert self.directory is not None
        registry = CollectorRegistry(auto_describe=False)
        registry.register(FleetCollector(self))
        return metrics_answer(registry)

    async def _healthz(self) -> Answer:
        running = sum(worker.running for worker in self.workers)
        return json_answer(200, {"status": "ok", "workers": len(self.workers), "workers_running": running})

    async def _readyz(self) -> Answer:
        peeks = await asyncio.gather(*(self._peek(worker, "/readyz") for worker in self.workers))
        return readiness_answer(
            _readiness(worker, status, body)
            for worker, (status, body) in zip(self.workers, peeks, strict=True)
        )

    async def _status(self) -> Answer:
        count = len(self.workers)
        pages = [self._peek(worker, page) for page in ("/status", "/readyz") for worker in self.workers]
        peeks = await asyncio.gather(*pages)
        statuses, readiness = peeks[:count], peeks[count:]
        workers = []
        for worker, (code, status), (ready_code, _) in zip(self.workers, statuses, readiness, strict=True):
            workers.append(
                {
                    "slot": worker.slot,
                    "pid": worker.pid if worker.running else None,
                    "up_since": _iso(worker.started_at) if worker.running else None,
                    "uptime_seconds": round(time.time() - worker.started_at, 3) if worker.running else None,
                    "restarts": worker.restarts,
                    "last_exit_code": worker.last_exit,
                    "ready": ready_code == 200,
                    "status": status if code == 200 else {"error": status},
                }
            )
        supervisor = {
            "pid": os.getpid(),
            "version": __version__,
            "uptime_seconds": round(time.time() - self._started_at, 3),
            "listen": self._listen,
            "workers": len(self.workers),
            "workers_running": sum(worker.running for worker in self.workers),
            "worker_restarts": self.restarts,
            "stopping": self._stopping.is_set(),
        }
        return json_answer(200, {"supervisor": supervisor, "workers": workers})

    # -- log fields --------------------------------------------------------------------------------
    def _about(self, worker: Worker) -> dict[str, Any]:
        return {"worker": worker.slot, "pid": worker.pid}

    def _summary(self) -> dict[str, Any]:
        pids = [worker.pid for worker in self.workers if worker.running]
        return {"workers": len(self.workers), "pids": pids, "listen": self._listen}


class FleetCollector:
    """The supervisor's /metrics: every worker's families added up from their files (each gauge by its
    `multiprocess_mode`, proxy/metrics.py), the supervisor's own admin listener's refusals added to the
    workers', and the pool's own families."""

    def __init__(self, supervisor: Supervisor) -> None:
        assert supervisor.directory is not None
        self._supervisor = supervisor
        self._files = multiprocess.MultiProcessCollector(None, path=str(supervisor.directory / "metrics"))

    def collect(self) -> Iterator[Metric]:
        own = {family.name: family for family in self._supervisor.metrics.listener_refused.collect()}
        for family in self._files.collect():
            mine = own.pop(family.name, None)
            if mine is not None:
                family.samples = _added(family.samples, mine.samples)
            yield family
        yield from own.values()
        supervisor = self._supervisor
        restarts = CounterMetricFamily(
            "seawall_worker_restarts",
            "Worker processes started again after one exited unexpectedly (seawall run --workers N).",
            value=supervisor.restarts,
        )
        workers = GaugeMetricFamily(
            "seawall_workers",
            "Worker processes of seawall run --workers N: configured, and running now.",
            labels=["state"],
        )
        workers.add_metric(["configured"], len(supervisor.workers))
        workers.add_metric(["running"], sum(worker.running for worker in supervisor.workers))
        yield restarts
        yield workers


def _added(samples: Iterable[Any], more: Iterable[Any]) -> list[Any]:
    """Two sample lists of one counter family, summed where name and labels are the same."""
    total: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}
    for sample in [*samples, *more]:
        key = (sample.name, tuple(sorted(sample.labels.items())))
        seen = total.get(key)
        total[key] = sample if seen is None else seen._replace(value=seen.value + sample.value)
    return list(total.values())


def _readiness(worker: Worker, status: int, body: Any) -> tuple[bool, str, str]:
    name = f"{worker.name()} (pid {worker.pid})" if worker.running else worker.name()
    if status == 200:
        return True, name, "ok"
    if status == 0:
        return False, name, str(body)
    checks = body.get("checks", {}) if isinstance(body, dict) else {}
    failing = [f"{check}: {value}" for check, value in checks.items() if value != "ok"]
    return False, name, "not ready: " + ("; ".join(failing) or f"HTTP {status}")


async def _forward_output(stream: asyncio.StreamReader) -> None:
    """A worker prints nothing after its report; whatever it does print goes on to the supervisor's."""
    while line := await stream.readline():
        sys.stdout.buffer.write(line)
        sys.stdout.flush()


def private_directory() -> Path:
    """A new, empty directory for the workers' metric files (under the system's temporary directory),
    after removing those left by supervisors that died without cleaning up."""
    base = Path(tempfile.gettempdir())
    for stale in base.glob(f"{DIRECTORY_PREFIX}*"):
        owner = stale.name.removeprefix(DIRECTORY_PREFIX).partition("-")[0]
        if owner.isdigit() and not _alive(int(owner)):
            shutil.rmtree(stale, ignore_errors=True)
    directory = Path(tempfile.mkdtemp(prefix=f"{DIRECTORY_PREFIX}{os.getpid()}-"))
    (directory / "metrics").mkdir()
    return directory


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _iso(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))
