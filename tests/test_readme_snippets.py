"""The README's code runs: every client snippet, as written, against `seawall simulate` through Seawall.

A snippet is a fenced block right after a `<!-- tested: NAME, profile PROFILE -->` comment (or
`<!-- tested: config -->` for a config file). It reads the base URL from `EXCHANGE_BASE_URL` and the
credentials from the variables the simulator's banner prints (`proxy.simulator.cli.credential_environment`),
so the test sets exactly those and runs the block in a fresh interpreter: a credential passed under the
wrong name (ccxt `woofipro` wants `accountId`, not `uid`) fails here, not in a user's first private call.
ccxt runs in the project's venv; Orderly's connector in its own (see tests/test_orderly_connector.py).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from fixtures_proxy import StartSeawall
from fixtures_simulator import SimFactory
from test_orderly_connector import connector_python  # noqa: F401  (the fixture: the connector's venv)

from proxy.config_loader import build_config
from proxy.simulator.accounts import load_accounts_file
from proxy.simulator.cli import credential_environment

README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPET = re.compile(
    r"<!-- tested: (?P<tag>[^>]*?) -->\n(?P<indent> *)```(?P<lang>\w+)\n(?P<code>.*?)\n(?P=indent)```",
    re.DOTALL,
)
CLIENT_SNIPPETS = {"ccxt-woofipro": "orderly", "ccxt-woo": "woox", "orderly-connector": "orderly"}
RUN_TIMEOUT = 60.0
# Both profiles' simulators fund an account with 100000 of the quote currency: a snippet that printed it
# made a signed private call.
FUNDED = "100000"


@dataclass(frozen=True)
class Snippet:
    name: str
    profile: str | None
    lang: str
    code: str


def readme_snippets() -> dict[str, Snippet]:
    snippets = {}
    for match in SNIPPET.finditer(README.read_text(encoding="utf-8")):
        name, _, profile = (part.strip() for part in match["tag"].partition(", profile "))
        snippets[name] = Snippet(name, profile or None, match["lang"], textwrap.dedent(match["code"]))
    return snippets


def test_every_client_snippet_in_the_readme_is_marked_for_this_test() -> None:
    """A new snippet that points a client at Seawall cannot slip in untested."""
    snippets = readme_snippets()
    assert {name: s.profile for name, s in snippets.items() if name in CLIENT_SNIPPETS} == CLIENT_SNIPPETS
    tested = {s.code for s in snippets.values()}
    blocks = re.findall(r"```python\n(.*?)\n```", README.read_text(encoding="utf-8"), re.DOTALL)
    for block in blocks:
        if re.search(r"ccxt\.|orderly_evm_connector|127\.0\.0\.1:8080", block):
            assert block in tested, f"an untested client snippet in README.md:\n{block}"


async def _run(python: Path | str, code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    process = await asyncio.create_subprocess_exec(
        str(python),
        "-c",
        code,
        env={"PATH": os.environ.get("PATH", ""), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"the snippet did not finish within {RUN_TIMEOUT}s") from None
    assert process.returncode is not None
    return subprocess.CompletedProcess([], process.returncode, out.decode(), err.decode())


async def _check_snippet(
    name: str, python: Path | str, sim_factory: SimFactory, start_seawall: StartSeawall
) -> None:
    snippet = readme_snippets()[name]
    assert snippet.profile is not None and snippet.lang == "python"
    sim = await sim_factory(snippet.profile)
    assert sim.demo_credentials is not None
    seawall = await start_seawall(snippet.profile, sim.base_url)
    env = {"EXCHANGE_BASE_URL": seawall.proxy_url, **credential_environment(sim.demo_credentials)}

    done = await _run(python, snippet.code, env)

    assert done.returncode == 0, f"README snippet {name!r} failed:\n{done.stderr[-3000:]}"
    assert FUNDED in done.stdout, done.stdout  # it printed the account's balance
    snapshot = sim.snapshot()
    assert snapshot["answers_by_status"].get("401", 0) == 0, snapshot["answers_by_status"]
    through_seawall = {
        sample.labels["route"]
        for metric in seawall.metrics.requests.collect()
        for sample in metric.samples
        if sample.name == "seawall_requests_total" and sample.labels["status"] == "200"
    }
    assert through_seawall & {"account.holding", "account.balances.v3"}, through_seawall


@pytest.mark.parametrize("name", ["ccxt-woofipro", "ccxt-woo"])
async def test_the_ccxt_snippets_run_as_written(
    name: str, sim_factory: SimFactory, start_seawall: StartSeawall
) -> None:
    await _check_snippet(name, sys.executable, sim_factory, start_seawall)


@pytest.mark.slow
async def test_the_orderly_connector_snippet_runs_as_written(
    connector_python: Path,  # noqa: F811
    sim_factory: SimFactory,
    start_seawall: StartSeawall,
) -> None:
    await _check_snippet("orderly-connector", connector_python, sim_factory, start_seawall)


def test_the_config_snippet_is_a_valid_config_with_a_priority() -> None:
    snippet = readme_snippets()["config"]
    assert snippet.lang == "yaml"
    config = build_config(yaml.safe_load(snippet.code), env={})
    ranked = [rule for rule in config.ratelimit.rules if rule.priority]
    assert ranked and all(rank > 0 for rule in ranked for rank in rule.priority.values())


def test_the_simulator_accounts_snippet_is_the_shipped_example(tmp_path: Path) -> None:
    snippet = readme_snippets()["simulator-accounts"]
    assert snippet.profile is not None and snippet.lang == "yaml"
    shown = tmp_path / "accounts.yaml"
    shown.write_text(snippet.code)
    example = README.parent / "config" / f"simulator-accounts.{snippet.profile}.example.yaml"
    shipped = {account.account_id: account.keys for account in load_accounts_file(snippet.profile, example)}
    for account in load_accounts_file(snippet.profile, shown):
        assert account.keys == shipped[account.account_id]
