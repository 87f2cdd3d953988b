"""``/metrics`` of a real ``twistd portmux``: prometheus_client's parser, promtool, and the accounting."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon.daemon_support import Daemon, admin_config, byte_counts, start_backend
from tests.support import free_port, stop_process

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")


@pytest.fixture
def scraped(tmp_path: Path) -> Iterator[tuple[str, int, int]]:
    """Traffic of every kind through a daemon, then one scrape: (text, daemon port, backend port)."""
    import trustme

    ca = trustme.CA()
    ca.issue_cert("site.test").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "site.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    backend, backend_port = start_backend()
    dead = free_port()
    daemon = Daemon(tmp_path, admin_config(tmp_path, backend_port, dead, 0.2))
    port = daemon.port
    try:
        daemon.wait_log(f"backend tcp:127.0.0.1:{dead} is DOWN")
        for _ in range(3):
            subprocess.run(["curl", "-sSf", "-m", "10", f"http://127.0.0.1:{port}/x"], check=True,
                           capture_output=True)
        subprocess.run(["curl", "-sSf", "-m", "10", "--cacert", str(tmp_path / "ca.pem"),
                        "--resolve", f"site.test:{port}:127.0.0.1", f"https://site.test:{port}/"],
                       check=True, capture_output=True)
        tls12 = subprocess.run(["curl", "-sS", "-m", "10", "--insecure", "--tls-max", "1.1", "--tlsv1",
                                f"https://127.0.0.1:{port}/"], check=False, capture_output=True)
        assert tls12.returncode != 0
        subprocess.run(["nc", "-N", "127.0.0.1", str(port)], check=False, input=b"nosuch\r\n", capture_output=True,
                       timeout=10)
        socket.create_connection(("127.0.0.1", port), timeout=5).close()  # closed while sniffing
        time.sleep(0.3)
        text = subprocess.run(["curl", "-sSf", "-m", "10", f"http://127.0.0.1:{port}/admin/metrics"],
                              check=True, capture_output=True).stdout.decode()
        yield text, port, backend_port
    finally:
        daemon.stop()
        stop_process(backend)


def samples(text: str) -> dict[str, list[Any]]:
    """Metric family name → its samples, through prometheus_client's own parser."""
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def value(found: dict[str, list[Any]], family: str, sample: str, **labels: str) -> float:
    matching = [s.value for s in found[family] if s.name == sample and all(s.labels.get(k) == v
                                                                           for k, v in labels.items())]
    assert len(matching) == 1, (family, sample, labels, found.get(family))
    return float(matching[0])


def test_parser_reads_every_family_with_the_accounting(scraped: tuple[str, int, int]) -> None:
    text, _port, backend_port = scraped
    found = samples(text)
    for family in ("portmux_accepted_connections", "portmux_connections", "portmux_active_connections",
                   "portmux_bytes", "portmux_refusals", "portmux_sniff_seconds", "portmux_connect_seconds",
                   "portmux_backend_up", "portmux_tls_handshake_failures",
                   "portmux_certificate_expiry_timestamp_seconds", "portmux_registered_routes",
                   "process_cpu_seconds", "process_open_fds"):
        assert family in found, (family, sorted(found))
    listener = "tcp:0:interface=127.0.0.1"
    accepted = value(found, "portmux_accepted_connections", "portmux_accepted_connections_total",
                     listener=listener)
    routed = sum(s.value for s in found["portmux_connections"]
                 if s.name == "portmux_connections_total" and "/" not in s.labels["route"])
    refused_unrouted = sum(s.value for s in found["portmux_refusals"]
                           if s.name == "portmux_refusals_total" and s.labels["route"] == "")
    closed = value(found, "portmux_closed_while_sniffing", "portmux_closed_while_sniffing_total",
                   listener=listener)
    sniffing = value(found, "portmux_sniffing_connections", "portmux_sniffing_connections")
    assert accepted == 8  # 3 http + https + bad TLS + tcpmux + silent close + the scrape
    assert accepted == routed + refused_unrouted + closed + sniffing
    assert closed == 1
    assert value(found, "portmux_refusals", "portmux_refusals_total", reason="unknown_service", route="") == 1
    assert value(found, "portmux_connections", "portmux_connections_total", route="web") == 3
    assert value(found, "portmux_connections", "portmux_connections_total", route="https/site") == 1
    if byte_counts():
        assert value(found, "portmux_bytes", "portmux_bytes_total", route="https/site", direction="out") > 100
        assert value(found, "portmux_bytes", "portmux_bytes_total", route="web", direction="in") > 100
    assert value(found, "portmux_active_connections", "portmux_active_connections", route="admin") == 1
    assert value(found, "portmux_backend_up", "portmux_backend_up", route="web",
                 backend=f"tcp:127.0.0.1:{backend_port}") == 1
    down = [s for s in found["portmux_backend_up"] if s.labels["backend"] != f"tcp:127.0.0.1:{backend_port}"
            and s.labels["route"] == "web"]
    assert [s.value for s in down] == [0]
    assert sum(s.value for s in found["portmux_tls_handshake_failures"]
               if s.name == "portmux_tls_handshake_failures_total") == 1
    expiry = value(found, "portmux_certificate_expiry_timestamp_seconds",
                   "portmux_certificate_expiry_timestamp_seconds", name="site.test")
    assert expiry > time.time() + 86400
    assert value(found, "portmux_sniff_seconds", "portmux_sniff_seconds_count") >= 5
    connects = [s for s in found["portmux_connect_seconds"] if s.name == "portmux_connect_seconds_count"]
    assert sum(s.value for s in connects) == 4
    assert value(found, "portmux_registered_routes", "portmux_registered_routes") == 0
    for limit in ("max_connections", "per_source_limit"):
        assert value(found, "portmux_not_accepted", "portmux_not_accepted_total", limit=limit) == 0


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian: prometheus) not installed")
def test_promtool_check_metrics_passes(scraped: tuple[str, int, int]) -> None:
    text, _, _ = scraped
    checked = subprocess.run(["promtool", "check", "metrics"], check=False, input=text.encode(), capture_output=True,
                             timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
