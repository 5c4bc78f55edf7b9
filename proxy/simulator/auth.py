"""Signature checks on the raw request, per profile, answering like the exchange.

- Orderly (docs/exchanges.md, "Orderly"): `orderly-account-id`, `orderly-key`, `orderly-timestamp`,
  `orderly-signature`; ed25519 over the raw target (or its decoded query) and raw body; timestamp within
  300 s; the key must be registered to the named account.
- WOO X (docs/exchanges.md, "WOO X"): `x-api-key`, `x-api-timestamp`, `x-api-signature`; v1 (sorted
  params + "|" + ts) for /v1 and /v2 paths, v3 (ts + METHOD + target + body) for /v3 paths; same 300 s
  window (WOO publishes none; Orderly's is the plausible default, an assumption).

Codes: a missing header, an unknown key, a key of another account or a stale timestamp -> -1002
UNAUTHORIZED; a malformed key, timestamp or signature -> -1001. A signature that does not verify is
-1001 on Orderly (INVALID_SIGNATURE) and -1002 on WOO X, whose support article about -1002 is precisely
about wrongly computed signatures (docs/exchanges.md, sources). Both are HTTP 401.

Private streams (`verify_stream`): the `auth` params sign the bare timestamp — Orderly `orderly_key`,
`sign` (ed25519 over the timestamp, base64 of either alphabet), `timestamp`; WOO X `apikey`, `sign` (hex
HMAC-SHA256 over ``"|" + timestamp``), `timestamp` — with the same window, and the key must belong to
the account the URL names. A refusal carries a short reason for the simulator's counters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from proxy.simulator.accounts import Account, AccountRegistry
from proxy.simulator.errors import SimError
from proxy.simulator.routing import SimRequest
from proxy.simulator.signing import now_ms, verify_orderly, verify_woox_v1, verify_woox_v3

ORDERLY_HEADERS = ("orderly-account-id", "orderly-key", "orderly-timestamp", "orderly-signature")
WOOX_HEADERS = ("x-api-key", "x-api-timestamp", "x-api-signature")
STREAM_PARAMS = {"orderly": ("orderly_key", "sign", "timestamp"), "woox": ("apikey", "sign", "timestamp")}


class Authenticator:
    def __init__(
        self,
        registry: AccountRegistry,
        window_ms: int = 300_000,
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        self.registry = registry
        self.window_ms = window_ms
        self._clock_ms = clock_ms

    def verify(self, request: SimRequest) -> tuple[Account, str]:
        """The account and key that signed `request`, or SimError(-1001/-1002)."""
        if self.registry.profile == "orderly":
            return self._orderly(request)
        return self._woox(request)

    def _headers(self, request: SimRequest, names: tuple[str, ...]) -> list[str]:
        values = [request.headers.get(name, "").strip() for name in names]
        missing = [name for name, value in zip(names, values, strict=True) if not value]
        if missing:
            raise SimError(-1002, f"The request is unauthorized: missing {', '.join(missing)}.")
        return values

    def _timestamp(self, raw: str) -> None:
        if not raw.isdigit():
            raise SimError(-1001, "The timestamp must be a 13-digit number of milliseconds.")
        if abs(self._clock_ms() - int(raw)) > self.window_ms:
            raise SimError(-1002, "The request is unauthorized: timestamp expired.")

    def _orderly(self, request: SimRequest) -> tuple[Account, str]:
        account_id, key, timestamp, signature = self._headers(request, ORDERLY_HEADERS)
        self._timestamp(timestamp)
        account = self.registry.by_key(key)
        if account is None or account.account_id != account_id:
            raise SimError(-1002, "The orderly key is not registered to this account.")
        try:
            valid = verify_orderly(key, signature, timestamp, request.method, request.target, request.body)
        except ValueError as exc:
            raise SimError(-1001, f"The api key or secret is in wrong format: {exc}.") from None
        if not valid:
            raise SimError(-1001, "The signature does not match the request.")
        return account, key

    def _woox(self, request: SimRequest) -> tuple[Account, str]:
        key, timestamp, signature = self._headers(request, WOOX_HEADERS)
        self._timestamp(timestamp)
        account = self.registry.by_key(key)
        secret = account.keys.get(key) if account else None
        if account is None or secret is None:
            raise SimError(-1002)
        if request.path.startswith("/v3/"):
            valid = verify_woox_v3(secret, signature, timestamp, request.method, request.target, request.body)
        else:
            valid = verify_woox_v1(secret, signature, timestamp, request.raw_query, request.body)
        if not valid:
            raise SimError(-1002, "The request is unauthorized: the signature does not match.")
        return account, key

    def verify_stream(self, stream_id: str, params: Mapping[str, Any]) -> Account:
        """The account whose key signed this private-stream auth, or SimError(-1001/-1002, reason)."""
        values = [params.get(name) for name in STREAM_PARAMS[self.registry.profile]]
        if not all(isinstance(v, str | int) and not isinstance(v, bool) and str(v) for v in values):
            raise SimError(-1002, "missing_params")
        key, signature, timestamp = (str(value).strip() for value in values)
        if not timestamp.isdigit():
            raise SimError(-1001, "bad_timestamp")
        if abs(self._clock_ms() - int(timestamp)) > self.window_ms:
            raise SimError(-1002, "stale_timestamp")
        account = self.registry.by_key(key)
        if account is None:
            raise SimError(-1002, "unknown_key")
        if account.account_id != stream_id:
            raise SimError(-1002, "other_account")
        if self.registry.profile == "orderly":
            try:
                valid = verify_orderly(key, signature, timestamp, "", "", b"")
            except ValueError:
                raise SimError(-1001, "malformed_signature") from None
        else:
            secret = account.keys.get(key) or ""
            valid = verify_woox_v1(secret, signature, timestamp, "", b"")
        if not valid:
            raise SimError(-1001 if self.registry.profile == "orderly" else -1002, "bad_signature")
        return account
