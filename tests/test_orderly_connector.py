"""Orderly's own Python connector works against the simulator and through Seawall with only its base URL
changed (docs/exchanges.md).

`orderly-evm-connector` pins `cryptography<43` while ccxt needs `>=50` (docs/design.md), so it cannot live
in the project's venv: a session fixture builds it a venv of its own once, under `.venv-connector/`, and
later runs reuse it. The test drives the real connector in that venv as a subprocess: it signs with
padded standard base64 over `json.dumps` bodies with default separators, signs GET/DELETE queries
unencoded and lets `requests` send them percent-encoded (a space becomes %20, a comma stays raw).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fixtures_proxy import StartSeawall
from fixtures_simulator import SimFactory

pytestmark = pytest.mark.slow

CONNECTOR = "orderly-evm-connector==0.2.9"
VENVS = Path(__file__).resolve().parents[1] / ".venv-connector"
INSTALL_TIMEOUT = 120.0  # below pytest-timeout (180 s): a stuck pip fails here, naming its command
CLIENT_TIMEOUT = 30.0
SYMBOL = "PERP_ETH_USDC"
PRICE = 2900
# Sent as a query filter on GET /v1/orders: signed as "desk a,b", sent as "desk%20a,b".
ORDER_TAG = "desk a,b"

# Runs in the connector's venv: reads its config on stdin (the key stays off the command line) and prints
# one JSON document of what the connector returned.
CLIENT_SCRIPT = '''
import json
import sys

from orderly_evm_connector.error import ClientError
from orderly_evm_connector.rest import Rest

config = json.load(sys.stdin)
client = Rest(
    orderly_key=config["orderly_key"],
    orderly_secret=config["orderly_secret"],
    orderly_account_id=config["account_id"],
    orderly_api_url=config["base_url"],
    timeout=10,
)
symbol, cid, price, tag = config["symbol"], config["client_order_id"], config["price"], config["order_tag"]


def refused(call, *args, **kwargs):
    """The exchange code of a refusal. The connector raises ClientError only for HTTP statuses above
    400 and returns a 400 error body as if it were data, so both ways count."""
    try:
        body = call(*args, **kwargs)
    except ClientError as error:
        return {"raised": True, "status": error.status_code, "code": error.error_code}
    return {"raised": False, "success": body.get("success"), "code": body.get("code")}


out = {"info": client.get_account_information(), "holding": client.get_current_holdings(all=True)}
out["placed"] = client.create_order(
    symbol, "LIMIT", "BUY", client_order_id=cid, order_price=price, order_quantity=0.01, order_tag=tag
)
order_id = out["placed"]["data"]["order_id"]
out["duplicate"] = refused(
    client.create_order, symbol, "LIMIT", "BUY", client_order_id=cid, order_price=price, order_quantity=0.01
)
out["fetched"] = client.get_order(order_id)
out["by_client_id"] = client.get_order_by_client_order_id(cid)
out["open"] = client.get_orders(symbol=symbol, status="INCOMPLETE", order_tag=tag)
out["cancelled"] = client.cancel_order(order_id, symbol)
out["open_after"] = client.get_orders(symbol=symbol, status="INCOMPLETE")
out["cancel_again"] = refused(client.cancel_order, order_id, symbol)
print(json.dumps(out))
'''


@pytest.fixture(scope="session")
def connector_python() -> Path:
    """The python of a venv holding only the pinned connector, built once and reused across runs.

    A file lock keeps two pytest processes in one tree from building it at the same time; the stamp file
    is written last, so an interrupted build is thrown away and redone."""
    venv = VENVS / f"{CONNECTOR.replace('==', '-')}-py{sys.version_info.major}.{sys.version_info.minor}"
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    VENVS.mkdir(exist_ok=True)
    with (VENVS / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.is_file() and stamp.read_text() == CONNECTOR and python.exists():
            return python
        shutil.rmtree(venv, ignore_errors=True)
        # No pip inside the new venv (ensurepip costs ~3 s): the project's pip installs into it.
        steps = [
            [sys.executable, "-m", "venv", "--without-pip", str(venv)],
            [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", CONNECTOR],
        ]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
            if done.returncode != 0:
                pytest.fail(f"cannot build the connector venv ({step[2]} failed):\n{done.stderr[-3000:]}")
        stamp.write_text(CONNECTOR)
    return python


async def run_connector(python: Path, script: Path, config: dict[str, Any]) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        str(python),
        str(script),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(json.dumps(config).encode()), CLIENT_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"the connector did not finish within {CLIENT_TIMEOUT}s") from None
    assert process.returncode == 0, err.decode()[-3000:]
    result: dict[str, Any] = json.loads(out)
    return result


@pytest.mark.parametrize("via", ["simulator", "seawall"])
async def test_connector_order_life_cycle(
    via: str,
    connector_python: Path,
    sim_factory: SimFactory,
    start_seawall: StartSeawall,
    tmp_path: Path,
) -> None:
    sim = await sim_factory("orderly")
    creds = sim.demo_credentials
    assert creds is not None
    seawall = await start_seawall("orderly", sim.base_url) if via == "seawall" else None
    cid = f"connector-{via}"
    script = tmp_path / "connector_client.py"
    script.write_text(CLIENT_SCRIPT)
    seen = await run_connector(
        connector_python,
        script,
        {
            "base_url": seawall.proxy_url if seawall else sim.base_url,
            "account_id": creds.account_id,
            "orderly_key": creds.api_key,
            # The connector wants the secret as `ed25519:<base58 seed>`, like the key.
            "orderly_secret": "ed25519:" + creds.secret,
            "symbol": SYMBOL,
            "client_order_id": cid,
            "price": PRICE,
            "order_tag": ORDER_TAG,
        },
    )

    assert seen["info"]["data"]["account_id"] == creds.account_id
    assert {row["token"]: row["holding"] for row in seen["holding"]["data"]["holding"]} == {"USDC": 100000}
    placed = seen["placed"]["data"]
    order_id = placed["order_id"]
    assert isinstance(order_id, int) and placed["client_order_id"] == cid
    assert seen["duplicate"] == {"raised": True, "status": 409, "code": -1007}
    fetched = seen["fetched"]["data"]
    assert (fetched["order_id"], fetched["status"], fetched["client_order_id"]) == (order_id, "NEW", cid)
    assert (fetched["price"], fetched["quantity"], fetched["order_tag"]) == (PRICE, 0.01, ORDER_TAG)
    assert seen["by_client_id"]["data"]["order_id"] == order_id
    assert [row["order_id"] for row in seen["open"]["data"]["rows"]] == [order_id]
    assert seen["cancelled"]["data"]["status"] == "CANCEL_SENT"
    assert seen["open_after"]["data"]["rows"] == []
    assert seen["cancel_again"]["code"] == -1006

    snapshot = sim.snapshot()
    assert snapshot["answers_by_code"].get("-1001", 0) == 0, snapshot["answers_by_code"]
    assert snapshot["answers_by_code"].get("-1002", 0) == 0, snapshot["answers_by_code"]
    accepted = {(row["client_order_id"], row["count"]) for row in snapshot["orders_accepted"]}
    assert accepted == {(cid, 1)}  # the refused duplicate was never accepted
    if seawall is not None:
        answered = sum(
            sample.value
            for metric in seawall.metrics.requests.collect()
            for sample in metric.samples
            if sample.name == "seawall_requests_total"
        )
        assert answered == len(seen)  # every connector call went through Seawall
