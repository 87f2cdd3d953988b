"""Suite-wide options: ``--no-fast-paths`` runs everything on public Twisted API only."""

from __future__ import annotations

import os

import pytest

ENV_SWITCH = "PORTMUX_NO_FAST_PATHS"  # portmux._twisted.ENV_SWITCH; not imported here


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--no-fast-paths",
        action="store_true",
        help=f"turn portmux's Twisted-internals fast paths off (sets {ENV_SWITCH}=1)",
    )


def pytest_configure(config: pytest.Config) -> None:
    # Before any test module imports portmux: portmux._twisted reads it once, at import.
    if config.getoption("--no-fast-paths"):
        os.environ[ENV_SWITCH] = "1"


def pytest_report_header(config: pytest.Config) -> str:
    from portmux import _twisted

    state = "on" if _twisted.FAST_PATHS else "off"
    return f"portmux fast paths: {state} (missing: {', '.join(_twisted.missing()) or 'none'})"
