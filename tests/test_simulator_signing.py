"""Signatures are verified for real, on the bytes received, in every form real clients send."""

from __future__ import annotations

import aiohttp
import orjson
import pytest
from fixtures_simulator import SignedClient, SimFactory, client_for

from proxy.simulator import Account, Credentials, Simulator
from proxy.simulator.accounts import parse_account_spec
from proxy.simulator.signing import (
    b58decode,
    b58encode,
    generate_orderly_keypair,
    now_ms,
    orderly_headers,
    verify_orderly,
    verify_woox_v1,
    verify_woox_v3,
    woox_v1_headers,
    woox_v1_signature,
    woox_v3_headers,
    woox_v3_signature,
)

WOO_SECRET = "QHKRXHPAW1MC9YGZMAT8YDJG2HPR"
WOO_KEY = "AbmyVJGUpN064ks5ELjLfA=="
WOO_TS = 1578565539808
WOO_V1_PARAMS = "order_price=9000&order_quantity=0.11&order_type=LIMIT&side=BUY&symbol=SPOT_BTC_USDT"
WOO_V1_SIGNATURE = "20da0852f73b20da0208c7e627975a59ff072379883d8457d03104651032033d"
WOO_V3_SIGNATURE = "fddab579aff8c193f920c2d4f0cda6a21a60f06fd9c3916541ecc4f6461f5977"


def test_published_woox_v1_vector() -> None:
    assert woox_v1_signature(WOO_SECRET, WOO_V1_PARAMS, WOO_TS) == WOO_V1_SIGNATURE


def test_published_woox_v3_vector() -> None:
    assert woox_v3_signature(WOO_SECRET, WOO_TS, "GET", "/v3/algo/orders?algoType=STOP") == WOO_V3_SIGNATURE
    assert verify_woox_v3(
        WOO_SECRET, WOO_V3_SIGNATURE, str(WOO_TS), "GET", "/v3/algo/orders?algoType=STOP", b""
    )


def test_v3_signs_the_raw_body_not_a_reserialization() -> None:
    body = b'{"symbol": "PERP_BTC_USDT", "side": "BUY"}'
    signature = woox_v3_signature(WOO_SECRET, WOO_TS, "POST", "/v3/algo/order", body)
    assert verify_woox_v3(WOO_SECRET, signature, str(WOO_TS), "POST", "/v3/algo/order", body)
    compact = orjson.dumps(orjson.loads(body))
    assert not verify_woox_v3(WOO_SECRET, signature, str(WOO_TS), "POST", "/v3/algo/order", compact)


def test_v1_hex_is_compared_case_insensitively_and_params_merge_query_and_body() -> None:
    upper = WOO_V1_SIGNATURE.upper()  # hummingbot and WOO's sample market maker send upper case
    assert verify_woox_v1(WOO_SECRET, upper, str(WOO_TS), "", WOO_V1_PARAMS.encode())
    # The same params split between query and form body, unsorted, still verify.
    query, body = "symbol=SPOT_BTC_USDT&side=BUY", b"order_type=LIMIT&order_quantity=0.11&order_price=9000"
    assert verify_woox_v1(WOO_SECRET, WOO_V1_SIGNATURE, str(WOO_TS), query, body)
    assert not verify_woox_v1(WOO_SECRET, WOO_V1_SIGNATURE, str(WOO_TS + 1), query, body)


def test_base58_round_trip_keeps_leading_zero_bytes() -> None:
    for raw in (b"", b"\0", b"\0\0\x01\x02", bytes(range(32))):
        assert b58decode(b58encode(raw)) == raw
    assert b58encode(b"hello world") == "StV1DL6CwTryKyV"
    with pytest.raises(ValueError):
        b58decode("0OIl")


def test_orderly_signature_verifies_in_both_base64_alphabets() -> None:
    pair = generate_orderly_keypair()
    body = b'{"symbol": "PERP_ETH_USDC"}'
    for standard in (False, True):
        headers = orderly_headers("0xabc", pair.secret, "POST", "/v1/order", body, standard_base64=standard)
        signature = headers["orderly-signature"]
        assert signature.endswith("==") == standard
        ts = headers["orderly-timestamp"]
        assert verify_orderly(pair.public_key, signature, ts, "POST", "/v1/order", body)
        assert not verify_orderly(pair.public_key, signature, ts, "POST", "/v1/order", body + b" ")


async def test_woox_published_v1_example_is_accepted_end_to_end(
    sim_factory: SimFactory, sim_http: aiohttp.ClientSession
) -> None:
    # The docs' own request, timestamp and all: only a simulator with a wide clock window admits 2020.
    sim = await sim_factory(
        "woox", accounts=[Account(WOO_KEY, {WOO_KEY: WOO_SECRET})], timestamp_window_s=1e10
    )
    sim.set_mid("SPOT_BTC_USDT", 9000)
    client = client_for(sim_http, sim, Credentials("woox", WOO_KEY, WOO_KEY, WOO_SECRET))
    headers = {
        "x-api-key": WOO_KEY,
        "x-api-timestamp": str(WOO_TS),
        "x-api-signature": WOO_V1_SIGNATURE,
        "content-type": "application/x-www-form-urlencoded",
    }
    answer = await client.send("POST", "/v1/order", WOO_V1_PARAMS.encode(), headers)
    assert answer.status == 200, answer
    assert answer.json["order_type"] == "LIMIT"
    headers["x-api-signature"] = WOO_V1_SIGNATURE.replace("2", "3")
    refused = await client.send("POST", "/v1/order", WOO_V1_PARAMS.encode(), headers)
    assert (refused.status, refused.code) == (401, -1002)


async def test_orderly_accepts_both_alphabets_over_http(orderly_client: SignedClient) -> None:
    for standard in (False, True):
        answer = await orderly_client.orderly("GET", "/v1/client/holding", standard_base64=standard)
        assert answer.status == 200, answer


async def test_orderly_accepts_query_signed_encoded_or_decoded(orderly_client: SignedClient) -> None:
    creds = orderly_client.creds
    sent = "/v1/orders?status=INCOMPLETE&symbol=PERP_ETH_USDC&order_tag=a%2Cb%20c"
    # ccxt and Orderly's connector sign the query unencoded but send it percent-encoded.
    for signed in (sent, "/v1/orders?status=INCOMPLETE&symbol=PERP_ETH_USDC&order_tag=a,b c"):
        headers = orderly_headers(creds.account_id, creds.secret, "GET", signed, b"")
        answer = await orderly_client.send("GET", sent, b"", headers)
        assert answer.status == 200, answer
    headers = orderly_headers(creds.account_id, creds.secret, "GET", sent.replace("a%2C", "x%2C"), b"")
    refused = await orderly_client.send("GET", sent, b"", headers)
    assert (refused.status, refused.code) == (401, -1001)


async def test_orderly_bad_signature_missing_headers_wrong_account_stale_timestamp(
    orderly_client: SignedClient,
) -> None:
    creds = orderly_client.creds
    body = (
        b'{"symbol":"PERP_ETH_USDC","order_type":"LIMIT","side":"BUY",'
        b'"order_price":2900,"order_quantity":0.01}'
    )
    good = orderly_headers(creds.account_id, creds.secret, "POST", "/v1/order", body)
    cases = {
        "tampered body": (good, body.replace(b"2900", b"2901"), -1001),
        "missing signature": ({k: v for k, v in good.items() if k != "orderly-signature"}, body, -1002),
        "other account": ({**good, "orderly-account-id": "0x" + "1" * 64}, body, -1002),
        "unknown key": ({**good, "orderly-key": generate_orderly_keypair().public_key}, body, -1002),
        "garbled signature": ({**good, "orderly-signature": "!!!"}, body, -1001),
        "stale": (
            orderly_headers(creds.account_id, creds.secret, "POST", "/v1/order", body, now_ms() - 301_000),
            body,
            -1002,
        ),
    }
    for name, (headers, sent, code) in cases.items():
        answer = await orderly_client.send("POST", "/v1/order", sent, headers)
        assert (answer.status, answer.code) == (401, code), name
    assert (await orderly_client.send("POST", "/v1/order", body, good)).status == 200


async def test_woox_v1_and_v3_bad_signatures_are_401(woox_client: SignedClient) -> None:
    creds = woox_client.creds
    params = "symbol=SPOT_BTC_USDT"
    ok_v1 = woox_v1_headers(creds.api_key, creds.secret, "GET", params)
    assert (await woox_client.send("GET", f"/v1/orders?{params}", b"", ok_v1)).status == 200
    bad_v1 = {**ok_v1, "x-api-signature": woox_v1_signature("WRONG", params, ok_v1["x-api-timestamp"])}
    answer = await woox_client.send("GET", f"/v1/orders?{params}", b"", bad_v1)
    assert (answer.status, answer.code) == (401, -1002)
    target = "/v3/trade/orders?symbol=SPOT_BTC_USDT"
    ok_v3 = woox_v3_headers(creds.api_key, creds.secret, "GET", target)
    assert (await woox_client.send("GET", target, b"", ok_v3)).status == 200
    wrong_target = woox_v3_headers(creds.api_key, creds.secret, "GET", "/v3/trade/orders")
    answer = await woox_client.send("GET", target, b"", wrong_target)
    assert (answer.status, answer.code) == (401, -1002)
    no_key = {k: v for k, v in ok_v3.items() if k != "x-api-key"}
    assert (await woox_client.send("GET", target, b"", no_key)).status == 401


async def test_woox_keys_of_one_account_all_sign_for_it(
    sim_factory: SimFactory, sim_http: aiohttp.ClientSession
) -> None:
    account = Account("main", {"KEY1": "SECRET1", "KEY2": "SECRET2"})
    sim: Simulator = await sim_factory("woox", accounts=[account])
    for key, secret in account.keys.items():
        assert secret is not None
        client = client_for(sim_http, sim, Credentials("woox", "main", key, secret))
        answer = await client.v3("GET", "/v3/asset/balances")
        assert answer.status == 200 and answer.json["data"]["userId"] == "main"


def test_account_specs_split_like_the_credentials_look() -> None:
    woo = parse_account_spec("woox", f"{WOO_KEY}={WOO_SECRET}")
    assert woo.account_id == WOO_KEY and woo.keys == {WOO_KEY: WOO_SECRET}
    pair = generate_orderly_keypair()
    orderly = parse_account_spec("orderly", f"0xabc={pair.public_key}")
    assert orderly.account_id == "0xabc" and pair.public_key in orderly.keys
    for profile, bad in (("orderly", "0xabc=notakey"), ("orderly", "0xabc"), ("woox", "nokey")):
        with pytest.raises(ValueError):
            parse_account_spec(profile, bad)
