"""Request signing and verification for Orderly (ed25519) and WOO X (HMAC-SHA256, v1 and v3).

Both halves live here so a client (tests, demo bots) and the simulator can never disagree about a
message format. Everything works on bytes and plain strings: no HTTP library is imported.

Formats (docs/exchanges.md, with sources):
- Orderly: ed25519 over ``timestamp + METHOD + path[?query] + body``; key ``ed25519:<base58 public>``;
  signature base64url without padding (ccxt) or standard base64 with padding (Orderly's connector).
- WOO X v1: hex HMAC-SHA256 over sorted ``k=v&...`` params + ``|`` + timestamp.
- WOO X v3: hex HMAC-SHA256 over ``timestamp + METHOD + path[?query] + body``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, unquote_plus, urlencode

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ORDERLY_KEY_PREFIX = "ed25519:"
_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {char: index for index, char in enumerate(_B58_ALPHABET)}


# --- base58 (Bitcoin alphabet, as Orderly keys use) ------------------------------------------------


def b58encode(data: bytes) -> str:
    """Encode bytes as base58; leading zero bytes become leading '1's."""
    number = int.from_bytes(data, "big")
    encoded = ""
    while number:
        number, remainder = divmod(number, 58)
        encoded = _B58_ALPHABET[remainder] + encoded
    leading_zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * leading_zeros + encoded


def b58decode(text: str) -> bytes:
    """Decode base58; raises ValueError on a character outside the alphabet."""
    number = 0
    for char in text:
        if char not in _B58_INDEX:
            raise ValueError(f"invalid base58 character {char!r}")
        number = number * 58 + _B58_INDEX[char]
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    leading_ones = len(text) - len(text.lstrip("1"))
    return b"\0" * leading_ones + body


# --- keys ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrderlyKeyPair:
    """An Orderly key: `secret` is the base58 32-byte seed (what ccxt calls `secret`), `public_key`
    is ``ed25519:<base58 public key>`` (the `orderly-key` header and ccxt's `apiKey`)."""

    secret: str
    public_key: str


def generate_orderly_keypair() -> OrderlyKeyPair:
    # A seed with a leading zero byte base58-encodes to fewer characters (one '1' per zero byte), and ccxt
    # decodes such a secret to a short seed and fails to sign ("Unable to load PEM file"): about one key
    # in 256. The exchange's own keys are used as printed, so draw another rather than hand bots a bad one.
    while True:
        seed = Ed25519PrivateKey.generate().private_bytes_raw()
        if seed[0] != 0:
            return OrderlyKeyPair(secret=b58encode(seed), public_key=orderly_public_key(seed))


def orderly_private_key(secret: str | bytes | Ed25519PrivateKey) -> Ed25519PrivateKey:
    """Accept a key object, a 32-byte seed, or its base58 text (optionally ``ed25519:``-prefixed)."""
    if isinstance(secret, Ed25519PrivateKey):
        return secret
    seed = secret if isinstance(secret, bytes) else b58decode(secret.removeprefix(ORDERLY_KEY_PREFIX))
    return Ed25519PrivateKey.from_private_bytes(seed)


def orderly_public_key(secret: str | bytes | Ed25519PrivateKey) -> str:
    raw = orderly_private_key(secret).public_key().public_bytes_raw()
    return ORDERLY_KEY_PREFIX + b58encode(raw)


def generate_woox_credentials() -> tuple[str, str]:
    """A random (api_key, secret) pair in WOO X's shapes: base64 key, upper-case alphanumeric secret."""
    api_key = base64.b64encode(secrets.token_bytes(16)).decode()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return api_key, "".join(secrets.choice(alphabet) for _ in range(28))


def now_ms() -> int:
    return int(time.time() * 1000)


# --- signing (clients) -----------------------------------------------------------------------------


def orderly_message(timestamp_ms: int | str, method: str, path_with_query: str, body: bytes = b"") -> bytes:
    return f"{timestamp_ms}{method.upper()}{path_with_query}".encode() + body


def orderly_signature(
    secret: str | bytes | Ed25519PrivateKey, message: bytes, *, standard_base64: bool = False
) -> str:
    """Sign; base64url without padding like ccxt, or standard padded base64 like Orderly's connector."""
    raw = orderly_private_key(secret).sign(message)
    if standard_base64:
        return base64.b64encode(raw).decode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def orderly_headers(
    account_id: str,
    secret: str | bytes | Ed25519PrivateKey,
    method: str,
    path_with_query: str,
    body: bytes = b"",
    timestamp_ms: int | None = None,
    *,
    standard_base64: bool = False,
) -> dict[str, str]:
    """Headers for one Orderly request; sign exactly the bytes you send."""
    ts = now_ms() if timestamp_ms is None else timestamp_ms
    message = orderly_message(ts, method, path_with_query, body)
    headers = {
        "orderly-account-id": account_id,
        "orderly-key": orderly_public_key(secret),
        "orderly-timestamp": str(ts),
        "orderly-signature": orderly_signature(secret, message, standard_base64=standard_base64),
    }
    # Orderly docs: JSON for POST/PUT, form-urlencoded for GET/DELETE (docs/exchanges.md).
    headers["content-type"] = (
        "application/json" if method.upper() in ("POST", "PUT") else "application/x-www-form-urlencoded"
    )
    return headers


def sorted_params(params: Mapping[str, object] | Iterable[tuple[str, object]]) -> str:
    """WOO X v1 "normalized content": params sorted by key, joined raw as ``k=v&...``."""
    pairs = list(params.items()) if isinstance(params, Mapping) else list(params)
    return "&".join(f"{key}={value}" for key, value in sorted(pairs, key=lambda pair: pair[0]))


def hmac_hex(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def woox_v1_signature(secret: str, params: str, timestamp_ms: int | str) -> str:
    return hmac_hex(secret, f"{params}|{timestamp_ms}".encode())


def woox_v1_headers(
    api_key: str, secret: str, method: str, params: str, timestamp_ms: int | None = None
) -> dict[str, str]:
    """Headers for a WOO X v1 request; `params` is the sorted ``k=v&...`` string you send (query for
    GET, form body for POST/DELETE)."""
    ts = now_ms() if timestamp_ms is None else timestamp_ms
    return {
        "x-api-key": api_key,
        "x-api-timestamp": str(ts),
        "x-api-signature": woox_v1_signature(secret, params, ts),
        "content-type": "application/x-www-form-urlencoded",
    }


def woox_v3_signature(
    secret: str, timestamp_ms: int | str, method: str, path_with_query: str, body: bytes = b""
) -> str:
    return hmac_hex(secret, f"{timestamp_ms}{method.upper()}{path_with_query}".encode() + body)


def woox_v3_headers(
    api_key: str,
    secret: str,
    method: str,
    path_with_query: str,
    body: bytes = b"",
    timestamp_ms: int | None = None,
) -> dict[str, str]:
    ts = now_ms() if timestamp_ms is None else timestamp_ms
    headers = {
        "x-api-key": api_key,
        "x-api-timestamp": str(ts),
        "x-api-signature": woox_v3_signature(secret, ts, method, path_with_query, body),
    }
    if body:
        headers["content-type"] = "application/json"
    return headers


# --- verifying (the simulator) ---------------------------------------------------------------------


def decode_signature_base64(signature: str) -> bytes:
    """Both alphabets, padded or not (ccxt: base64url bare; Orderly connector: standard, padded)."""
    normalized = signature.strip().replace("-", "+").replace("_", "/").rstrip("=")
    normalized += "=" * (-len(normalized) % 4)
    try:
        return base64.b64decode(normalized, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("signature is not base64") from exc


def decode_orderly_public_key(key: str) -> Ed25519PublicKey:
    if not key.startswith(ORDERLY_KEY_PREFIX):
        raise ValueError("orderly-key must start with 'ed25519:'")
    raw = b58decode(key.removeprefix(ORDERLY_KEY_PREFIX))
    if len(raw) != 32:
        raise ValueError("an ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def target_variants(path_with_query: str) -> list[str]:
    """The request target as received, and its query percent-decoded: both ccxt and Orderly's connector
    sign the query unencoded and send it encoded (docs/exchanges.md), so the exchange must accept either."""
    path, sep, query = path_with_query.partition("?")
    variants = [path_with_query]
    if sep:
        for decoded in (unquote(query), unquote_plus(query)):
            candidate = f"{path}?{decoded}"
            if candidate not in variants:
                variants.append(candidate)
    return variants


def verify_orderly(
    public_key: str, signature: str, timestamp: str, method: str, path_with_query: str, body: bytes
) -> bool:
    """True when `signature` is a valid ed25519 signature by `public_key` over the message built from
    the raw target (or its decoded query) and the raw body. Raises ValueError on a malformed key or
    signature (the exchange answers those differently from a mismatch)."""
    verifier = decode_orderly_public_key(public_key)
    raw_signature = decode_signature_base64(signature)
    for target in target_variants(path_with_query):
        try:
            verifier.verify(raw_signature, orderly_message(timestamp, method, target, body))
        except InvalidSignature:
            continue
        return True
    return False


def _same_hex(expected: str, received: str) -> bool:
    # ccxt sends lower-case hex, hummingbot and WOO's sample MM upper-case (docs/exchanges.md).
    return hmac.compare_digest(expected, received.strip().lower())


def woox_v1_candidates(raw_query: str, raw_body: bytes) -> list[str]:
    """The normalized strings a v1 client may have signed. Params from query and form body are merged
    because clients disagree on where DELETE params travel (ccxt: body; hummingbot: query)."""
    text_body = raw_body.decode("utf-8", errors="replace")
    pairs = parse_qsl(raw_query, keep_blank_values=True) + parse_qsl(text_body, keep_blank_values=True)
    ordered = sorted(pairs, key=lambda pair: pair[0])
    candidates = [sorted_params(ordered), urlencode(ordered)]
    # A client that sorted before encoding signed exactly what it sent.
    for raw in (raw_query, text_body):
        if raw and raw not in candidates:
            candidates.append(raw)
    return candidates


def verify_woox_v1(secret: str, signature: str, timestamp: str, raw_query: str, raw_body: bytes) -> bool:
    return any(
        _same_hex(woox_v1_signature(secret, candidate, timestamp), signature)
        for candidate in woox_v1_candidates(raw_query, raw_body)
    )


def verify_woox_v3(
    secret: str, signature: str, timestamp: str, method: str, path_with_query: str, body: bytes
) -> bool:
    return any(
        _same_hex(woox_v3_signature(secret, timestamp, method, target, body), signature)
        for target in target_variants(path_with_query)
    )
