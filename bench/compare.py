"""Compare portmux source trees (e.g. before/after an optimisation) under one load.

    python bench/compare.py NAME=DIR [NAME=DIR ...] [--reps 5] [--seconds 3]

Each DIR holds a ``portmux`` package (a copy of an older commit, say); each is
run as bench/portmux_proxy.py with PYTHONPATH=DIR, plus Twisted's portforward
as the yardstick.  Runs are interleaved, repeated and rotated (each rep
starts with the next tree, so none always runs after a connection-rate
test); the report gives the median middlebox CPU time per new connection
and per 16-connection round trip, which varies much less with background
load than throughput does.
Needs gcc, like bench/run.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import (
    HERE,
    PYTHON,
    Runner,
    Settings,
    build,
    cpu_seconds,
    free_port,
    stop,
    wait_listening,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="+", help="NAME=DIR holding a portmux package")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--pin", action="store_true", help="pin like bench/run.py does")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="portmux-compare-") as tmp:
        workdir = Path(tmp)
        backend_bin, client_bin = build(workdir)
        runner = Runner(Settings(pin=args.pin), client_bin, workdir)
        backend_port = free_port()
        procs = [runner.start("backend", [str(backend_bin), str(backend_port)], box=False)]
        try:
            wait_listening(backend_port)
            boxes: list[tuple[str, int, subprocess.Popen[bytes]]] = []
            for spec in [*args.trees, "portforward=-"]:
                name, _, tree = spec.partition("=")
                port = free_port()
                if tree == "-":
                    argv_ = [PYTHON, str(HERE / "portforward_fwd.py"), "--listen",
                             f"127.0.0.1:{port}", "--to", f"127.0.0.1:{backend_port}"]
                    env = dict(os.environ)
                else:
                    argv_ = [PYTHON, str(HERE / "portmux_proxy.py"), "--quiet", "--listen",
                             f"127.0.0.1:{port}", "--http", f"127.0.0.1:{backend_port}"]
                    # PORTMUX_BENCH_KEEP_PATH: portmux_proxy.py must import DIR's portmux,
                    # not put its own tree first on sys.path.
                    env = dict(os.environ, PYTHONPATH=str(Path(tree).resolve()),
                               PORTMUX_BENCH_KEEP_PATH="1")
                log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 - the child keeps it
                proc = subprocess.Popen(argv_, env=env, stdout=log, stderr=subprocess.STDOUT)
                if runner.pin:
                    os.sched_setaffinity(proc.pid, runner.box_cpus)
                procs.append(proc)
                wait_listening(port)
                boxes.append((name, port, proc))
            per_conn: dict[str, list[float]] = {}
            per_rt: dict[str, list[float]] = {}
            rate: dict[str, list[float]] = {}
            for rep in range(args.reps):
                # Rotate the order every rep, as bench/run.py does: whoever runs right
                # after a connection-rate test pays for its TIME_WAIT sockets in connect(2).
                shift = rep % len(boxes)
                for name, port, proc in boxes[shift:] + boxes[:shift]:
                    before = cpu_seconds(proc.pid)
                    out = runner.load("rate", port, 32, args.seconds)
                    used = cpu_seconds(proc.pid) - before
                    per_conn.setdefault(name, []).append(1e6 * used / max(1, out["connections"]))
                    rate.setdefault(name, []).append(out["per_s"])
                    before = cpu_seconds(proc.pid)
                    out = runner.load("pp", port, 16, args.seconds)
                    used = cpu_seconds(proc.pid) - before
                    per_rt.setdefault(name, []).append(1e6 * used / max(1, out["round_trips"]))
        finally:
            for proc in procs:
                stop(proc)
    print("| tree | CPU us / new connection | CPU us / round trip | connections/s |")
    print("|---|---|---|---|")
    for name, _, _ in boxes:
        print(
            f"| {name} | {statistics.median(per_conn[name]):.0f} | "
            f"{statistics.median(per_rt[name]):.1f} | {statistics.median(rate[name]):,.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
