"""Where the shipped data (profiles, default config, error table) lives.

In a wheel the repository's `config/` is packaged as `proxy/_shipped_config`; in a source checkout
(editable install, tests) it is the `config/` folder beside the package.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGED = Path(__file__).resolve().parent / "_shipped_config"
_CHECKOUT = Path(__file__).resolve().parent.parent / "config"


def shipped_config_dir() -> Path:
    return _PACKAGED if _PACKAGED.is_dir() else _CHECKOUT


def default_config_path() -> Path:
    return shipped_config_dir() / "default.yaml"


def profile_path(name: str) -> Path:
    return shipped_config_dir() / "profiles" / f"{name}.yaml"


def error_table_path() -> Path:
    return shipped_config_dir() / "error-codes.yaml"
