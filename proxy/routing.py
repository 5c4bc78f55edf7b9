"""Route match: method + path -> a named route, and the scope keys a request carries.

Route names (from the profile), never raw paths, are what rules and metrics refer to, which keeps metric
label sets bounded whatever paths bots send. Scope keys (API key, account, symbol, client order id) are
read from the profile's headers and from the query, a form body or a JSON body, without touching the
bytes that are forwarded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

import orjson
from multidict import CIMultiDictProxy

from proxy.config import IdentityConfig, RouteConfig
from proxy.identity import key_fingerprint

DEFAULT_ROUTE_NAME = "default"


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    method: str = "*"
    pattern: re.Pattern[str] | None = None
    units_field: str | None = None

    def matches(self, method: str, path: str) -> dict[str, str] | None:
        if self.method not in ("*", method) or self.pattern is None:
            return None
        found = self.pattern.fullmatch(path)
        return found.groupdict() if found else None


DEFAULT_ROUTE = Route(DEFAULT_ROUTE_NAME)


def _compile(path: str) -> re.Pattern[str]:
    rest = path.endswith("/*")
    body = path[:-2] if rest else path
    parts = re.split(r"(\{[A-Za-z_][A-Za-z0-9_]*\})", body)
    regex = "".join(f"(?P<{part[1:-1]}>[^/]+)" if part.startswith("{") else re.escape(part) for part in parts)
    return re.compile(regex + ("(?:/.*)?" if rest else "/?"))


@dataclass(frozen=True, slots=True)
class ScopeKeys:
    key: str | None
    key_name: str | None
    account: str | None
    symbol: str | None
    client_order_id: str | None
    units: int
    json_body: Any


class RouteTable:
    """Names each request by the first matching route of the profile; unmatched ones get `default`."""

    def __init__(self, routes: tuple[RouteConfig, ...], identity: IdentityConfig) -> None:
        self._routes = [Route(r.name, r.method, _compile(r.path), r.units_field) for r in routes]
        self._identity = identity
        self._key_headers = identity.key_headers
        self._account_headers = identity.account_headers

    @property
    def names(self) -> list[str]:
        return sorted({route.name for route in self._routes} | {DEFAULT_ROUTE_NAME})

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        for route in self._routes:
            params = route.matches(method, path)
            if params is not None:
                return route, params
        return DEFAULT_ROUTE, {}

    def scope_keys(
        self,
        route: Route,
        path_params: dict[str, str],
        headers: CIMultiDictProxy[str],
        query_string: str,
        body: bytes,
    ) -> ScopeKeys:
        identity = self._identity
        key = _first_header(headers, self._key_headers)
        account = _first_header(headers, self._account_headers)
        if account is None and key is not None:
            account = identity.key_accounts.get(key)
        key_name = None
        if key is not None:
            key_name = (
                identity.aliases.get(key)
                or (identity.aliases.get(account) if account else None)
                or key_fingerprint(key)
            )
        fields = _Fields(query_string, body)
        symbol = path_params.get("symbol") or fields.first(identity.symbol_fields)
        client_order_id = fields.first(identity.client_order_id_fields)
        if client_order_id in ("0", ""):  # WOO X: 0 is the default, meaning "no client order id"
            client_order_id = None
        units = 1
        if route.units_field and isinstance(fields.json, dict):
            items = fields.json.get(route.units_field)
            if isinstance(items, list) and items:
                units = len(items)
        return ScopeKeys(key, key_name, account, symbol, client_order_id, units, fields.json)


def _first_header(headers: CIMultiDictProxy[str], names: tuple[str, ...]) -> str | None:
    for name in names:
        value = headers.get(name)
        if value:
            return value
    return None


class _Fields:
    """Parameter lookup over the query, then the body (JSON object or form), parsed at most once."""

    __slots__ = ("_body", "_form", "_query_string", "json")

    def __init__(self, query_string: str, body: bytes) -> None:
        self._query_string = query_string
        self._form: dict[str, str] | None = None
        self._body = body
        self.json: Any = None
        stripped = body.lstrip()
        if stripped[:1] in (b"{", b"["):
            try:
                self.json = orjson.loads(body)
            except orjson.JSONDecodeError:
                self.json = None

    def first(self, names: tuple[str, ...]) -> str | None:
        for name in names:
            value = self._lookup(name)
            if value is not None:
                return value
        return None

    def _lookup(self, name: str) -> str | None:
        value = _query_value(self._query_string, name)
        if value is not None:
            return value
        if isinstance(self.json, dict):
            value = self.json.get(name)
            if value is None or isinstance(value, (dict, list)):
                return None
            return str(value).lower() if isinstance(value, bool) else str(value)
        if self._body and self.json is None:
            if self._form is None:
                try:
                    text = self._body.decode("utf-8")
                except UnicodeDecodeError:
                    text = ""
                self._form = dict(parse_qsl(text, keep_blank_values=True)) if "=" in text else {}
            return self._form.get(name)
        return None


def _query_value(query: str, name: str) -> str | None:
    """The first value of `name` in a raw query string, percent-decoded; no full parse (hot path).

    `name` is a profile field name (an identifier, which clients never percent-encode)."""
    key = name + "="
    start = 0
    while (found := query.find(key, start)) >= 0:
        if found == 0 or query[found - 1] == "&":
            end = query.find("&", found)
            raw = query[found + len(key) : end if end >= 0 else len(query)]
            return unquote_plus(raw) if ("%" in raw or "+" in raw) else raw
        start = found + 1
    return None
