"""`seawall simulate`: run the exchange simulator alone until SIGINT/SIGTERM.

    seawall simulate [--profile orderly|woox] [--host 127.0.0.1] [--port N]
                     [--account ID=CREDENTIAL]... [--accounts FILE] [--stream-OPTION VALUE]...

Which accounts exist and what they sign with is said in full by `seawall simulate --help` (`ACCOUNTS`
below); the README's "Trying it against the simulator" shows the same workflow end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import signal
import sys
from pathlib import Path
from typing import TextIO

from proxy.simulator.accounts import (
    Account,
    Credentials,
    load_accounts_file,
    merge_accounts,
    parse_account_spec,
)
from proxy.simulator.cli_stream import STREAMS, add_stream_options, stream_settings, stream_urls
from proxy.simulator.server import Simulator

ACCOUNTS = """\
accounts:
  With neither --account nor --accounts, the simulator creates ONE demo account at every start, with
  fresh random credentials, and prints them (and an `export ...` line for your bot's shell):
    orderly  account id 0x + 64 hex digits, one ed25519 key: `ed25519:<base58 public key>` and its
             secret, the base58 private seed (printed as `ed25519:<seed>`, the form Orderly's connector
             needs; ccxt woofipro takes it too). Clients send `orderly-account-id`, `orderly-key` and
             an ed25519 signature.
    woox     an API key (base64) and its HMAC secret (28 upper-case letters and digits); the account id
             (WOO X's application id) is the API key itself.
  Nothing else is accepted. An unknown key, an Orderly key sent with another account's id, a missing
  header or a timestamp more than 300 s from the simulator's clock is answered -1002 UNAUTHORIZED; a
  signature that does not verify -1001 on orderly, -1002 on woox (HTTP 401 either way).

  --account ID=CREDENTIAL (repeatable) and --accounts FILE name the accounts instead (both can be
  combined; no demo account is created then). The simulator, like the exchange, holds only what it
  verifies with:
    orderly  --account ACCOUNT_ID=ed25519:PUBLIC_KEY (repeat an id to give it several keys)
    woox     --account API_KEY=SECRET (the account id is the key; split at the last '=')
  FILE (YAML):
    accounts:
      - id: ACCOUNT_ID            # optional for woox: the first key then names the account
        keys:
          - ed25519:PUBLIC_KEY                        # orderly
          - {api_key: API_KEY, secret: SECRET}        # woox, or the string "API_KEY=SECRET"
  Examples: config/simulator-accounts.orderly.example.yaml, config/simulator-accounts.woox.example.yaml
  (their comments give the secrets that sign for them).

  Every account starts funded: orderly 100000 USDC; woox 100000 USDT, 2 BTC, 20 ETH.
  Control API on the same port: GET /__sim/info, GET /__sim/counters, GET|POST|DELETE /__sim/faults,
  POST /__sim/reset.
"""

# What the README's client snippets read their credentials from: the banner prints them in this form.
CREDENTIAL_VARIABLES = {
    "orderly": ("ORDERLY_ACCOUNT_ID", "ORDERLY_KEY", "ORDERLY_SECRET"),
    "woox": ("WOOX_APPLICATION_ID", "WOOX_API_KEY", "WOOX_API_SECRET"),
}


def credential_environment(creds: Credentials) -> dict[str, str]:
    """The environment variables a bot (and the README's snippets) reads the credentials from."""
    account, key, secret = CREDENTIAL_VARIABLES[creds.profile]
    signing_secret = "ed25519:" + creds.secret if creds.profile == "orderly" else creds.secret
    return {account: creds.account_id, key: creds.api_key, secret: signing_secret}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seawall simulate",
        description="Run the built-in exchange simulator (Orderly or WOO X) on loopback: real signature "
        "checks, the documented rate limits, orders, and a control API to inject faults.",
        epilog=ACCOUNTS + "\n" + STREAMS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profile", choices=("orderly", "woox"), default="orderly")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081, help="0 picks a free port (default 8081)")
    parser.add_argument(
        "--account",
        action="append",
        default=[],
        metavar="ID=CREDENTIAL",
        help="orderly: ACCOUNT_ID=ed25519:PUBLIC_KEY; woox: API_KEY=SECRET (repeatable; see below)",
    )
    parser.add_argument(
        "--accounts", type=Path, metavar="FILE", help="YAML file of accounts and their keys (see below)"
    )
    add_stream_options(parser)
    return parser


def accounts_from_args(args: argparse.Namespace) -> list[Account] | None:
    """The accounts named on the command line, or None (meaning: generate a demo account)."""
    accounts = [parse_account_spec(args.profile, spec) for spec in args.account]
    if args.accounts is not None:
        accounts += load_accounts_file(args.profile, args.accounts)
    return merge_accounts(accounts) if accounts else None


def print_banner(sim: Simulator, out: TextIO) -> None:
    print(f"Seawall exchange simulator ({sim.profile}) listening on {sim.base_url}", file=out)
    print(f"Control API: {sim.base_url}/__sim/info  (counters: /__sim/counters)", file=out)
    print(f"Streams: {stream_urls(sim.base_url)}", file=out)
    creds = sim.demo_credentials
    if creds is None:
        named = [
            f"{ident} ({len(account.keys)} key{'s' if len(account.keys) > 1 else ''})"
            for ident, account in sim.registry.accounts.items()
        ]
        print(f"Accounts: {', '.join(named)}", file=out)
    else:
        variables = credential_environment(creds)
        secret = variables[CREDENTIAL_VARIABLES[sim.profile][2]]
        key_label = "orderly key" if sim.profile == "orderly" else "api key"
        print("Demo account (generated at this start, funded):", file=out)
        print(f"  account id:  {creds.account_id}", file=out)
        print(f"  {key_label + ':':<12} {creds.api_key}", file=out)
        print(f"  secret:      {secret}", file=out)
        exports = " ".join(f"{name}={shlex.quote(value)}" for name, value in variables.items())
        print(f"  for a bot:   export {exports}", file=out)
        exchange = "woofipro" if sim.profile == "orderly" else "woo"
        config = json.dumps({**creds.ccxt_config(sim.base_url), "secret": secret})
        print(f"  ccxt:        ccxt.{exchange}({config})", file=out)
    print("Press Ctrl+C to stop.", file=out, flush=True)


async def serve(sim: Simulator, host: str, port: int, out: TextIO) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await sim.start(host, port)
        print_banner(sim, out)
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await sim.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point for `seawall simulate`; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        accounts = accounts_from_args(args)
        sim = Simulator(args.profile, accounts, stream=stream_settings(args))
    except KeyError as exc:  # a mapping in the accounts file without a field it needs
        print(f"seawall simulate: {args.accounts}: a key entry lacks {exc}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError) as exc:
        print(f"seawall simulate: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(sim, args.host, args.port, sys.stdout))
    except OSError as exc:
        print(f"seawall simulate: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
