"""`seawall simulate` (proxy.simulator.cli.main): accounts from flags and YAML, banner, clean exit, and a
`--help` that says exactly which credentials the simulator accepts."""

from __future__ import annotations

import asyncio
import re
import shlex
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
import yaml
from fixtures_simulator import SignedClient

from proxy.simulator import Credentials
from proxy.simulator.cli import CREDENTIAL_VARIABLES, accounts_from_args, build_parser, main
from proxy.simulator.signing import generate_orderly_keypair, orderly_public_key

ROOT = Path(__file__).resolve().parents[1]


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


@asynccontextmanager
async def simulate(*args: str) -> AsyncIterator[tuple[str, list[str]]]:
    """`seawall simulate --port 0 ARGS` as a process: yields (base URL, banner lines); stops it after."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "simulate",
        "--port",
        "0",
        *args,
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
        yield banner[0].rsplit(" ", 1)[1], banner
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _holding(base_url: str, creds: Credentials) -> tuple[int, dict[str, float]]:
    """A signed private call (balances) as a bot makes it: (HTTP status, token -> amount)."""
    async with aiohttp.ClientSession() as session:
        client = SignedClient(session, base_url, creds)
        if creds.profile == "orderly":
            answer = await client.orderly("GET", "/v1/client/holding")
            rows = answer.json.get("data", {}).get("holding", []) if answer.status == 200 else []
            return answer.status, {row["token"]: row["holding"] for row in rows}
        answer = await client.v1("GET", "/v1/client/holding")
        return answer.status, dict(answer.json.get("holding", {})) if answer.status == 200 else {}


def test_help_says_which_credentials_are_accepted_and_the_accounts_file_format(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    # Without accounts: one demo account, fresh credentials each start, printed; nothing else accepted.
    assert "creates ONE demo account at every start" in text
    assert "fresh random credentials, and prints them" in text
    assert "-1002 UNAUTHORIZED" in text and "-1001" in text
    # What each profile's credentials are, and the file format.
    assert "--account ACCOUNT_ID=ed25519:PUBLIC_KEY" in text and "--account API_KEY=SECRET" in text
    assert "{api_key: API_KEY, secret: SECRET}" in text
    examples = re.findall(r"config/simulator-accounts\.\w+\.example\.yaml", text)
    assert sorted(examples) == [
        "config/simulator-accounts.orderly.example.yaml",
        "config/simulator-accounts.woox.example.yaml",
    ]
    for example in examples:
        assert (ROOT / example).is_file(), example


def _example_credentials(profile: str) -> list[Credentials]:
    """Every key of the shipped example file with the secret its comments give for it."""
    path = ROOT / "config" / f"simulator-accounts.{profile}.example.yaml"
    text = path.read_text()
    accounts = yaml.safe_load(text)["accounts"]
    creds = []
    if profile == "orderly":
        secrets = re.findall(r"secret: (ed25519:\w+)", text)
        owner = {key: account["id"] for account in accounts for key in account["keys"]}
        for secret in secrets:
            public = orderly_public_key(secret)
            creds.append(Credentials(profile, owner[public], public, secret))
        assert {c.api_key for c in creds} == set(owner), "every example key needs its secret documented"
        return creds
    for account in accounts:
        for key in account["keys"]:
            api_key, secret = (key["api_key"], key["secret"]) if isinstance(key, dict) else key.rsplit("=", 1)
            creds.append(Credentials(profile, account.get("id", api_key), api_key, secret))
    return creds


@pytest.mark.parametrize("profile", ["orderly", "woox"])
async def test_the_example_accounts_files_load_and_their_keys_sign_requests(profile: str) -> None:
    example = ROOT / "config" / f"simulator-accounts.{profile}.example.yaml"
    creds = _example_credentials(profile)
    async with simulate("--profile", profile, "--accounts", str(example)) as (url, banner):
        accounts = next(line for line in banner if line.startswith("Accounts: "))
        for account_id in {c.account_id for c in creds}:
            assert account_id in accounts
        funded = {"orderly": {"USDC": 100000}, "woox": {"USDT": 100000, "BTC": 2, "ETH": 20}}[profile]
        for cred in creds:
            assert await _holding(url, cred) == (200, funded)
        # And nothing else signs: a key that is not in the file is refused.
        stranger = Credentials(profile, creds[0].account_id, *_fresh_key(profile))
        assert (await _holding(url, stranger))[0] == 401


def _fresh_key(profile: str) -> tuple[str, str]:
    if profile == "orderly":
        pair = generate_orderly_keypair()
        return pair.public_key, pair.secret
    return "c3RyYW5nZXIta2V5LTAwMQ==", "STRANGERSECRET0000000000000"


@pytest.mark.parametrize("profile", ["orderly", "woox"])
async def test_the_demo_account_banner_gives_credentials_a_bot_can_sign_with(profile: str) -> None:
    async with simulate("--profile", profile) as (url, banner):
        export = next(line for line in banner if line.startswith("for a bot:"))
        variables = dict(word.split("=", 1) for word in shlex.split(export.removeprefix("for a bot:"))[1:])
        account, key, secret = CREDENTIAL_VARIABLES[profile]
        creds = Credentials(profile, variables[account], variables[key], variables[secret])
        status, holding = await _holding(url, creds)
        assert status == 200 and holding


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
