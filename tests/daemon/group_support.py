"""What the process-group tests share: waiting on a real group, the processes a test started, routes."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from portmux.control.cli import query


def wait_for(predicate: Any, what: str, limit: float = 20.0) -> Any:
    """Poll ``predicate`` every 50 ms until it returns something true (returned), or fail."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes this test started; each stopped by its PID at the end, the last started first."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def registered(control: Path) -> set[str]:
    """The route names registered on the control socket ``control`` (empty if it does not answer)."""
    try:
        return {g["name"] for g in query(str(control), 2.0)["registered"]}
    except (OSError, ValueError):
        return set()
