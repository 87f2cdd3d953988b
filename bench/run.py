"""Benchmark portmux's proxy path against a direct connection and Twisted's portforward.

    python bench/run.py [--quick] [--only direct,portmux,portforward] [--json FILE]

Needs only the venv portmux is installed in, and gcc: the backend and the load
client are small C programs in bench/src/, compiled into a temporary directory
at start.  Everything runs on 127.0.0.1; every load loop has a count and a
time limit.  With two or more CPUs the middlebox runs on CPU 1 and the client
and backend on CPU 0 (``--no-pin`` to let the scheduler decide).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
MULTICORE = ("portmux-2proc", "haproxy-nbthread2")
"""Middleboxes that use two cores: never pinned (the client and backend stay on CPU 0)."""


@dataclass
class Settings:
    lat_count: int = 2000
    rate_seconds: float = 5.0
    rate_concurrency: int = 32
    bulk_bytes: int = 1_000_000_000
    pp_seconds: float = 5.0
    pp_connections: int = 16
    idle_connections: int = 2000
    pin: bool = True


@dataclass
class Result:
    name: str
    figures: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)


def free_port() -> int:
    """An unused loopback port below the ephemeral range (so no client's own port takes it meanwhile)."""
    for _ in range(200):
        port = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000")


def wait_listening(port: int, limit: float = 15.0) -> None:
    """Wait until something accepts on ``port``."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {limit} s")


def build(workdir: Path) -> tuple[Path, Path]:
    """Compile the C backend and load client; returns their paths."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        sys.exit("bench/run.py needs a C compiler (gcc) for its backend and load client")
    out = []
    for name in ("backend", "client"):
        binary = workdir / name
        subprocess.run(
            [cc, "-O2", "-o", str(binary), str(HERE / "src" / f"{name}.c")], check=True
        )
        out.append(binary)
    return out[0], out[1]


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (a process group's children count too)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo.extend(int(child) for child in f.read().split())
        except OSError:
            continue
    return found


def pss_kb(pid: int) -> int:
    """Proportional set size of ``pid`` and its descendants in KiB, from /proc/PID/smaps_rollup."""
    total = 0
    for member in tree(pid):
        try:
            with open(f"/proc/{member}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration):
            continue
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` and its live descendants."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for member in tree(pid):
        try:
            with open(f"/proc/{member}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


class Runner:
    """Starts processes pinned to CPUs and runs the load client against a port."""

    def __init__(self, settings: Settings, client: Path, logdir: Path) -> None:
        self.settings = settings
        self.client = client
        self.logdir = logdir
        cpus = sorted(os.sched_getaffinity(0))
        self.pin = settings.pin and len(cpus) >= 2
        self.load_cpus = {cpus[0]}
        self.box_cpus = {cpus[1]} if len(cpus) >= 2 else {cpus[0]}
        self.backend_pid: int | None = None
        """Set once the backend runs: its CPU counts towards the load side's cost."""

    def start(self, name: str, argv: list[str], box: bool) -> subprocess.Popen[bytes]:
        log = open(self.logdir / f"{name}.log", "wb")  # noqa: SIM115 - the child keeps it
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if self.pin and not name.startswith(MULTICORE):  # those are measured on every core
            os.sched_setaffinity(proc.pid, self.box_cpus if box else self.load_cpus)
        return proc

    def load(self, mode: str, port: int, amount: float, seconds: float) -> dict[str, Any]:
        argv = [str(self.client), mode, str(port), str(amount), str(seconds)]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        if self.pin:
            os.sched_setaffinity(proc.pid, self.load_cpus)
        out, _ = proc.communicate(timeout=seconds + 60)
        return json.loads(out.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]

    def measure(
        self, targets: list[tuple[str, int, subprocess.Popen[bytes] | None]], reps: int
    ) -> list[Result]:
        """Latency, connection rate, bulk and ping-pong through every target.

        Tests are interleaved (each test runs on every target in turn, ``reps``
        times, in a rotated order) so background load drifts and the previous
        target's TIME_WAIT sockets affect all targets alike; medians kept.
        """
        s = self.settings
        tests: list[tuple[str, int | float, float]] = [
            ("lat", s.lat_count, 60),
            ("rate", s.rate_concurrency, s.rate_seconds),
            ("bulk", s.bulk_bytes, 60),
            ("pp", s.pp_connections, s.pp_seconds),
        ]
        samples: dict[tuple[str, str], list[float]] = {}
        cpu: dict[tuple[str, str], list[float]] = {}
        for mode, amount, seconds in tests:
            for rep in range(reps):
                # Rotate the order every rep: a connection-heavy test leaves thousands of
                # TIME_WAIT sockets on the backend's port pair, and whoever runs next pays
                # for them in connect(2); rotating spreads that cost over every target.
                shift = rep % len(targets)
                for name, port, box in targets[shift:] + targets[:shift]:
                    print(f"   {mode} {name}", file=sys.stderr, flush=True)
                    before = cpu_seconds(box.pid) if box else 0.0
                    load_before = self.load_side_cpu()
                    t0 = time.monotonic()
                    out = self.load(mode, port, amount, seconds)
                    took = time.monotonic() - t0
                    used = cpu_seconds(box.pid) - before if box else 0.0
                    load_used = self.load_side_cpu() - load_before
                    if box:
                        cpu.setdefault((name, mode), []).append(100 * used / took)
                    if "error" in out:
                        print(f"   {mode} {name}: {out}", file=sys.stderr, flush=True)
                        continue
                    if mode == "lat":
                        figures = {"lat_p50_us": out["p50_us"], "lat_p99_us": out["p99_us"]}
                    elif mode == "rate":
                        figures = {"conn_per_s": out["per_s"]}
                        if box and out["connections"]:
                            figures["cpu_us_per_conn"] = 1e6 * used / out["connections"]
                        if out["connections"]:
                            figures["load_cpu_us_per_conn"] = 1e6 * load_used / out["connections"]
                    elif mode == "bulk":
                        figures = {"bulk_mb_s": out["mb_s"] if out.get("complete") else 0.0}
                        if box and out["bytes"]:
                            figures["cpu_ms_per_gb"] = 1e3 * used / (out["bytes"] / 1e9)
                    else:
                        figures = {"pp16_rt_per_s": out["per_s"]}
                        if box and out["round_trips"]:
                            figures["cpu_us_per_rt"] = 1e6 * used / out["round_trips"]
                    for key, value in figures.items():
                        samples.setdefault((name, key), []).append(value)
                    time.sleep(0.2)
        results = []
        for name, _, _ in targets:
            r = Result(name)
            for (n, key), values in samples.items():
                if n == name:
                    r.figures[key] = statistics.median(values)
            for (n, mode), values in cpu.items():
                if n == name:
                    r.cpu[mode] = statistics.median(values)
            results.append(r)
        return results

    def load_side_cpu(self) -> float:
        """CPU seconds used so far by the load client (reaped children) and the backend."""
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        backend = cpu_seconds(self.backend_pid) if self.backend_pid else 0.0
        return usage.ru_utime + usage.ru_stime + backend

    def idle(self, port: int, box: subprocess.Popen[bytes]) -> dict[str, float]:
        """PSS of a fresh middlebox before and while holding idle proxied connections."""
        count = self.settings.idle_connections
        time.sleep(0.3)
        wait_listening(port)  # a process group's children start after the parent: wait them out
        time.sleep(4.0 if len(tree(box.pid)) > 1 else 0.0)
        before = pss_kb(box.pid)
        argv = [str(self.client), "idle", str(port), str(count), "60"]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.PIPE)
        if self.pin:
            os.sched_setaffinity(proc.pid, self.load_cpus)
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        held = json.loads(line)["open"] if line else 0
        time.sleep(0.5)
        during = pss_kb(box.pid)
        proc.stdin.close()
        proc.wait(timeout=30)
        per = (during - before) * 1024 / held if held else float("nan")
        return {"idle_open": held, "pss_before_kb": before, "pss_held_kb": during, "pss_per_conn_b": per}


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def middleboxes(backend_port: int) -> dict[str, Any]:
    """name -> function(port) giving the argv of that middlebox."""
    backend = f"127.0.0.1:{backend_port}"
    return {
        "direct": None,
        "portmux": lambda port: [
            PYTHON, str(HERE / "portmux_proxy.py"), "--quiet",
            "--listen", f"127.0.0.1:{port}", "--http", backend,
        ],
        "portmux-nosplice": lambda port: [
            PYTHON, str(HERE / "portmux_proxy.py"), "--quiet", "--no-splice",
            "--listen", f"127.0.0.1:{port}", "--http", backend,
        ],
        "portmux-transports": lambda port: [
            PYTHON, str(HERE / "portmux_proxy.py"), "--quiet", "--no-relay",
            "--listen", f"127.0.0.1:{port}", "--http", backend,
        ],
        "portmux-2proc": lambda port: [
            PYTHON, str(HERE / "portmux_proxy.py"), "--quiet", "--processes", "2",
            "--listen", f"127.0.0.1:{port}", "--http", backend,
        ],
        "portforward": lambda port: [
            PYTHON, str(HERE / "portforward_fwd.py"), "--listen", f"127.0.0.1:{port}", "--to", backend,
        ],
        **{
            name: _haproxy(config, backend_port)
            for name, config in (
                ("haproxy", "haproxy.cfg"),
                ("haproxy-splice", "haproxy-splice.cfg"),
                ("haproxy-nbthread2", "haproxy-nbthread2.cfg"),
            )
        },
    }


def _haproxy(config: str, backend_port: int) -> Any:
    """argv maker for HAProxy with one of bench/peers/'s configs (ports from the environment)."""

    def argv(port: int) -> list[str]:
        return ["env", f"PORT={port}", f"BPORT={backend_port}", "haproxy", "-db", "-f",
                str(HERE / "peers" / config)]

    return argv


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def report(results: list[Result]) -> str:
    """A Markdown table, with ratios vs direct and vs portforward."""
    by = {r.name: r for r in results}
    rows = [
        ("connect+first byte p50 (us)", "lat_p50_us", False),
        ("connect+first byte p99 (us)", "lat_p99_us", False),
        ("new connections/s", "conn_per_s", True),
        ("bulk MB/s (one stream)", "bulk_mb_s", True),
        ("round trips/s (16 conns)", "pp16_rt_per_s", True),
        ("middlebox CPU us per new connection", "cpu_us_per_conn", False),
        ("middlebox CPU us per round trip", "cpu_us_per_rt", False),
        ("middlebox CPU ms per GB bulk", "cpu_ms_per_gb", False),
        ("PSS per idle connection (bytes)", "pss_per_conn_b", False),
        ("PSS before / holding idle (KiB)", "pss_pair", False),
    ]
    names = [r.name for r in results]
    head = "| measure | " + " | ".join(names) + " | portmux/direct | portmux/portforward |"
    lines = [head, "|" + "---|" * (len(names) + 3)]
    for label, key, _higher in rows:
        cells = []
        for r in results:
            if key == "pss_pair":
                f = r.figures
                cells.append(f"{f['pss_before_kb']:.0f} / {f['pss_held_kb']:.0f}" if "pss_held_kb" in f else "-")
            else:
                v = r.figures.get(key)
                cells.append("-" if v is None else f"{v:,.0f}" if v >= 100 else f"{v:.1f}")
        pm = by.get("portmux")
        extra = ["-", "-"]
        if pm is not None and key != "pss_pair":
            v = pm.figures.get(key, 0.0)
            extra = [
                ratio(v, by["direct"].figures.get(key, 0.0)) if "direct" in by else "-",
                ratio(v, by["portforward"].figures.get(key, 0.0)) if "portforward" in by else "-",
            ]
        lines.append(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(extra) + " |")
    base = next((n for n in ("haproxy", "portforward") if n in by), None)
    if base is not None:
        others = [n for n in names if n not in ("direct", base)]
        lines += ["", (f"Every middlebox as a ratio to {base}, same run (throughput: higher is better; "
                  "latency, CPU, memory: lower is better):"), "",
                  "| measure | " + " | ".join(f"{n}/{base}" for n in others) + " |",
                  "|" + "---|" * (len(others) + 1)]
        for label, key, _higher in rows:
            if key == "pss_pair":
                continue
            cells = [ratio(by[n].figures.get(key, 0.0), by[base].figures.get(key, 0.0)) for n in others]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += scaling_ceiling(by)
    cpu = ["", "middlebox CPU % of one core during each test:"]
    for r in results:
        if r.cpu:
            cpu.append(f"- {r.name}: " + ", ".join(f"{k} {v:.0f}%" for k, v in r.cpu.items()))
    return "\n".join(lines + cpu)


def scaling_ceiling(by: dict[str, Result]) -> list[str]:
    """What two processes could gain at most here, when the client and backend share the cores.

    Every new connection costs the middlebox ``box`` CPU µs and the load client plus
    backend ``load`` µs; on ``n`` CPUs no middlebox can exceed ``n * 1e6 / (box + load)``
    connections/s however many processes it runs.  Printed next to the measured
    ``portmux-2proc`` rate so a shortfall can be told from the machine's own limit.
    """
    single, double = by.get("portmux-nosplice") or by.get("portmux"), by.get("portmux-2proc")
    if single is None or double is None:
        return []
    box = single.figures.get("cpu_us_per_conn", 0.0)
    load = single.figures.get("load_cpu_us_per_conn", 0.0)
    rate = single.figures.get("conn_per_s", 0.0)
    if not (box and load and rate):
        return []
    cpus = len(os.sched_getaffinity(0))
    ceiling = cpus * 1e6 / (box + load)
    one_core = 1e6 / box
    measured = double.figures.get("conn_per_s", 0.0)
    return ["", (f"Scaling ceiling on this machine ({cpus} CPUs shared with the client and backend): "
            f"one process costs {box:.0f} µs of CPU per connection and the client + backend {load:.0f} µs, "
            f"so no number of processes can exceed {ceiling:,.0f} connections/s, "
            f"{ceiling / one_core:.2f}x what one process does on a whole core ({one_core:,.0f}/s). "
            f"Measured: {single.name} {rate:,.0f}/s, portmux-2proc {measured:,.0f}/s = "
            f"{ratio(measured, rate)} ({ratio(measured, ceiling)} of the ceiling).")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (~1 min)")
    parser.add_argument("--only", default="direct,portmux,portforward")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--idle", type=int, default=2000, help="idle connections for PSS")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per test (median)")
    parser.add_argument("--json", help="also write the raw figures to this file")
    args = parser.parse_args(argv)
    settings = Settings(pin=not args.no_pin, idle_connections=args.idle)
    if args.quick:
        settings.lat_count = 500
        settings.rate_seconds = 2.0
        settings.bulk_bytes = 200_000_000
        settings.pp_seconds = 2.0
        args.reps = 1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, min(hard, 2 * settings.idle_connections + 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    only = [n.strip() for n in args.only.split(",") if n.strip()]
    with tempfile.TemporaryDirectory(prefix="portmux-bench-") as tmp:
        workdir = Path(tmp)
        backend_bin, client_bin = build(workdir)
        runner = Runner(settings, client_bin, workdir)
        backend_port = free_port()
        backend = runner.start("backend", [str(backend_bin), str(backend_port)], box=False)
        runner.backend_pid = backend.pid
        running: list[subprocess.Popen[bytes]] = []
        try:
            wait_listening(backend_port)
            boxes = middleboxes(backend_port)
            targets: list[tuple[str, int, subprocess.Popen[bytes] | None]] = []
            for name in only:
                if name not in boxes:
                    sys.exit(f"unknown middlebox {name!r}; choose from {', '.join(boxes)}")
                make = boxes[name]
                if make is None:
                    targets.append((name, backend_port, None))
                    continue
                port = free_port()
                box = runner.start(name, make(port), box=True)
                running.append(box)
                try:
                    wait_listening(port)
                except RuntimeError:
                    log = (workdir / f"{name}.log").read_text(errors="replace")[-800:]
                    sys.exit(f"{name} did not start (exit status {box.poll()}):\n{log}")
                targets.append((name, port, box))
            results = runner.measure(targets, args.reps)
            for box in running:
                stop(box)
            for result in results:
                make = boxes[result.name]
                if make is None:
                    continue
                print(f"   idle {result.name}", file=sys.stderr, flush=True)
                port = free_port()
                box = runner.start(result.name + "-idle", make(port), box=True)
                running.append(box)
                wait_listening(port)
                result.figures.update(runner.idle(port, box))
                stop(box)
        finally:
            for box in running:
                stop(box)
            stop(backend)
    table = report(results)
    print(table)
    if args.json:
        Path(args.json).write_text(
            json.dumps([{"name": r.name, **r.figures, "cpu": r.cpu} for r in results], indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
