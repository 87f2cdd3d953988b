# -*- test-case-name: tests.test_suite_rules -*-
"""Suite-wide rules: a logged "Unhandled Error" fails the test that caused it;
``--no-fast-paths`` runs everything on public Twisted API only."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.logger import formatEvent, globalLogPublisher


def _is_unhandled(event: dict[str, Any]) -> bool:
    """True for Twisted's unhandled-error reports (reactor callbacks, lost Deferreds)."""
    if "log_failure" not in event and not event.get("isError"):
        return False
    text = (event.get("log_format") or "") + " " + str(event.get("why") or "")
    if "Unhandled" not in text and "unhandled" not in text:
        text = formatEvent(event)
    return "Unhandled" in text or "unhandled error" in text.lower()


@pytest.fixture(autouse=True)
def fail_on_unhandled_errors() -> Iterator[None]:
    """Collect unhandled-error log events during a test; fail the test if any appear."""
    seen: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if _is_unhandled(event):
            seen.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        yield
    finally:
        globalLogPublisher.removeObserver(observer)
    if seen:
        failure = seen[0].get("log_failure")
        detail = failure.getTraceback() if failure is not None else formatEvent(seen[0])
        pytest.fail(f"{len(seen)} unhandled error(s) logged; first:\n{detail}", pytrace=False)

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
