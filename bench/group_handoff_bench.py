"""Handed-off connections/s through the daemon with ``processes = 1`` and ``processes = 2``, same run.

    python bench/group_handoff_bench.py [--rounds 3] [--seconds 3] [--concurrency 32]

Starts the real daemon (twistd portmux, a control socket) and bench/handoff_bench.py's
worker, which registers HTTP host ``bench`` path ``/`` in handoff mode and answers
a short response, then closes. bench/src/client.c's ``rate`` mode opens connections
as fast as it can (connect, GET, read to EOF), loopback only, bounded by time. With
``processes = 2`` the child passes the connections it accepted up to the parent,
which hands them to the worker (docs/architecture.md, "Every core"). Unpinned:
both processes share the machine's cores with the client and the worker.
Prints the median connections/s of each and their ratio, per round and overall.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from handoff_bench import build, load  # the worker role and the C client

HERE = Path(__file__).resolve().parent
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def wait_for(condition, limit: float = 20.0):  # type: ignore[no-untyped-def]
    """Poll ``condition`` until it is true (bounded)."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise RuntimeError("timed out starting the bench's processes")


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM what we started (by PID), SIGKILL what lingers."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def one_run(client: str, directory: str, processes: int, concurrency: int, seconds: float) -> float:
    """Start daemon + worker, measure connections/s once, stop both."""
    run_dir = tempfile.mkdtemp(dir=directory)
    control = os.path.join(run_dir, "control.sock")
    log = Path(run_dir) / "portmux.log"
    config = Path(run_dir) / "portmux.toml"
    config.write_text(
        f"processes = {processes}\n"
        '[[listen]]\nendpoint = "tcp:0:interface=127.0.0.1"\nbacklog = 1024\n'
        f'[control]\nendpoint = "unix:{control}"\n'
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen(
            [*TWISTD, "-n", "--pidfile=", "-l", str(log), "portmux", "--config", str(config)],
            cwd=run_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
        text = lambda: log.read_text() if log.exists() else ""
        port = int(wait_for(lambda: re.search(r"listening on tcp:0\S* \(127\.0\.0\.1:(\d+)\)", text())).group(1))
        if processes > 1:
            wait_for(lambda: len(re.findall(r"\[process \d+\] .*portmux listening", text())) == processes - 1)
        wait_for(lambda: os.path.exists(control))
        worker = subprocess.Popen(
            [sys.executable, str(HERE / "handoff_bench.py"), "--role", "worker", "--control", control,
             "--report", os.path.join(run_dir, "sockopts.json")],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
        )
        procs.append(worker)
        assert worker.stdout is not None
        if not worker.stdout.readline():  # printed once registered
            raise RuntimeError("the worker exited before registering")
        time.sleep(0.3)  # the route reaches the children
        result = load(client, "rate", port, concurrency, seconds)
        if result.get("errors"):
            raise RuntimeError(f"processes = {processes}: {result}")
        return float(result["per_s"])
    finally:
        stop(procs)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    if not (1 <= args.rounds <= 20 and 0 < args.seconds <= 30 and 1 <= args.concurrency <= 1000):
        sys.exit("--rounds 1..20, --seconds up to 30, --concurrency 1..1000")
    with tempfile.TemporaryDirectory(prefix="pmxgroup") as directory:
        client = build(directory)
        figures: dict[int, list[float]] = {1: [], 2: []}
        ratios: list[float] = []
        for round_number in range(args.rounds):
            order = (1, 2) if round_number % 2 == 0 else (2, 1)
            got = {n: one_run(client, directory, n, args.concurrency, args.seconds) for n in order}
            for n, value in got.items():
                figures[n].append(value)
            ratios.append(got[2] / got[1])
            print(f"round {round_number + 1}/{args.rounds}: processes=1 {got[1]:.0f}/s, "
                  f"processes=2 {got[2]:.0f}/s, ratio {ratios[-1]:.2f}", flush=True)
    print(f"handed-off connections/s, median: processes=1 {statistics.median(figures[1]):.0f}, "
          f"processes=2 {statistics.median(figures[2]):.0f}; processes=2 / processes=1 "
          f"{statistics.median(ratios):.2f} (per round {min(ratios):.2f}-{max(ratios):.2f}), "
          f"{os.cpu_count()} cores, unpinned, concurrency {args.concurrency}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
