"""`seawall simulate`: run the exchange simulator alone until SIGINT/SIGTERM (PRODUCT.md §3, §5).

    seawall simulate [--profile orderly|woox] [--host 127.0.0.1] [--port N]
                     [--account ID=CREDENTIAL]... [--accounts FILE]

Accounts: orderly ``ACCOUNT_ID=ed25519:PUBLIC_KEY`` (repeat an id to give it several keys); woox
``API_KEY=SECRET`` (the account id is the key; a YAML file can map several keys to one account).
With none, a funded demo account is generated and its credentials printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import TextIO

from proxy.simulator.accounts import Account, load_accounts_file, merge_accounts, parse_account_spec
from proxy.simulator.server import Simulator


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seawall simulate",
        description="Run the built-in exchange simulator (Orderly or WOO X) on loopback.",
    )
    parser.add_argument("--profile", choices=("orderly", "woox"), default="orderly")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081, help="0 picks a free port (default 8081)")
    parser.add_argument(
        "--account",
        action="append",
        default=[],
        metavar="ID=CREDENTIAL",
        help="orderly: ACCOUNT_ID=ed25519:PUBLIC_KEY; woox: API_KEY=SECRET (repeatable)",
    )
    parser.add_argument("--accounts", type=Path, metavar="FILE", help="YAML file of accounts and keys")
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
    creds = sim.demo_credentials
    if creds is None:
        print(f"Accounts: {', '.join(sim.registry.accounts)}", file=out)
    else:
        key_label = "orderly key" if sim.profile == "orderly" else "api key"
        print("Demo account (generated, funded):", file=out)
        print(f"  account id:  {creds.account_id}", file=out)
        print(f"  {key_label + ':':<12} {creds.api_key}", file=out)
        print(f"  secret:      {creds.secret}", file=out)
        exchange = "woofipro" if sim.profile == "orderly" else "woo"
        config = json.dumps(creds.ccxt_config(sim.base_url))
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
        sim = Simulator(args.profile, accounts)
    except (ValueError, KeyError, OSError) as exc:
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
