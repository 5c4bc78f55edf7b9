"""The repository stands alone: no file cites documents that are not in it.

The design notes the project started from lived outside the repository; everything a reader needs from
them is now in `docs/` (design.md, exchanges.md, operations.md), the README and BENCHMARKS.md, with the
public sources. A reference to the outside notes would send a reader nowhere, so any file in the working
tree (tracked or not; the venvs, `.git` and tool caches aside) that names one fails this test.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIPPED_DIRS = {".git", ".hypothesis", ".pytest_cache", ".mypy_cache", ".ruff_cache", "__pycache__"}
# Built here so this file does not match itself.
OUTSIDE_NOTES = re.compile(
    "|".join(
        [
            re.escape("PRODUCT" + ".md"),
            re.escape("PITFALLS" + ".md"),
            re.escape("EXCHANGES" + ".md"),
            r"(?<![\w.-])" + "shared" + "/",
        ]
    ).encode()
)


def repository_files() -> Iterator[Path]:
    for directory, subdirectories, files in os.walk(ROOT):
        subdirectories[:] = sorted(
            name
            for name in subdirectories
            if name not in SKIPPED_DIRS and not name.startswith(".venv") and not name.endswith(".egg-info")
        )
        for name in sorted(files):
            yield Path(directory) / name


def references(paths: list[Path]) -> list[str]:
    found = []
    for path in paths:
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            if OUTSIDE_NOTES.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.decode(errors='replace').strip()}")
    return found


def test_the_scan_sees_the_whole_tree() -> None:
    files = {str(path.relative_to(ROOT)) for path in repository_files()}
    assert {"README.md", "docs/design.md", "proxy/config.py", "config/profiles/orderly.yaml"} <= files
    assert not any(name.startswith((".git/", ".venv/")) for name in files)


def test_no_file_cites_notes_outside_the_repository() -> None:
    found = references(list(repository_files()))
    assert not found, "references to documents outside the repository:\n" + "\n".join(found)
