"""Requests/s on keep-alive connections: portmux per-request routing vs HAProxy, nginx, twisted.web.

One backend (nginx, one worker, a fixed 6-byte answer) behind four fronts on
loopback, measured in the same run with h2load (nghttp2-client):

- portmux: a ``proxy`` route per request (plain HTTP/1.1; TLS terminated, h2)
- HAProxy ``mode http`` with ``http-reuse always`` (one thread)
- nginx ``proxy_pass`` to an ``upstream`` with a ``keepalive`` pool (one worker)
- twisted.web ``ReverseProxyResource`` (the naive Python baseline; h2 via Twisted's H2)

``h2load --h1`` over plain HTTP/1.1 and ``h2load`` h2 over TLS. Ratios: portmux
to the Twisted baseline (goal ≥ 2), and to HAProxy and nginx. Bounded in count.

    python bench/http_rps.py [--requests 20000] [--clients 8] [--streams 10] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from run import free_port, wait_listening  # bench/ is the script's directory

ROOT = Path(__file__).resolve().parent.parent

TWISTED_FRONT = r"""
import sys
from twisted.internet import reactor, ssl
from twisted.web.proxy import ReverseProxyResource
from twisted.web.server import Site
from twisted.internet.endpoints import TCP4ServerEndpoint, SSL4ServerEndpoint
from OpenSSL import crypto
plain, tls, backend, pem = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
text = open(pem, "rb").read()
options = ssl.CertificateOptions(
    privateKey=crypto.load_privatekey(crypto.FILETYPE_PEM, text),
    certificate=crypto.load_certificate(crypto.FILETYPE_PEM, text),
    acceptableProtocols=[b"h2", b"http/1.1"])
site = Site(ReverseProxyResource("127.0.0.1", backend, b""))
site.log = lambda request: None
TCP4ServerEndpoint(reactor, plain, interface="127.0.0.1").listen(site)
SSL4ServerEndpoint(reactor, tls, options, interface="127.0.0.1").listen(site)
reactor.run()
"""


def h2load(url: str, requests: int, clients: int, streams: int, h1: bool) -> float:
    argv = ["h2load", "-n", str(requests), "-c", str(clients), "-t", "1"]
    argv += ["--h1"] if h1 else ["-m", str(streams)]
    out = subprocess.run([*argv, url], capture_output=True, text=True, timeout=300, check=False).stdout
    ok = re.search(r"(\d+) succeeded", out)
    rate = re.search(r"finished in [^,]+, ([\d.]+) req/s", out)
    if not ok or not rate or int(ok.group(1)) != requests:
        raise RuntimeError(f"h2load failed on {url}:\n{out}")
    return float(rate.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--streams", type=int, default=10)
    parser.add_argument("--reps", type=int, default=3, help="rounds over the four fronts; medians are reported")
    args = parser.parse_args()
    for tool in ("h2load", "nginx", "haproxy"):
        if shutil.which(tool) is None:
            sys.exit(f"needs {tool}")
    import trustme

    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="pmx-rps-") as tmp:
        work = Path(tmp)
        ca = trustme.CA()
        ca.issue_cert("127.0.0.1", "bench.example").private_key_and_cert_chain_pem.write_to_path(str(work / "cert.pem"))
        backend = free_port()
        ports = {name: (free_port(), free_port()) for name in ("portmux", "haproxy", "nginx", "twisted")}
        (work / "backend.conf").write_text(f"""
worker_processes 1; pid {work}/backend.pid; error_log {work}/backend-error.log;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 10000000;
  server {{ listen 127.0.0.1:{backend}; location / {{ return 200 "hello\\n"; }} }} }}
""")
        nginx_plain, nginx_tls = ports["nginx"]
        (work / "front.conf").write_text(f"""
worker_processes 1; pid {work}/front.pid; error_log {work}/front-error.log;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 10000000;
  upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{nginx_plain};
    listen 127.0.0.1:{nginx_tls} ssl http2;
    ssl_certificate {work}/cert.pem; ssl_certificate_key {work}/cert.pem;
    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }} }}
""")
        haproxy_plain, haproxy_tls = ports["haproxy"]
        (work / "haproxy.cfg").write_text(f"""
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend f
    bind 127.0.0.1:{haproxy_plain}
    bind 127.0.0.1:{haproxy_tls} ssl crt {work}/cert.pem alpn h2,http/1.1
    default_backend b
backend b
    http-reuse always
    server s 127.0.0.1:{backend}
""")
        portmux_plain, portmux_tls = ports["portmux"]
        (work / "portmux.toml").write_text(f"""
[[listen]]
endpoint = "tcp:{portmux_plain}:interface=127.0.0.1"
[[listen]]
endpoint = "tcp:{portmux_tls}:interface=127.0.0.1"
[[route]]
name = "tls"
match = {{ protocol = "tls" }}
[route.tls]
certificates = ["cert.pem"]
alpn = ["h2", "http/1.1"]
[[route.tls.route]]
name = "app-tls"
match = {{ protocol = "http", path = "/app/" }}
proxy = {{ endpoints = ["tcp:127.0.0.1:{backend}"], pool_size = 64 }}
[[route]]
name = "app"
match = {{ protocol = "http", path = "/app/" }}
proxy = {{ endpoints = ["tcp:127.0.0.1:{backend}"], pool_size = 64 }}
""")
        twisted_plain, twisted_tls = ports["twisted"]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        try:
            for argv in (
                ["nginx", "-c", str(work / "backend.conf"), "-g", "daemon off;"],
                ["nginx", "-c", str(work / "front.conf"), "-g", "daemon off;"],
                ["haproxy", "-f", str(work / "haproxy.cfg"), "-db"],
                [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
                 "-l", str(work / "portmux.log"), "portmux", "--config", str(work / "portmux.toml")],
                [sys.executable, "-c", TWISTED_FRONT, str(twisted_plain), str(twisted_tls), str(backend),
                 str(work / "cert.pem")],
            ):
                processes.append(subprocess.Popen(argv, cwd=work, env=env, stdout=subprocess.DEVNULL,
                                                  stderr=subprocess.DEVNULL))
            for port in (backend, *(p for pair in ports.values() for p in pair)):
                wait_listening(port)
            runs: dict[str, dict[str, list[float]]] = {name: {"h1": [], "h2": []} for name in ports}
            for name, (plain, _) in ports.items():
                h2load(f"http://127.0.0.1:{plain}/app/warm", 500, 2, 1, True)  # warm up
            for rep in range(args.reps):
                order = list(ports.items())
                if rep % 2:
                    order.reverse()  # background load falls on every front alike
                for name, (plain, tls) in order:
                    runs[name]["h1"].append(
                        h2load(f"http://127.0.0.1:{plain}/app/x", args.requests, args.clients, 1, True))
                    runs[name]["h2"].append(
                        h2load(f"https://127.0.0.1:{tls}/app/x", args.requests, args.clients, args.streams, False))
            results = {name: {mode: statistics.median(values) for mode, values in modes.items()}
                       for name, modes in runs.items()}
            for name, result in results.items():
                print(f"{name:8} h1 {result['h1']:9.0f} req/s   h2/TLS {result['h2']:9.0f} req/s   "
                      f"(median of {args.reps})", flush=True)
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
    pm = results["portmux"]
    for mode in ("h1", "h2"):
        print(f"{mode}: portmux/twisted {pm[mode] / results['twisted'][mode]:.2f}x   "
              f"portmux/haproxy {pm[mode] / results['haproxy'][mode]:.2f}x   "
              f"portmux/nginx {pm[mode] / results['nginx'][mode]:.2f}x")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
