"""`seawall simulate` (proxy.simulator.cli.main): accounts from flags and YAML, banner, clean exit."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from proxy.simulator.cli import accounts_from_args, build_parser, main
from proxy.simulator.signing import generate_orderly_keypair


def test_repeated_orderly_accounts_pool_their_keys() -> None:
    one, two = generate_orderly_keypair(), generate_orderly_keypair()
    args = build_parser().parse_args(
        ["--account", f"0xa={one.public_key}", "--account", f"0xa={two.public_key}"]
    )
    accounts = accounts_from_args(args)
    assert accounts is not None and len(accounts) == 1
    assert set(accounts[0].keys) == {one.public_key, two.public_key}
    assert accounts_from_args(build_parser().parse_args([])) is None


def test_yaml_file_maps_several_woox_keys_to_one_account(tmp_path: Path) -> None:
    path = tmp_path / "accounts.yaml"
    path.write_text(
        "accounts:\n  - id: desk\n    keys:\n      - {api_key: K1, secret: S1}\n      - K2==S2\n",
        encoding="utf-8",
    )
    args = build_parser().parse_args(["--profile", "woox", "--accounts", str(path), "--account", "K3=S3"])
    accounts = accounts_from_args(args)
    assert accounts is not None
    by_id = {a.account_id: a.keys for a in accounts}
    assert by_id == {"K3": {"K3": "S3"}, "desk": {"K1": "S1", "K2=": "S2"}}


@pytest.mark.parametrize(
    "argv",
    [
        ["--account", "0xa=not-a-key"],
        ["--profile", "woox", "--account", "no-separator"],
        ["--accounts", "/nonexistent/accounts.yaml"],
    ],
)
def test_bad_accounts_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "seawall simulate:" in capsys.readouterr().err


async def test_runs_until_sigterm_and_exits_0() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy.simulator.cli",
        "--port",
        "0",
        "--profile",
        "woox",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        banner: list[str] = []
        while not banner or not banner[-1].startswith("Press Ctrl+C"):
            line = await asyncio.wait_for(process.stdout.readline(), timeout=15)
            assert line, "the simulator exited early"
            banner.append(line.decode().strip())
        url = banner[0].rsplit(" ", 1)[1]
        assert any(line.startswith("secret:") for line in banner)
        async with aiohttp.ClientSession() as session, session.get(url + "/__sim/info") as answer:
            assert (await answer.json())["profile"] == "woox"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
