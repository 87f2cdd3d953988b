"""``/metrics`` of a real ``twistd portmux`` with ``processes = 2``: whichever process answers, the group's totals.

Connections are plain sockets speaking HTTP/1.0 through the proxy route, spread by
the kernel over both processes; every scrape is curl, parsed by prometheus_client's
parser and checked by promtool.  A child killed with SIGKILL leaves its totals in
the parent: no total goes down across scrapes.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon.daemon_support import byte_counts
from tests.daemon.test_group import alive, wait_for, web_group

CHILD_LISTENING = re.compile(r"\[process 2\] .*portmux listening on inherited")
STARTED = re.compile(r"process 2 of 2 started \(pid (\d+)\)")
BODY = b"hello from the backend\n"

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")


@dataclass
class Group:
    """A running ``processes = 2`` daemon and every connection made to it (scrapes included)."""

    port: int
    log: Path
    made: int = 0  # connections to the port, of any kind
    proxied: int = 0  # of them, through the "web" route
    texts: list[str] = field(default_factory=list)

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def get(self) -> None:
        """One HTTP/1.0 request over a plain socket through the proxy route."""
        self.made += 1
        self.proxied += 1
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as conn:
            conn.sendall(b"GET /hello.txt HTTP/1.0\r\nHost: x\r\n\r\n")
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.0 200") and data.endswith(BODY), data[:200]

    def scrape(self) -> dict[str, list[Any]]:
        """``/admin/metrics`` with curl, checked by promtool, parsed by prometheus_client."""
        self.made += 1
        done = subprocess.run(["curl", "-sSf", "--max-time", "10", f"http://127.0.0.1:{self.port}/admin/metrics"],
                              check=True, capture_output=True, timeout=30)
        text = done.stdout.decode()
        self.texts.append(text)
        if shutil.which("promtool"):
            checked = subprocess.run(["promtool", "check", "metrics"], input=done.stdout, capture_output=True,
                                     check=False, timeout=30)
            assert checked.returncode == 0, checked.stdout + checked.stderr
        return {family.name: family.samples for family in text_string_to_metric_families(text)}

    def status(self) -> dict[str, Any]:
        """``/admin/status.json`` with curl."""
        self.made += 1
        done = subprocess.run(["curl", "-sSf", "--max-time", "10", f"http://127.0.0.1:{self.port}/admin/status.json"],
                              check=True, capture_output=True, timeout=30)
        return json.loads(done.stdout)  # type: ignore[no-any-return]


def total(found: dict[str, list[Any]], sample: str, **labels: str) -> float:
    """The sum of ``sample``'s values whose labels include ``labels``."""
    family = found[re.sub(r"_(total|count|sum|bucket)$", "", sample)]
    return sum(s.value for s in family
               if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))


def per_process(found: dict[str, list[Any]]) -> dict[str, float]:
    return {s.labels["process"]: s.value for s in found["portmux_group_accepted_connections"]
            if s.name == "portmux_group_accepted_connections_total"}


def answering(found: dict[str, list[Any]]) -> int:
    return int(total(found, "portmux_group_answering_process"))


@pytest.fixture
def group(tmp_path: Path) -> Iterator[Group]:
    with web_group(tmp_path, BODY) as (port, log, _portmux):
        running = Group(port, log)
        wait_for(lambda: STARTED.search(running.text()))
        wait_for(lambda: CHILD_LISTENING.search(running.text()))
        yield running
        assert "Unhandled Error" not in running.text()


def spread(group: Group) -> dict[str, list[Any]]:
    """Connections until both processes accepted some (bounded), then a scrape a report later."""
    for _ in range(20):
        for _ in range(10):
            group.get()
        time.sleep(1.2)  # every child's counters reach the parent
        found = group.scrape()
        counts = per_process(found)
        if len(counts) == 2 and all(count > 0 for count in counts.values()):
            return found
    raise AssertionError(f"the kernel gave every connection to one process: {counts}")


def assert_exact(group: Group, found: dict[str, list[Any]]) -> None:
    """Every total equals the connections made so far (the scrape that produced ``found`` included)."""
    assert total(found, "portmux_processes") == 2
    # Both processes name the listener as the configuration does: one series per listener.
    assert {s.labels["listener"] for s in found["portmux_accepted_connections"]} == {
        f"tcp:{group.port}:interface=127.0.0.1"}
    accepted = total(found, "portmux_accepted_connections_total")
    assert accepted == group.made, (accepted, group.made)
    assert sum(per_process(found).values()) == accepted
    assert total(found, "portmux_connections_total", route="web") == group.proxied
    assert total(found, "portmux_connections_total", route="status") == group.made - group.proxied
    assert total(found, "portmux_closed_while_sniffing_total") == 0
    assert total(found, "portmux_refusals_total") == 0
    # Histograms, bucket-wise: every connection was sniffed once, every proxied one connected once.
    assert total(found, "portmux_sniff_seconds_count") == group.made
    assert total(found, "portmux_sniff_seconds_bucket", le="+Inf") == group.made
    assert total(found, "portmux_connect_seconds_count") == group.proxied
    assert total(found, "portmux_connect_seconds_bucket", le="+Inf") == group.proxied
    if byte_counts():  # with Twisted's public API only, no byte counts (docs/architecture.md)
        assert total(found, "portmux_bytes_total", route="web", direction="out") >= group.proxied * len(BODY)


def test_every_scrape_reports_the_whole_group(group: Group) -> None:
    spread(group)
    answered: set[int] = set()
    for _ in range(40):  # each scrape may be answered by either process; bounded
        found = group.scrape()
        answered.add(answering(found))
        assert_exact(group, found)
        if answered == {1, 2} and len(group.texts) >= 6:
            break
    assert answered == {1, 2}, answered


def test_a_killed_child_does_not_make_totals_go_back(group: Group) -> None:
    found = spread(group)
    seen = [(total(found, "portmux_accepted_connections_total"), per_process(found))]
    child = int(STARTED.search(group.text()).group(1))  # type: ignore[union-attr]
    time.sleep(1.2)  # its last scrape reaches the parent in a counters report too (status.json's)
    os.kill(child, signal.SIGKILL)
    wait_for(lambda: not alive(child), limit=5)  # its socket is closed: new connections go to the parent
    replaced: list[int] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # traffic and scrapes while the child is gone and replaced
        for _ in range(3):
            group.get()
        found = group.scrape()
        seen.append((total(found, "portmux_accepted_connections_total"), per_process(found)))
        replaced = [int(pid) for pid in STARTED.findall(group.text()) if int(pid) != child]
        if replaced and len(CHILD_LISTENING.findall(group.text())) == 2 and answering(found) == 2:
            break
        time.sleep(0.1)
    assert replaced and alive(replaced[0]) and not alive(child), group.text()[-3000:]
    for (before, members_before), (after, members_after) in itertools.pairwise(seen):
        assert after >= before, seen
        for member, count in members_before.items():
            assert members_after.get(member, 0) >= count, seen
    # The killed child had reported everything before it died: nothing is lost either,
    # in /metrics or on the status page (which keeps what the last report had).
    time.sleep(1.2)
    assert_exact(group, group.scrape())
    time.sleep(1.2)
    status = group.status()
    assert status["connections"]["accepted"] == group.made, (status["connections"], group.made)
    web = next(r for r in status["routes"] if r["name"] == "web")
    assert web["counters"]["connections"] == group.proxied
