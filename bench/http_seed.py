"""The seed experiment: seconds per call over a slow link, direct vs through portmux per request.

The bench makes two network namespaces of its own (client and server) joined by
a veth pair, and delays each direction with ``tc qdisc … netem delay RTT/2``.
In the server namespace: nginx as the backend (HTTP on 8000, HTTPS on 8443) and
portmux (9000: HTTP routed per request to the backend over loopback, TLS
terminated then routed per request). In the client namespace, for each RTT, a
keep-alive client makes sequential calls for a fixed time, and so does a client
that reconnects for every call, over HTTP and HTTPS, direct and through portmux.
Printed: calls/s and s/call, and portmux's s/call as a ratio of direct's. The
namespaces (and the processes in them) are removed at the end, whatever happens.

    sudo python bench/http_seed.py [--rtts 1,50,100,200] [--seconds 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIENT_NS, SERVER_NS = "pmxbench-client", "pmxbench-server"
CLIENT_IP, SERVER_IP = "10.231.0.1", "10.231.0.2"
NAME = "seed.example"

CLIENT = r"""
import http.client, json, ssl, sys, time
host, port, scheme, mode, seconds, ca, name = sys.argv[1:8]
port, seconds = int(port), float(seconds)
context = ssl.create_default_context(cafile=ca)
class TLSConnection(http.client.HTTPSConnection):
    def connect(self):
        http.client.HTTPConnection.connect(self)
        self.sock = context.wrap_socket(self.sock, server_hostname=name)
def connect():
    if scheme == "https":
        return TLSConnection(host, port, context=context, timeout=30)
    return http.client.HTTPConnection(host, port, timeout=30)
calls, connection = 0, None
headers = {"Host": name}
started = time.monotonic()
while time.monotonic() - started < seconds or calls < 3:
    if connection is None or mode == "reconnect":
        if connection is not None:
            connection.close()
        connection = connect()
    connection.request("GET", "/seed/call", headers=dict(headers, **({"Connection": "close"} if mode == "reconnect" else {})))
    response = connection.getresponse()
    assert response.status == 200, response.status
    response.read()
    calls += 1
elapsed = time.monotonic() - started
print(json.dumps({"calls": calls, "seconds": elapsed}))
"""


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True, timeout=60)


def in_ns(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


class Link:
    """The link between the namespaces: a veth pair delayed by netem, or (no sch_netem in
    this kernel) bench/netns_wire.py's TUN pair delayed in user space."""

    def __init__(self) -> None:
        self.wire: subprocess.Popen[str] | None = None
        self.devices = ("pmxb-c", "pmxb-s")

    def make(self) -> str:
        for ns in (CLIENT_NS, SERVER_NS):
            run("ip", "netns", "add", ns)
            run(*in_ns(ns, "ip", "link", "set", "lo", "up"))
        run(*in_ns(CLIENT_NS, "ip", "link", "add", "name", "pmxb-c", "type", "veth", "peer", "name", "pmxb-s"))
        run(*in_ns(CLIENT_NS, "ip", "link", "set", "pmxb-s", "netns", SERVER_NS))
        probe = run(*in_ns(CLIENT_NS, "tc", "qdisc", "replace", "dev", "pmxb-c", "root", "netem", "delay", "1ms"),
                    check=False)
        kind = "veth + tc netem"
        if probe.returncode != 0:
            run(*in_ns(CLIENT_NS, "ip", "link", "del", "pmxb-c"))
            self.wire = subprocess.Popen([sys.executable, str(Path(__file__).with_name("netns_wire.py")),
                                          CLIENT_NS, SERVER_NS], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True)
            assert self.wire.stdout is not None
            if self.wire.stdout.readline().strip() != "ready":
                raise RuntimeError("the TUN wire did not start")
            self.devices = ("pmxw-c", "pmxw-s")
            kind = "TUN pair + user-space delay (this kernel has no sch_netem)"
        for ns, dev, ip in ((CLIENT_NS, self.devices[0], CLIENT_IP), (SERVER_NS, self.devices[1], SERVER_IP)):
            run(*in_ns(ns, "ip", "addr", "add", f"{ip}/24", "dev", dev))
            run(*in_ns(ns, "ip", "link", "set", dev, "up"))
        return kind

    def set_rtt(self, rtt_ms: float) -> None:
        if self.wire is not None:
            assert self.wire.stdin is not None
            self.wire.stdin.write(f"delay {rtt_ms / 2000:.6f}\n")
            self.wire.stdin.flush()
            return
        half = f"{rtt_ms / 2:g}ms"
        for ns, dev in ((CLIENT_NS, self.devices[0]), (SERVER_NS, self.devices[1])):
            run(*in_ns(ns, "tc", "qdisc", "replace", "dev", dev, "root", "netem", "delay", half, "limit", "100000"))

    def close(self) -> None:
        if self.wire is not None:
            self.wire.kill()
            self.wire.wait()


def remove_namespaces() -> None:
    for ns in (CLIENT_NS, SERVER_NS):
        pids = run("ip", "netns", "pids", ns, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        run("ip", "netns", "del", ns, check=False)


def start_servers(work: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    import trustme

    ca = trustme.CA()
    ca.issue_cert(NAME).private_key_and_cert_chain_pem.write_to_path(str(work / "cert.pem"))
    ca.cert_pem.write_to_path(str(work / "ca.pem"))
    (work / "nginx.conf").write_text(f"""
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:8000;
        listen {SERVER_IP}:8000;
        listen {SERVER_IP}:8443 ssl;
        ssl_certificate {work}/cert.pem;
        ssl_certificate_key {work}/cert.pem;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
""")
    processes.append(subprocess.Popen(in_ns(SERVER_NS, "nginx", "-c", str(work / "nginx.conf"),
                                            "-g", "daemon off;")))
    (work / "portmux.toml").write_text(f"""
[[listen]]
endpoint = "tcp:9000:interface={SERVER_IP}"

[[route]]
name = "tls"
match = {{ protocol = "tls" }}
[route.tls]
certificates = ["cert.pem"]
alpn = ["http/1.1"]
[[route.tls.route]]
name = "seed-tls"
match = {{ protocol = "http", path = "/seed/" }}
proxy = ["tcp:127.0.0.1:8000"]

[[route]]
name = "seed"
match = {{ protocol = "http", path = "/seed/" }}
proxy = ["tcp:127.0.0.1:8000"]
""")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    processes.append(subprocess.Popen(
        in_ns(SERVER_NS, sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
              "-n", "--pidfile=", "-l", str(work / "portmux.log"), "portmux",
              "--config", str(work / "portmux.toml")), cwd=work, env=env))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ready = [run(*in_ns(CLIENT_NS, "bash", "-c", f"exec 3<>/dev/tcp/{SERVER_IP}/{p}"), check=False)
                 for p in (8000, 8443, 9000)]
        if all(r.returncode == 0 for r in ready):
            return
        time.sleep(0.2)
    raise RuntimeError("servers did not start")


def measure(port: int, scheme: str, mode: str, seconds: float, work: Path) -> dict[str, float]:
    out = run(*in_ns(CLIENT_NS, sys.executable, "-c", CLIENT, SERVER_IP, str(port), scheme, mode,
                     str(seconds), str(work / "ca.pem"), NAME))
    result = json.loads(out.stdout)
    return {"calls_per_s": result["calls"] / result["seconds"], "s_per_call": result["seconds"] / result["calls"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rtts", default="1,50,100,200")
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("tc") is None or shutil.which("nginx") is None:
        sys.exit("needs root, iproute2 (ip, tc) and nginx")
    rtts = [float(r) for r in args.rtts.split(",")]
    processes: list[subprocess.Popen[bytes]] = []
    remove_namespaces()
    link = Link()
    rows = []
    with tempfile.TemporaryDirectory(prefix="pmx-seed-") as tmp:
        work = Path(tmp)
        try:
            print(f"link: {link.make()}", flush=True)
            start_servers(work, processes)
            for rtt in rtts:
                link.set_rtt(rtt)
                for scheme in ("http", "https"):
                    for mode in ("keepalive", "reconnect"):
                        direct = measure(8000 if scheme == "http" else 8443, scheme, mode, args.seconds, work)
                        portmux = measure(9000, scheme, mode, args.seconds, work)
                        rows.append((rtt, scheme, mode, direct, portmux))
                        print(f"RTT {rtt:5g} ms {scheme:5} {mode:9}  direct {direct['calls_per_s']:8.1f} calls/s "
                              f"{direct['s_per_call'] * 1000:8.2f} ms/call   portmux {portmux['calls_per_s']:8.1f} "
                              f"calls/s {portmux['s_per_call'] * 1000:8.2f} ms/call   portmux/direct "
                              f"{portmux['s_per_call'] / direct['s_per_call']:5.3f}", flush=True)
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
            link.close()
            remove_namespaces()
    print(json.dumps([{"rtt_ms": r, "scheme": s, "client": m, "direct": d, "portmux": p}
                      for r, s, m, d, p in rows]))


if __name__ == "__main__":
    main()
