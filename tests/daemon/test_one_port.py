"""Issue 2's "done means": one twistd portmux port, real clients, real backends.

curl reaches the status page and an HTTP backend through a proxy route; openssl
s_client is routed by SNI to a real TLS backend (passthrough, handshake verified);
ssh reaches a real sshd; nc gets TCPMUX echo in-process.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.test_daemon import start_portmux
from tests.support import SSHD, free_port, start_sshd, stop_process, wait_listening

NEEDED = ["curl", "openssl", "ssh", "ssh-keygen", "nc"]
pytestmark = pytest.mark.skipif(
    any(shutil.which(n) is None for n in NEEDED) or not os.path.exists(SSHD),
    reason="needs curl, openssl, nc, openssh client and server",
)


BANNER_SERVER = """
import socket, sys
server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
while True:
    conn, _ = server.accept()
    try:
        with conn:
            conn.sendall(b"220 mail.example ESMTP ready\\r\\n")
            line = conn.recv(200)
            if line:
                conn.sendall(b"250 heard " + line)
    except OSError:  # e.g. the readiness probe, which hangs up at once
        pass
"""


class Backends:
    """Real backend processes on loopback ports, stopped by PID at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], port: int, **kwargs: object) -> None:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   stdin=subprocess.DEVNULL, **kwargs)  # type: ignore[call-overload]
        self.processes.append(process)
        wait_listening(port, process)

    def stop(self) -> None:
        for process in self.processes:
            stop_process(process)


@pytest.fixture(scope="module")
def one_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    import trustme

    root = tmp_path_factory.mktemp("one-port")
    backends = Backends(root)
    try:
        # HTTP backend
        (root / "www").mkdir()
        (root / "www" / "hello.txt").write_text("hello from the http backend\n")
        http_port = free_port()
        backends.start([sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                        str(http_port)], http_port, cwd=root / "www")
        # TLS backend (openssl s_server) with a trustme certificate for tls.example
        ca = trustme.CA()
        cert = ca.issue_cert("tls.example")
        cert.private_key_and_cert_chain_pem.write_to_path(str(root / "tls.pem"))
        ca.cert_pem.write_to_path(str(root / "ca.pem"))
        tls_port = free_port()
        backends.start(["openssl", "s_server", "-quiet", "-accept", f"127.0.0.1:{tls_port}",
                        "-cert", str(root / "tls.pem"), "-www"], tls_port)
        # SSH backend
        sshd, ssh_port = start_sshd(root)
        backends.processes.append(sshd)
        # A server-speaks-first backend (SMTP-like banner) for the silent route.
        banner_port = free_port()
        backends.start([sys.executable, "-c", BANNER_SERVER, str(banner_port)], banner_port)

        config = root / "one-port.toml"
        config.write_text(f"""
[[listen]]
endpoint = "tcp:0:interface=127.0.0.1"

[sniff]
silence_timeout = 0.5

[[route]]
name = "smtp"
match = {{ silent = true }}
proxy = ["tcp:127.0.0.1:{banner_port}"]

[[route]]
name = "web"
match = {{ protocol = "http", host = "web.example" }}
proxy = ["tcp:127.0.0.1:{http_port}"]

[[route]]
name = "status"
match = {{ protocol = "http" }}
status = true

[[route]]
name = "tls"
match = {{ protocol = "tls", sni = "tls.example" }}
proxy = ["tcp:127.0.0.1:{tls_port}"]

[[route]]
name = "ssh"
match = {{ protocol = "ssh" }}
proxy = ["tcp:127.0.0.1:{ssh_port}"]

[[route]]
name = "echo"
match = {{ protocol = "tcpmux", service = "echo" }}
echo = true
""")
        process, port, log = start_portmux(root, "--config", str(config))
        try:
            yield {"port": port, "root": root, "log": log}
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(10)
    finally:
        backends.stop()


def run(argv: list[str], data: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, input=data, check=False, capture_output=True, timeout=60)


def test_curl_status_page_and_proxied_backend(one_port: dict[str, object]) -> None:
    port = one_port["port"]
    status = run(["curl", "-sf", f"http://127.0.0.1:{port}/status.json"])
    assert b'"name": "ssh"' in status.stdout
    proxied = run(["curl", "-sf", "--resolve", f"web.example:{port}:127.0.0.1",
                   f"http://web.example:{port}/hello.txt"])
    assert proxied.stdout == b"hello from the http backend\n"


def test_openssl_s_client_routed_by_sni_to_the_tls_backend(one_port: dict[str, object]) -> None:
    port, root = one_port["port"], one_port["root"]
    result = run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername",
                  "tls.example", "-CAfile", str(Path(str(root)) / "ca.pem"),
                  "-verify_return_error", "-ign_eof"], b"GET / HTTP/1.0\r\n\r\n")
    assert b"Verify return code: 0 (ok)" in result.stdout, result.stdout[-600:]
    assert b"HTTP/1.0 200 ok" in result.stdout
    curl = run(["curl", "-sf", "--cacert", str(Path(str(root)) / "ca.pem"), "--resolve",
                f"tls.example:{port}:127.0.0.1", f"https://tls.example:{port}/"])
    assert curl.returncode == 0 and b"s_server" in curl.stdout


def test_unknown_sni_gets_a_tls_alert(one_port: dict[str, object]) -> None:
    port = one_port["port"]
    result = run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername",
                  "other.example"])
    assert result.returncode != 0
    assert b"unrecognized name" in result.stderr + result.stdout


def test_ssh_reaches_sshd_through_the_shared_port(one_port: dict[str, object]) -> None:
    port, root = one_port["port"], Path(str(one_port["root"]))
    result = run(["ssh", "-v", "-p", str(port), "-i", str(root / "user"),
                  "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                  "-o", f"UserKnownHostsFile={root / 'known_hosts'}",
                  "root@127.0.0.1", "echo", "via-portmux"])
    assert result.returncode == 0, result.stderr[-800:]
    assert result.stdout == b"via-portmux\n"
    assert b"Remote protocol version 2.0" in result.stderr


def test_nc_tcpmux_echo_in_process(one_port: dict[str, object]) -> None:
    result = run(["nc", "-q", "1", "127.0.0.1", str(one_port["port"])], b"echo\r\nhello")
    assert result.stdout == b"+\r\nhello"


def test_silent_client_reaches_the_server_speaks_first_backend(one_port: dict[str, object]) -> None:
    port = int(str(one_port["port"]))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reader = sock.makefile("rb")
        assert reader.readline() == b"220 mail.example ESMTP ready\r\n"  # after ~0.5 s of silence
        sock.sendall(b"EHLO client\r\n")
        assert reader.readline() == b"250 heard EHLO client\r\n"
