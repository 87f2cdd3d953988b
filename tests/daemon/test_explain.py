"""``portmux explain``: the trace printed for given bytes, and its exit status."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_cli import REPO, run_module

FIXTURES = REPO / "tests" / "fixtures"

CONFIG = """\
[[listen]]
endpoint = "tcp:0:interface=127.0.0.1"

[[route]]
name = "web"
match = { protocol = "http", host = "a.example" }
proxy = ["tcp:127.0.0.1:9"]

[[route]]
name = "orders"
match = { via = "net.tcp://+/orders/" }
proxy = { endpoints = ["tcp:127.0.0.1:9"], rewrite_via = true }

[[route]]
name = "lan-only"
match = { protocol = "nmf", network = "127.128.0.0/9" }
proxy = ["tcp:127.0.0.1:9"]
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "explain.toml"
    path.write_text(CONFIG)
    return path


def test_a_captured_wcf_preamble(config: Path) -> None:
    """Mono's captured preamble: nmf matches, web and lan-only say why not, orders is chosen."""
    done = run_module("explain", str(config), "--capture", str(FIXTURES / "nmf/mono-buffered.bin"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "bytes: 54 from 127.0.0.1"
    probes = [line.split() for line in lines[2:16]]
    assert [p[1] for p in probes][:6] == ["tls", "h2c", "http", "ssh", "tcpmux", "nmf"]
    assert [p[2] for p in probes if p[1] == "nmf"] == ["match"]
    assert all(p[2] == "NO" for p in probes if p[1] != "nmf")
    assert lines[16].startswith("preamble: nmf via=net.tcp://127.0.0.1:") and "mode=duplex" in lines[16]
    routes = [" ".join(line.split()) for line in lines[18:21]]
    assert routes == [
        "1 web no: protocol (wants http, has nmf)",
        "2 orders yes",
        "3 lan-only no: network (wants 127.128.0.0/9, has 127.0.0.1)",
    ]
    assert lines[-1].startswith("chosen: orders -> proxy to tcp:127.0.0.1:9 (Via rewritten) (the Via index")


def test_hex_from_another_address_and_a_refusal(config: Path) -> None:
    """--hex and --from: an HTTP request for another host is refused (exit 1) with the 404 shown."""
    request = b"GET /x HTTP/1.1\r\nHost: b.example\r\n\r\n".hex(" ")
    done = run_module("explain", str(config), "--hex", request, "--from", "127.129.2.3")
    assert done.returncode == 1, done.stderr
    assert "bytes: 36 from 127.129.2.3" in done.stdout
    assert "preamble: http method=GET target=/x path=/x host=b.example http_version=HTTP/1.1" in done.stdout
    assert "no: host (wants a.example, has b.example)" in done.stdout
    assert "no: via (wants net.tcp://+/orders/, has none)" in done.stdout
    chosen = done.stdout.splitlines()[-1]
    assert chosen.startswith("chosen: none: no route for http b.example; refused with b'HTTP/1.1 404")


def test_incomplete_bytes(config: Path) -> None:
    done = run_module("explain", str(config), "--hex", "16 03 01")
    assert done.returncode == 1
    assert "   1 tls       NEED_MORE" in done.stdout
    assert done.stdout.splitlines()[-1].startswith("preamble: none yet")


def test_bad_input(config: Path, tmp_path: Path) -> None:
    done = run_module("explain", str(config), "--hex", "zz")
    assert done.returncode == 2 and "cannot read the bytes" in done.stderr
    done = run_module("explain", str(config), "--capture", str(tmp_path / "missing.bin"))
    assert done.returncode == 2 and "missing.bin" in done.stderr
    (tmp_path / "bad.toml").write_text("[[route]]\nname = 1\n")
    done = run_module("explain", str(tmp_path / "bad.toml"), "--hex", "00")
    assert done.returncode == 2 and "bad.toml" in done.stderr
    done = run_module("explain", str(config))
    assert done.returncode == 2 and "--hex" in done.stderr
