"""The docs stay true to the code and data they describe: the error table, the alerts, the config keys,
and every link between them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from proxy.catalog import default_catalog
from proxy.config import SeawallConfig

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MARKDOWN = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted(DOCS.glob("*.md"))]


def test_the_error_table_in_exchanges_md_is_the_shipped_catalog() -> None:
    text = (DOCS / "exchanges.md").read_text()
    rows = re.findall(r"^\| (-1\d{3}) \| \**(\d{3})\** \| ([A-Z_]+) \|", text, re.MULTILINE)
    documented = {int(code): (int(status), name) for code, status, name in rows}
    shipped = {entry.code: (entry.status, entry.name) for entry in default_catalog()}
    assert documented == shipped


def test_the_runbook_has_a_section_for_every_alert() -> None:
    text = (DOCS / "operations.md").read_text()
    groups = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())["groups"]
    for rule in (rule for group in groups for rule in group["rules"]):
        severity = rule["labels"]["severity"]
        assert f"### {rule['alert']} ({severity})" in text, rule["alert"]


@pytest.mark.parametrize("failure", ["The exchange is unreachable", "Redis is down", "A config error"])
def test_the_runbook_says_what_each_failure_looks_like(failure: str) -> None:
    text = (DOCS / "operations.md").read_text()
    section = text[text.index(f"### {failure}") :].split("\n### ", 1)[0]
    for where in ("logs", "metrics", "/status", "/readyz"):
        assert where in section, (failure, where)


def test_the_design_doc_keeps_the_section_for_layers_and_imports() -> None:
    assert "\n## Layers and imports\n" in (DOCS / "design.md").read_text()


def test_every_config_key_is_in_the_readme_reference() -> None:
    readme = (ROOT / "README.md").read_text()
    reference = readme.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]

    def keys(model: type, prefix: str = "") -> list[str]:
        names = []
        for name, field in model.model_fields.items():  # type: ignore[attr-defined]
            annotation = field.annotation
            nested = isinstance(annotation, type) and hasattr(annotation, "model_fields")
            if nested and name not in ("listen", "admin_listen"):  # host:port values, not sections
                names += keys(annotation, f"{prefix}{name}.")  # type: ignore[arg-type]
            else:
                names.append(f"{prefix}{name}")
        return names

    def documented(key: str) -> bool:
        section = key.rsplit(".", 1)[0]
        return f"`{key}`" in reference or f"`{section}.*`" in reference

    missing = [key for key in keys(SeawallConfig) if not documented(key)]
    assert not missing, f"config keys missing from the README's reference: {missing}"


def test_every_relative_link_in_the_docs_resolves() -> None:
    for document in MARKDOWN:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", document.read_text()):
            if "://" in target:
                continue
            assert (document.parent / target).exists(), f"{document.relative_to(ROOT)} links to {target}"


def test_the_readme_links_the_three_docs() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in ("design.md", "exchanges.md", "operations.md"):
        assert f"(docs/{name})" in readme
