"""Route match and scope keys: names from the profile, keys from headers, query, form or JSON body."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.config_loader import build_config
from proxy.identity import key_fingerprint
from proxy.routing import RouteTable, _query_value


def _table(profile: str, **identity: object) -> RouteTable:
    config = build_config({"profile": profile, "identity": identity} if identity else {"profile": profile})
    return RouteTable(config.routes, config.identity)


def _keys(table: RouteTable, method: str, target: str, body: bytes = b"", **headers: str):  # type: ignore[no-untyped-def]
    path, _, query = target.partition("?")
    route, params = table.match(method, path)
    return route, table.scope_keys(route, params, CIMultiDictProxy(CIMultiDict(headers)), query, body)


def test_routes_are_named_by_method_and_path_with_a_default_for_the_rest() -> None:
    table = _table("orderly")
    assert table.match("POST", "/v1/order")[0].name == "order.place"
    assert table.match("DELETE", "/v1/order")[0].name == "order.cancel"
    assert table.match("GET", "/v1/order/123/trades")[0].name == "order.trades"
    assert table.match("GET", "/v1/order/123")[0].name == "order.get"
    assert table.match("GET", "/v1/public/system_info")[0].name == "public.system_info"
    assert table.match("GET", "/v1/public/market_trades")[0].name == "public"
    assert table.match("PATCH", "/v1/order")[0].name == "default"
    assert table.match("GET", "/somewhere/else")[0].name == "default"


def test_orderly_scope_keys_from_headers_and_json_body() -> None:
    _, keys = _keys(
        _table("orderly"),
        "POST",
        "/v1/order",
        b'{"symbol": "PERP_ETH_USDC", "client_order_id": "abc-1", "order_price": 1}',
        **{"orderly-key": "ed25519:KEY", "orderly-account-id": "0xacc"},
    )
    assert (keys.key, keys.account, keys.symbol, keys.client_order_id) == (
        "ed25519:KEY",
        "0xacc",
        "PERP_ETH_USDC",
        "abc-1",
    )
    assert keys.key_name == key_fingerprint("ed25519:KEY")


def test_woox_keys_map_to_their_account_and_v1_form_and_v3_json_fields_are_read() -> None:
    table = _table("woox", key_accounts={"K1": "desk"}, aliases={"desk": "desk-alias"})
    _, form = _keys(
        table, "POST", "/v1/order", b"symbol=SPOT_BTC_USDT&client_order_id=42&side=BUY", **{"x-api-key": "K1"}
    )
    assert (form.account, form.symbol, form.client_order_id, form.key_name) == (
        "desk",
        "SPOT_BTC_USDT",
        "42",
        "desk-alias",
    )
    _, v3 = _keys(
        table,
        "POST",
        "/v3/trade/order",
        b'{"symbol":"SPOT_ETH_USDT","clientOrderId":7}',
        **{"x-api-key": "K2"},
    )
    assert (v3.account, v3.symbol, v3.client_order_id) == (None, "SPOT_ETH_USDT", "7")
    _, none = _keys(
        table, "POST", "/v1/order", b"symbol=SPOT_BTC_USDT&client_order_id=0", **{"x-api-key": "K1"}
    )
    assert none.client_order_id is None  # WOO X: 0 means "no client order id"


def test_symbol_from_query_and_path_and_batch_units_from_the_body() -> None:
    table = _table("orderly")
    _, query = _keys(table, "DELETE", "/v1/order?order_id=1&symbol=PERP_BTC_USDC")
    assert query.symbol == "PERP_BTC_USDC"
    _, path = _keys(table, "GET", "/v1/orderbook/PERP_ETH_USDC")
    assert path.symbol == "PERP_ETH_USDC"
    _, batch = _keys(
        table, "POST", "/v1/batch-order", b'{"orders": [{"symbol": "A"}, {"symbol": "B"}, {"symbol": "C"}]}'
    )
    assert batch.units == 3


def test_garbage_bodies_yield_no_keys_rather_than_errors() -> None:
    table = _table("orderly")
    for body in (b"{not json", b"\xff\xfe\x00", b"[1,2,3]", b"=&=&&", b'{"symbol": {"nested": 1}}'):
        _, keys = _keys(table, "POST", "/v1/order", body)
        assert keys.symbol is None and keys.client_order_id is None


_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


_field_name = st.from_regex(r"[A-Za-z_]{1,16}", fullmatch=True)  # profile field names are identifiers


@given(st.lists(st.tuples(st.one_of(_field_name, _text.filter(bool)), _text), max_size=6), _field_name)
def test_query_lookup_agrees_with_a_full_parse(pairs: list[tuple[str, str]], name: str) -> None:
    query = urlencode(pairs)
    expected = next((value for key, value in parse_qsl(query, keep_blank_values=True) if key == name), None)
    assert _query_value(query, name) == expected
