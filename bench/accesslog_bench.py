"""The access log's cost: proxied connections/s with logging off, text and JSON, in one run.

    python bench/accesslog_bench.py [--seconds 5] [--reps 3] [--concurrency 32]

Reuses bench/run.py's machinery (the C backend and load client, CPU pinning): three
portmux proxies differing only in ``--access-log``, measured interleaved (each rep
rotates the order) so drift hits all alike; medians and ratios against "off" printed.
Logs go to a temporary directory on the same filesystem as a real deployment would.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import HERE, PYTHON, Runner, Settings, build, cpu_seconds, free_port, stop, wait_listening


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--baseline-ref", help="also measure portmux at this git ref (e.g. main), logging off")
    args = parser.parse_args(argv)
    root = str(HERE.parent)  # bench this checkout's portmux, not an installed one
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="portmux-accesslog-bench-") as tmp:
        work = Path(tmp)
        backend_bin, client_bin = build(work)
        runner = Runner(Settings(pin=not args.no_pin), client_bin, work)
        backend_port = free_port()
        backend = runner.start("backend", [str(backend_bin), str(backend_port)], box=False)
        boxes = []
        try:
            wait_listening(backend_port)
            variants = {"off": [], "text": ["--access-log", str(work / "access.log")],
                        "json": ["--access-log", str(work / "access.jsonl"), "--access-log-format", "json"]}
            if args.baseline_ref:
                before = work / "before"
                before.mkdir()
                archive = subprocess.run(["git", "-C", root, "archive", args.baseline_ref, "portmux", "bench"],
                                         check=True, capture_output=True).stdout
                subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
                variants = {"before": [], **variants}
            targets = []
            for name, extra in variants.items():
                port = free_port()
                home = (work / "before") if name == "before" else HERE.parent
                box = runner.start(name, ["env", f"PYTHONPATH={home}", PYTHON, str(home / "bench" / "portmux_proxy.py"), "--quiet",
                                          "--listen", f"127.0.0.1:{port}", "--http",
                                          f"127.0.0.1:{backend_port}", *extra], box=True)
                boxes.append(box)
                wait_listening(port)
                targets.append((name, port, box))
            rates: dict[str, list[float]] = {name: [] for name in variants}
            cpu: dict[str, list[float]] = {name: [] for name in variants}
            for rep in range(args.reps):
                shift = rep % len(targets)
                for name, port, box in targets[shift:] + targets[:shift]:
                    before = cpu_seconds(box.pid)
                    out = runner.load("rate", port, args.concurrency, args.seconds)
                    used = cpu_seconds(box.pid) - before
                    rates[name].append(out["per_s"])
                    if out["connections"]:
                        cpu[name].append(1e6 * used / out["connections"])
                    time.sleep(0.3)
            lines = {name: sum(1 for _ in open(work / f) ) for name, f in  # noqa: SIM115
                     (("text", "access.log"), ("json", "access.jsonl"))}
        finally:
            for box in boxes:
                stop(box)
            stop(backend)
    off = statistics.median(rates["off"])
    off_cpu = statistics.median(cpu["off"])
    print("| access log | connections/s (median) | vs off | middlebox CPU us/connection | vs off |")
    print("|---|---|---|---|---|")
    for name in variants:
        rate, used = statistics.median(rates[name]), statistics.median(cpu[name])
        label = f"off, at {args.baseline_ref}" if name == "before" else name
        print(f"| {label} | {rate:,.0f} | {rate / off:.2f}x | {used:.1f} | {used / off_cpu:.2f}x |")
    print(f"\nlines written: text {lines['text']:,}, json {lines['json']:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
