"""One exchange request, in the order the real gateway would treat it:
route -> parse -> signature -> rate limit -> injected faults -> handler -> answer.

Guarantees: every answer the exchange means to give is JSON in the exchange's envelope with the table's
status; signatures are checked on the raw target and body bytes as received; a refused request (bad
signature, -1003) never reaches the book; only admitted requests count in the rate windows.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

from proxy.catalog import ErrorCatalog
from proxy.simulator.auth import Authenticator
from proxy.simulator.counters import Counters
from proxy.simulator.errors import SimError, error_payload
from proxy.simulator.faults import DEFAULT_GARBAGE, Fault, FaultInjector
from proxy.simulator.limits import Charge, SlidingWindowLimiter
from proxy.simulator.routing import Route, Router, SimRequest


class SimulatedExchange(Protocol):
    """The parts of the simulated exchange a request goes through (proxy/simulator/server.py has them).

    Declared here, so this module depends on the parts and the server on this module, not both ways.
    """

    router: Router
    auth: Authenticator
    limiter: SlidingWindowLimiter
    faults: FaultInjector
    counters: Counters
    catalog: ErrorCatalog
    stopping: asyncio.Event


log = logging.getLogger("seawall.simulator")


def json_response(status: int, payload: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


def parse_request(request: web.Request, body: bytes) -> SimRequest:
    target = request.raw_path
    raw_query = target.partition("?")[2]
    sim_request = SimRequest(
        method=request.method,
        path=request.path,
        target=target,
        raw_query=raw_query,
        body=body,
        headers=request.headers,
        remote=request.remote or "",
    )
    sim_request.params.update(parse_qsl(raw_query, keep_blank_values=True))
    if body.strip():
        content_type = request.headers.get("content-type", "")
        if "json" in content_type or body.lstrip()[:1] in (b"{", b"["):
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError:
                sim_request.body_error = "The request body is not valid JSON."
            else:
                if isinstance(parsed, dict):
                    sim_request.params.update(parsed)
                else:
                    sim_request.body_error = "The request body must be a JSON object."
        else:
            sim_request.params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    return sim_request


def charges(sim: SimulatedExchange, route: Route, request: SimRequest) -> list[Charge]:
    result = []
    for use in route.limits:
        rule = sim.limiter.rules[use.rule]
        account = request.account.account_id if request.account else ""
        if rule.scope == "ip":
            scope = f"ip:{request.remote}"
        elif rule.scope == "key":
            scope = f"key:{request.api_key}"
        elif rule.scope == "account":
            scope = f"account:{account}"
        else:
            scope = f"account:{account}|symbol:{request.params.get('symbol', '')}"
        result.append(Charge(use.rule, scope, use.cost_of(request)))
    return result


async def handle(sim: SimulatedExchange, request: web.Request) -> web.StreamResponse:
    body = await request.read()
    matched = sim.router.match(request.method, request.path)
    sim.counters.request(request.path, matched[0].name if matched else "unknown")
    if matched is None:
        # Like the exchange's front door for a path it does not serve: not an exchange error code.
        sim.counters.answer(404, None)
        return json_response(
            404, {"success": False, "message": f"Not Found: {request.method} {request.path}"}
        )
    route, path_params = matched
    sim_request = parse_request(request, body)
    sim_request.path_params = path_params
    lose: Fault | None = None
    try:
        if route.private:
            sim_request.account, sim_request.api_key = sim.auth.verify(sim_request)
        refused = sim.limiter.admit(charges(sim, route, sim_request))
        if refused is not None:
            raise SimError(-1003)
        plan = sim.faults.plan(request.method, request.path, route.name)
        if plan.delay:
            await asyncio.sleep(plan.delay)
        if plan.terminal is not None and plan.terminal.kind != "lose_answer":
            return await apply_fault(sim, request, plan.terminal)
        lose = plan.terminal
        if sim_request.body_error:
            raise SimError(-1005, sim_request.body_error)
        payload = route.handler(sim_request)
    except SimError as exc:
        status, error = error_payload(sim.catalog, exc.code, exc.message)
        sim.counters.answer(status, exc.code)
        return json_response(status, error)
    except Exception:
        log.exception("simulator handler failed on %s %s", request.method, request.path)
        status, error = error_payload(sim.catalog, -1000)
        sim.counters.answer(status, -1000)
        return json_response(status, error)
    if lose is not None:
        # The order exists now; the client never learns it. A lookup by client order id, and Seawall's
        # dedup, exist for this case (docs/exchanges.md).
        sim.counters.drop("lost")
        if lose.lose_mode == "504":
            return web.Response(status=504)
        return drop_connection(request)
    sim.counters.answer(200, 0)
    return json_response(200, payload)


async def apply_fault(sim: SimulatedExchange, request: web.Request, fault: Fault) -> web.StreamResponse:
    if fault.kind == "error":
        status, error = error_payload(
            sim.catalog, fault.code, fault.message, status=fault.status, code_as_string=fault.code_as_string
        )
        sim.counters.answer(status, fault.code)
        return json_response(status, error)
    sim.counters.drop(fault.kind)
    if fault.kind == "garbage":
        text = fault.body if fault.body is not None else DEFAULT_GARBAGE
        return web.Response(text=text, status=fault.status or 502, content_type="text/html")
    if fault.kind == "hang":
        # Never answer; released only when the simulator stops, so nothing outlives it.
        await sim.stopping.wait()
    return drop_connection(request)


def drop_connection(request: web.Request) -> web.Response:
    """Close the socket without writing an answer: the client sees a disconnect."""
    if request.transport is not None:
        request.transport.abort()
    raise asyncio.CancelledError
