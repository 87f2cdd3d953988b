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


async def linked(test: Any, parent: Any, child: Any) -> tuple[Any, Any]:
    """Join two in-process multiplexers over a real socketpair as ProcessGroup and group_child
    do (both ends in this reactor); the links are closed at ``test``'s cleanup."""
    import socket

    from twisted.internet import reactor
    from twisted.internet.protocol import Factory

    from portmux.daemon.group_channel import ChildLink, ParentLink
    from tests.support import wait_until

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    parent_side = ChildLink(parent, "process 2", parent.listener_factory(name="process 2"))
    reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX, Factory.forProtocol(lambda: parent_side))
    ours.close()
    child_side = ParentLink(child)
    reactor.adoptStreamConnection(theirs.fileno(), socket.AF_UNIX, Factory.forProtocol(lambda: child_side))
    theirs.close()
    test.addCleanup(parent_side.transport.loseConnection)
    test.addCleanup(child_side.transport.loseConnection)
    await wait_until(lambda: child_side.synced)
    return parent_side, child_side
