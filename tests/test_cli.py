"""The `seawall` command: run with env overrides, drain on SIGTERM, check-config, --version, --help."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from fixtures_proxy import RecordingUpstream, held_until, wait_until, wait_until_async

SEAWALL = [sys.executable, "-m", "proxy"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _healthy(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as session, session.get(url + "/healthz") as r:
            return r.status == 200
    except aiohttp.ClientError:
        return False


async def test_run_serves_with_env_overrides_and_drains_on_sigterm(upstream: RecordingUpstream) -> None:
    release = asyncio.Event()

    upstream.responder = held_until(release, {"order_id": 1})
    proxy_port, admin_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "SEAWALL_UPSTREAM": upstream.url,
        "SEAWALL_LISTEN": f"127.0.0.1:{proxy_port}",
        "SEAWALL_ADMIN_LISTEN": f"127.0.0.1:{admin_port}",
        "SEAWALL_PROFILE": "woox",
    }
    process = await asyncio.create_subprocess_exec(
        *SEAWALL, "run", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        admin = f"http://127.0.0.1:{admin_port}"
        await wait_until_async(lambda: _healthy(admin), timeout=15, interval=0.05)
        async with aiohttp.ClientSession() as session:
            async with session.get(admin + "/status") as r:
                assert (await r.json())["profile"] == "woox"
            in_flight = asyncio.ensure_future(
                session.post(f"http://127.0.0.1:{proxy_port}/v1/order", data=b"a=1")
            )
            await wait_until(lambda: len(upstream.seen) == 1)
            process.send_signal(signal.SIGTERM)

            async def refusing() -> bool:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
                except OSError:
                    return True
                writer.close()
                return False

            # Stopped accepting while the order is still in flight:
            await wait_until_async(refusing, timeout=15, interval=0.05)
            release.set()
            response = await in_flight
            assert response.status == 200
            assert (await response.json())["data"]["order_id"] == 1
        assert await asyncio.wait_for(process.wait(), 20) == 0
        _, stderr = await process.communicate()
        assert b"draining" in stderr
    finally:
        release.set()
        if process.returncode is None:
            process.kill()
            await process.wait()


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SEAWALL, *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


def test_check_config_prints_effective_config_with_secrets_redacted(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "profile: woox\nidentity:\n  key_accounts: {TopSecretKey42: desk-1}\n"
        "state:\n  backend: redis\n  redis: {url: 'redis://:pw-hunter2@127.0.0.1:6379/0'}\n"
    )
    result = _cli("check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert "url: https://api.woox.io" in result.stdout
    assert "order.place.v3" in result.stdout
    assert "TopSecretKey42" not in result.stdout
    assert "pw-hunter2" not in result.stdout


def test_check_config_fails_naming_key_and_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("profile: orderly\nupstream:\n  url: https://api-evm.orderly.org\n  timeuot: 3\n")
    result = _cli("check-config", str(path))
    assert result.returncode != 0
    assert "upstream.timeuot: unknown key" in result.stderr
    assert "line 4" in result.stderr


def test_run_with_invalid_config_exits_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("listen: 99999\n")
    result = _cli("run", "--config", str(path))
    assert result.returncode == 2
    assert "listen" in result.stderr
    assert "Traceback" not in result.stderr


def test_version_and_help_on_every_command() -> None:
    assert _cli("--version").stdout.startswith("seawall ")
    for command in ([], ["run"], ["check-config"]):
        result = _cli(*command, "--help")
        assert result.returncode == 0
        assert "usage:" in result.stdout


@pytest.mark.parametrize("command", ["simulate", "demo"])
def test_delegated_commands_have_help(command: str) -> None:
    result = _cli(command, "--help")
    assert result.returncode == 0
    assert "usage:" in result.stdout
