"""Accounts and the keys that sign for them.

Like the exchange, the simulator holds only what it needs to verify: Orderly public keys
(``ed25519:<base58>``; several keys may belong to one account) and WOO X (api_key -> secret) pairs (the
rate limits of WOO X are per account, so keys map to an account). Demo accounts also keep the private
half so the CLI can print credentials a bot can use.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from proxy.simulator.signing import (
    ORDERLY_KEY_PREFIX,
    decode_orderly_public_key,
    generate_orderly_keypair,
    generate_woox_credentials,
)

PROFILES = ("orderly", "woox")


@dataclass(slots=True)
class Account:
    """`keys` maps each API key to its secret (WOO X) or to None (Orderly: public keys only)."""

    account_id: str
    keys: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a client signs with. Orderly: `api_key` is ``ed25519:<base58 public>``, `secret` the base58
    private seed; WOO X: the API key and its HMAC secret."""

    profile: str
    account_id: str
    api_key: str
    secret: str

    def ccxt_config(self, base_url: str) -> dict[str, Any]:
        """Config for ccxt `woofipro` (orderly) or `woo` (woox) pointed at `base_url`; ccxt.pro's
        streams too (`ws://` + the same host: `/ws/stream`, `/v2/ws/private/stream`, ccxt appends the id)."""
        ws_base = "ws" + base_url.removeprefix("http") if base_url.startswith("http") else base_url
        streams = {"public": ws_base + "/ws/stream", "private": ws_base + "/v2/ws/private/stream"}
        if self.profile == "orderly":
            return {
                "apiKey": self.api_key,
                "secret": self.secret,
                "accountId": self.account_id,
                "urls": {"api": {"public": base_url, "private": base_url, "ws": streams}},
            }
        return {
            "apiKey": self.api_key,
            "secret": self.secret,
            "uid": self.account_id,
            "urls": {"api": {"pub": base_url, "public": base_url, "private": base_url, "ws": streams}},
        }


def generate_account(profile: str, account_id: str | None = None) -> tuple[Account, Credentials]:
    """A fresh account with one generated key (Orderly account ids look like 0x + 64 hex)."""
    if profile == "orderly":
        pair = generate_orderly_keypair()
        ident = account_id or "0x" + secrets.token_hex(32)
        return Account(ident, {pair.public_key: None}), Credentials(
            profile, ident, pair.public_key, pair.secret
        )
    api_key, secret = generate_woox_credentials()
    ident = account_id or api_key
    return Account(ident, {api_key: secret}), Credentials(profile, ident, api_key, secret)


def parse_account_spec(profile: str, spec: str) -> Account:
    """`--account` values. orderly: ``ACCOUNT_ID=ed25519:PUBLIC_KEY``. woox: ``API_KEY=SECRET`` whose
    account id is the key; split at the LAST '=' because WOO X API keys are base64 and may end in '='
    (the published example key is ``AbmyVJGUpN064ks5ELjLfA==``) while secrets are alphanumeric."""
    if profile == "orderly":
        ident, sep, key = spec.partition("=")
        if not sep or not ident or not key.startswith(ORDERLY_KEY_PREFIX):
            raise ValueError(f"--account {spec!r}: expected ACCOUNT_ID=ed25519:PUBLIC_KEY")
        decode_orderly_public_key(key)
        return Account(ident, {key: None})
    api_key, sep, secret = spec.rpartition("=")
    if not sep or not api_key or not secret:
        raise ValueError(f"--account {spec!r}: expected API_KEY=SECRET")
    return Account(api_key, {api_key: secret})


def load_accounts_file(profile: str, path: Path) -> list[Account]:
    """YAML: ``accounts: [{id: ..., keys: [...]}]``. Orderly keys are ``ed25519:...`` strings; WOO X
    keys are ``{api_key: ..., secret: ...}`` mappings (or ``"KEY=SECRET"`` strings)."""
    document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    rows = document.get("accounts") if isinstance(document, dict) else None
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a top-level 'accounts' list")
    accounts = []
    for index, row in enumerate(rows):
        if not isinstance(row, dict) or "keys" not in row:
            raise ValueError(f"{path}: accounts[{index}] needs 'id' and 'keys'")
        keys: dict[str, str | None] = {}
        for key in row["keys"]:
            if isinstance(key, dict):
                keys[str(key["api_key"])] = str(key["secret"])
            elif profile == "orderly":
                decode_orderly_public_key(str(key))
                keys[str(key)] = None
            else:
                api_key, _, secret = str(key).rpartition("=")
                keys[api_key] = secret
        ident = str(row.get("id") or next(iter(keys)))
        accounts.append(Account(ident, keys))
    return merge_accounts(accounts)


def merge_accounts(accounts: Iterable[Account]) -> list[Account]:
    """Accounts named twice (e.g. a repeated --account with the same id) pool their keys."""
    merged: dict[str, Account] = {}
    for account in accounts:
        merged.setdefault(account.account_id, Account(account.account_id)).keys.update(account.keys)
    return list(merged.values())


class AccountRegistry:
    """Key -> account lookup; a key may belong to one account only."""

    def __init__(self, profile: str, accounts: Iterable[Account]) -> None:
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; expected one of {PROFILES}")
        self.profile = profile
        self.accounts = {account.account_id: account for account in merge_accounts(accounts)}
        self._by_key: dict[str, Account] = {}
        for account in self.accounts.values():
            for key in account.keys:
                owner = self._by_key.setdefault(key, account)
                if owner is not account:
                    raise ValueError(f"key {key[:12]}... belongs to two accounts")

    def by_key(self, key: str) -> Account | None:
        return self._by_key.get(key)
