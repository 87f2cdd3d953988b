"""TLS termination cost: portmux vs HAProxy (``bind … ssl crt``) vs nginx stream ``ssl``, measured with h2load.

Each middlebox terminates TLS 1.3 with the same certificate (ECDSA P-256, then
RSA 2048) and forwards the plaintext to one nginx HTTP backend (keep-alive,
``return 200``).  h2load (Debian's nghttp2-client) measures, over HTTP/1.1:

- new handshakes/s: ``-c 400 -n 400``: 400 connections at once, one request each,
  so every connection is a full TLS 1.3 handshake (h2load never resumes sessions);
- keep-alive requests/s: 16 connections, many requests each;
- resumed handshakes/s, counted separately: ``openssl s_time -reuse`` (one
  connection at a time, session resumption) next to ``s_time -new``;
- the middlebox's CPU time (its process tree, /proc) per new handshake and per
  keep-alive request: steadier than the rates on a machine shared with other jobs
  (a CPU-time ratio below 1 means portmux is cheaper).

The middlebox runs on CPU 1, client and backend on CPU 0 (when there are two);
middleboxes are interleaved within every repetition and medians reported, with
ratios against HAProxy measured in the same run.  Everything is on 127.0.0.1,
every load is bounded in count and time.

    python bench/tls_bench.py [--reps 3] [--quick] [--keys ecdsa,rsa] [--only portmux,haproxy,nginx]
                              [--baseline DIR]   (also portmux-base: the portmux tree in DIR)
    python bench/tls_bench.py --role portmux --cert C --key K --port P --backend B   (internal)
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
import time
from pathlib import Path
from typing import Any

from run import cpu_seconds, free_port, wait_listening  # bench/ is the script's directory

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NAME = "bench.example.com"
MIDDLEBOXES = ("portmux", "haproxy", "nginx")
TIMEOUT = 120


def two_cpus() -> bool:
    return (os.cpu_count() or 1) > 1 and hasattr(os, "sched_setaffinity")


def pinned(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if two_cpus() and shutil.which("taskset") else []


# -- certificates ------------------------------------------------------------------


def make_certificate(workdir: Path, kind: str) -> dict[str, str]:
    """A self-signed certificate for NAME: ECDSA P-256 or RSA 2048; cert, key and combined PEM."""
    key, cert, both = workdir / f"{kind}.key", workdir / f"{kind}.crt", workdir / f"{kind}.pem"
    algorithm = (["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if kind == "ecdsa"
                 else ["-newkey", "rsa:2048"])
    subprocess.run(
        ["openssl", "req", "-x509", "-nodes", *algorithm, "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", f"/CN={NAME}", "-addext", f"subjectAltName=DNS:{NAME}"],
        check=True, capture_output=True, timeout=60,
    )
    both.write_text(cert.read_text() + key.read_text())
    return {"cert": str(cert), "key": str(key), "combined": str(both)}


# -- the processes -------------------------------------------------------------------


BACKEND_CONF = """worker_processes 1;
daemon off;
pid {rundir}/backend.pid;
error_log stderr warn;
worker_rlimit_nofile 8192;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "hello\\n"; }}
    }}
}}
"""

NGINX_CONF = """load_module modules/ngx_stream_module.so;
worker_processes 1;
daemon off;
pid {rundir}/nginx-{port}.pid;
error_log stderr warn;
worker_rlimit_nofile 8192;
events {{ worker_connections 4096; }}
stream {{
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        ssl_session_cache shared:S:1m;
        proxy_pass 127.0.0.1:{backend};
    }}
}}
"""

HAPROXY_CONF = """global
    maxconn 8000
    nbthread 1
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend fe
    bind 127.0.0.1:{port} ssl crt {combined} ssl-min-ver TLSv1.3
    default_backend be
backend be
    server b1 127.0.0.1:{backend}
"""


def start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log.open("ab"),
                            start_new_session=True)


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a process this script started, by its PID."""
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def middlebox_argv(name: str, port: int, backend: int, cert: dict[str, str], rundir: Path,
                   baseline: Path | None = None) -> list[str]:
    if name in ("portmux", "portmux-base"):
        tree = baseline if name == "portmux-base" and baseline is not None else ROOT
        # The role puts its own tree first on sys.path, so each runs its own portmux.
        return [*pinned(1), sys.executable, str(tree / "bench" / "tls_bench.py"), "--role", "portmux",
                "--cert", cert["cert"], "--key", cert["key"], "--port", str(port),
                "--backend", str(backend)]
    if name == "haproxy":
        conf = rundir / f"haproxy-{port}.cfg"
        conf.write_text(HAPROXY_CONF.format(port=port, backend=backend, combined=cert["combined"]))
        return [*pinned(1), "haproxy", "-db", "-f", str(conf)]
    conf = rundir / f"nginx-{port}.conf"
    conf.write_text(NGINX_CONF.format(port=port, backend=backend, rundir=rundir, **cert))
    return [*pinned(1), "nginx", "-e", "stderr", "-c", str(conf)]


def serve_portmux(args: argparse.Namespace) -> None:
    """Internal role: portmux terminating TLS 1.3 and proxying the plaintext HTTP to the backend."""
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor as _reactor

    sys.path.insert(0, str(ROOT))
    from portmux.core.mux import Multiplexer
    from portmux.core.routing import Match, Route
    from portmux.daemon._gc import freeze_startup_objects
    from portmux.targets.proxy import ProxyTarget
    from portmux.targets.tls import TLSTarget
    from portmux.tls import CertificateStore, TLSSettings

    reactor: Any = _reactor
    store = CertificateStore(
        [(args.cert, args.key)],
        settings=TLSSettings(alpn=("http/1.1",), min_version="TLSv1.3"),
    )
    inner = Route("http", Match(protocol="http"),
                  ProxyTarget(reactor, [f"tcp:127.0.0.1:{args.backend}"]))
    target = TLSTarget(reactor, store, [inner])
    mux = Multiplexer(reactor, [Route("https", Match(protocol="tls"), target)])
    reactor.listenTCP(args.port, mux, backlog=4096, interface="127.0.0.1")
    reactor.callWhenRunning(freeze_startup_objects)
    reactor.run()


# -- the load ------------------------------------------------------------------------


def h2load(port: int, connections: int, requests: int) -> float:
    """Requests per second h2load reports over HTTP/1.1 on TLS (0.0 when it failed)."""
    out = subprocess.run(
        [*pinned(0), "h2load", "--h1", "-t", "1", "-c", str(connections), "-n", str(requests),
         "-T", "10", "-N", "10", f"https://127.0.0.1:{port}/"],
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out.stdout)
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out.stdout)
    if not (done and rate) or int(done.group(2)) < requests * 0.99:
        sys.stderr.write(f"h2load on {port} fell short:\n{out.stdout[-600:]}{out.stderr[-300:]}\n")
        return 0.0
    if "TLSv1.3" not in out.stdout:
        sys.stderr.write(f"h2load on {port}: not TLS 1.3\n")
    return float(rate.group(1))


def s_time(port: int, mode: str, seconds: int) -> float:
    """Sequential connections per second from ``openssl s_time -new|-reuse``."""
    out = subprocess.run(
        [*pinned(0), "openssl", "s_time", "-connect", f"127.0.0.1:{port}", f"-{mode}",
         "-time", str(seconds), "-tls1_3"],
        capture_output=True, text=True, timeout=seconds * 4 + 30, check=False,
    )
    found = re.findall(r"(\d+) connections in ([\d.]+)s", out.stdout)
    if not found:
        return 0.0
    count, elapsed = found[-1]
    return int(count) / float(elapsed) if float(elapsed) else 0.0


def measure(args: argparse.Namespace) -> dict[str, Any]:
    rundir = Path(tempfile.mkdtemp(prefix="portmux-tls-bench-"))
    log = rundir / "stderr.log"
    backend_port = free_port()
    (rundir / "backend.conf").write_text(BACKEND_CONF.format(port=backend_port, rundir=rundir))
    backend = start([*pinned(0), "nginx", "-e", "stderr", "-c", str(rundir / "backend.conf")], log)
    results: dict[str, Any] = {}
    try:
        wait_listening(backend_port)
        for kind in args.keys:
            cert = make_certificate(rundir, kind)
            figures: dict[str, dict[str, list[float]]] = {n: {} for n in args.only}
            for rep in range(args.reps):
                order = list(args.only[rep % len(args.only):]) + list(args.only[: rep % len(args.only)])
                for name in order:
                    port = free_port()
                    process = start(
                        middlebox_argv(name, port, backend_port, cert, rundir, args.baseline), log
                    )
                    try:
                        wait_listening(port)
                        h2load(port, 50, 500)  # warm up
                        f = figures[name]
                        used = cpu_seconds(process.pid)
                        f.setdefault("handshakes/s", []).append(h2load(port, args.burst, args.burst))
                        used, before = cpu_seconds(process.pid), used
                        f.setdefault("CPU us/handshake", []).append((used - before) * 1e6 / args.burst)
                        f.setdefault("keep-alive req/s", []).append(h2load(port, 16, args.requests))
                        used, before = cpu_seconds(process.pid), used
                        f.setdefault("CPU us/request", []).append((used - before) * 1e6 / args.requests)
                        f.setdefault("s_time new/s", []).append(s_time(port, "new", args.stime))
                        f.setdefault("s_time reuse/s", []).append(s_time(port, "reuse", args.stime))
                    finally:
                        stop(process)
                    print(f"  {kind} rep {rep + 1} {name}: "
                          + ", ".join(f"{k} {v[-1]:.0f}" for k, v in figures[name].items()),
                          flush=True)
            results[kind] = {n: {k: statistics.median(v) for k, v in f.items()} for n, f in figures.items()}
    finally:
        stop(backend)
    return results


def report(results: dict[str, Any], only: list[str]) -> None:
    """Medians per middlebox, and each portmux as a ratio to every peer measured in the run."""
    ours = [n for n in only if n.startswith("portmux")]
    pairs = [(a, b) for a in ours for b in only if b != a and not (a == "portmux-base" and b in ours)]
    for kind, table in results.items():
        metrics = list(next(iter(table.values())).keys())
        print(f"\n{kind.upper()} certificate, TLS 1.3, medians")
        print("| metric | " + " | ".join(only) + " | " + " | ".join(f"{a}/{b}" for a, b in pairs) + " |")
        print("|---" * (1 + len(only) + len(pairs)) + "|")
        for metric in metrics:
            values = [table[n][metric] for n in only]
            ratios = [table[a][metric] / table[b][metric] if table[b][metric] else float("nan")
                      for a, b in pairs]
            print(f"| {metric} | " + " | ".join(f"{v:,.0f}" for v in values) + " | "
                  + " | ".join(f"{r:.2f}x" for r in ratios) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one rep, shorter loads")
    parser.add_argument("--keys", default="ecdsa,rsa")
    parser.add_argument("--only", default=",".join(MIDDLEBOXES))
    parser.add_argument("--burst", type=int, default=400, help="connections per handshake run")
    parser.add_argument("--requests", type=int, default=40000, help="keep-alive requests per run")
    parser.add_argument("--stime", type=int, default=3, help="seconds per s_time run")
    parser.add_argument("--json", help="write the medians here")
    parser.add_argument("--baseline", type=Path,
                        help="another portmux tree (e.g. a git archive of main) run as portmux-base")
    parser.add_argument("--role", choices=("client", "portmux"), default="client")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--port", type=int)
    parser.add_argument("--backend", type=int)
    args = parser.parse_args()
    if args.role == "portmux":
        serve_portmux(args)
        return
    for tool in ("h2load", "nginx", "openssl"):
        if shutil.which(tool) is None:
            sys.exit(f"bench/tls_bench.py needs {tool} (Debian: nghttp2-client, nginx-light, openssl)")
    args.keys = args.keys.split(",")
    args.only = [n for n in args.only.split(",") if n != "haproxy" or shutil.which("haproxy")]
    if args.baseline is not None and "portmux-base" not in args.only:
        args.only.insert(1, "portmux-base")
    if args.quick:
        args.reps, args.burst, args.requests, args.stime = 1, 200, 10000, 2
    print(f"tls_bench {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC, reps={args.reps}, "
          f"pinned={two_cpus()}, load average {os.getloadavg()[0]:.1f}", flush=True)
    results = measure(args)
    print(f"finished {time.strftime('%H:%M:%S', time.gmtime())} UTC, "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    report(results, args.only)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
