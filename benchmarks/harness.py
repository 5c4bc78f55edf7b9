"""What the benchmark scripts share: free loopback ports, waiting for a server, a simulator process and
`seawall run` processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, timeout: float = 20.0) -> None:
    """Poll `url` until it answers; exit the benchmark if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def start_seawall(
    config: Path,
    upstream: str,
    proxy_port: int,
    admin_port: int,
    env: Mapping[str, str] | None = None,
    command: Sequence[str] | None = None,
) -> subprocess.Popen[bytes]:
    """`seawall run --config CONFIG` (or `command`, configured the same way) against `upstream` on the
    given loopback ports; the caller waits for its admin listener."""
    overrides = {
        "SEAWALL_UPSTREAM": upstream,
        "SEAWALL_LISTEN": f"127.0.0.1:{proxy_port}",
        "SEAWALL_ADMIN_LISTEN": f"127.0.0.1:{admin_port}",
        **(env or {}),
    }
    return subprocess.Popen(
        command or [sys.executable, "-m", "proxy", "run", "--config", str(config)],
        env={**os.environ, **overrides},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )


def start_simulator(port: int, account: str, public_key: str) -> subprocess.Popen[bytes]:
    """`seawall simulate` (orderly) on 127.0.0.1:port with one account, ready when this returns."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "proxy",
            "simulate",
            "--port",
            str(port),
            "--account",
            f"{account}={public_key}",
        ],
        stdout=subprocess.DEVNULL,
        cwd=ROOT,
    )
    wait_ready(f"http://127.0.0.1:{port}/__sim/counters")
    return process


def stop_all(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """Stop every process started for a run: all asked at once, then each waited for."""
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(10)
