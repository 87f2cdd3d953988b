"""A real ``twistd portmux`` under a silent flood from many loopback addresses: curl is
served long before the preamble timeout, the oldest unclassified connections were closed,
and /metrics counts them (refusals ``sniff_evicted``), one rate-limited log line each."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.daemon.daemon_support import Daemon
from tests.daemon.test_metrics import samples, value

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")

CONFIG = """
[[listen]]
endpoint = "tcp:0:interface=127.0.0.1"
[sniff]
preamble_timeout = 60
[limits]
max_connections = 40
max_per_source = 2
max_sniffing = 10
evict_sniffing_after = 0.5
[[route]]
name = "status"
match = { protocol = "http" }
status = true
"""


def closed_by_server(client: socket.socket) -> bool:
    client.settimeout(10)
    try:
        return client.recv(1) == b""
    except ConnectionResetError:
        return True


def test_silent_flood_from_many_addresses_leaves_room_for_curl(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path, CONFIG)
    flood: list[socket.socket] = []
    try:
        for i in range(30):  # 30 addresses, one silent connection each: max_per_source never bites
            flood.append(socket.create_connection(("127.0.0.1", daemon.port), timeout=5,
                                                  source_address=(f"127.0.1.{i + 1}", 0)))
        served = subprocess.run(["curl", "-sSf", "-m", "30", f"http://127.0.0.1:{daemon.port}/status.json"],
                                check=True, capture_output=True, timeout=40)
        assert b'"sniffing"' in served.stdout
        assert all(closed_by_server(c) for c in flood[:21])  # the oldest made room, one each
        daemon.wait_log("sniff_evicted", count=20)
        text = subprocess.run(["curl", "-sSf", "-m", "30", f"http://127.0.0.1:{daemon.port}/metrics"],
                              check=True, capture_output=True, timeout=40).stdout.decode()
        found = samples(text)
        assert value(found, "portmux_refusals", "portmux_refusals_total", reason="sniff_evicted", route="") == 21
        assert value(found, "portmux_not_accepted", "portmux_not_accepted_total", limit="max_connections") == 0
        assert daemon.text().count("sniff_evicted") == 20  # rate-limited: a burst of 20, then a summary
        assert "preamble_timeout" not in daemon.text()  # curl was served before any timeout freed a place
        assert "Unhandled Error" not in daemon.text()
    finally:
        for client in flood:
            client.close()
        daemon.stop()
