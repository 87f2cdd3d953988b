"""Attack figures: legitimate clients' rate under slowloris and an fd flood, against a
baseline measured in the same run.

    python bench/stress.py [--quick] [--slowloris 5000] [--seconds 6]

Starts ``twistd -n portmux`` with a config (below) on a loopback port, then runs
phases of ``--seconds`` each:

1. baseline: legitimate clients only (TCPMUX ``echo``: connect, name the service,
   send 5 bytes, read them back, close; 4 concurrent, as fast as they go);
2. slowloris: ``--slowloris`` clients from 50 loopback sources (127.0.0.2-51)
   trickle an HTTP request 1 byte per 2 s (reconnecting when closed), plus the
   legitimate clients from 127.0.0.1;
3. fd flood: 20 sources (127.0.1.1-20) open connections as fast as they can and
   hold them silently (reconnecting when closed), plus the legitimate clients.
   portmux runs with a 4096-fd limit, so the flood would exhaust it; once with the
   default limits (the automatic global cap only: legitimate clients wait in the
   backlog until a place frees), once with ``max_per_source``;
4. flood from many addresses: the same silent holders spread over ``--sources``
   addresses (127.0.1.1 onwards, 250 per /24), so ``max_per_source`` never bites;
   once with stale-sniffer eviction off (``evict_sniffing_after = 0``: the flood
   holds every place until the preamble timeout), once with it on (the defaults:
   the oldest unclassified connection is closed at ``max_sniffing`` or the mark).

Each scenario has its own portmux, baseline, attack and after-attack figures.

Attackers and legitimate clients run in separate processes.  Every loop is
bounded in count and time; all traffic stays on 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = sys.executable
PORTMUX_FDS = 4096

CONFIG = """
[[listen]]
endpoint = "tcp:{port}:interface=127.0.0.1"

[limits]
max_per_source = {per_source}
{limits_extra}

[[route]]
name = "echo"
match = {{ protocol = "tcpmux", service = "echo" }}
echo = true

[[route]]
name = "status"
match = {{ protocol = "http" }}
status = true
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_fd_limit(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, max(soft, wanted))
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


# -- legitimate clients -----------------------------------------------------------


async def legit_one(port: int) -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # Close with a reset: thousands of client-side TIME_WAIT sockets per second would
    # otherwise exhaust the ephemeral ports and measure the kernel, not portmux.
    writer.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    try:
        writer.write(b"echo\r\nhello")
        await writer.drain()
        got = b""
        while not got.endswith(b"hello"):
            chunk = await reader.read(64)
            if not chunk:
                return False
            got += chunk
        return got.startswith(b"+")
    finally:
        writer.close()


async def legit(port: int, seconds: float, concurrency: int = 4) -> None:
    """Print how many echo exchanges completed per second."""
    done = failed = 0
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done, failed
        while time.monotonic() < deadline:
            try:
                ok = await asyncio.wait_for(legit_one(port), 5)
            except (OSError, asyncio.TimeoutError):
                ok = False
            if ok:
                done += 1
            else:
                failed += 1

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    print(f"{done / (time.monotonic() - started):.1f} {failed}", flush=True)


# -- attackers --------------------------------------------------------------------


async def trickler(port: int, source: str, deadline: float, stats: dict[str, int]) -> None:
    """Slowloris: an HTTP request, one byte every 2 s, reconnecting when cut off."""
    request = b"GET / HTTP/1.1\r\nHost: slow.example\r\nX-a: " + b"b" * 200
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        except OSError:
            stats["connect_errors"] += 1
            await asyncio.sleep(1.0)
            continue
        stats["connections"] += 1
        try:
            for byte in request:
                if time.monotonic() >= deadline or writer.is_closing():
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(2.0)
        except OSError:
            pass
        finally:
            writer.close()
        await asyncio.sleep(0.5)


async def holder(port: int, source: str, deadline: float, stats: dict[str, int]) -> None:
    """fd flood: connect, send nothing, hold until closed, reconnect at once."""
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 2)
        except ConnectionResetError:  # evicted (reset) before the connect completed here
            stats["connections"] += 1
            continue  # as aggressive as after any other eviction: reconnect at once
        except (OSError, asyncio.TimeoutError):
            stats["connect_errors"] += 1
            await asyncio.sleep(0.2)
            continue
        stats["connections"] += 1
        try:
            await asyncio.wait_for(reader.read(1), max(0.1, deadline - time.monotonic()))
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()


def flood_source(i: int, sources: int) -> str:
    """The ``i``-th holder's address: ``sources`` addresses from 127.0.1.1, 250 per /24."""
    n = i % sources
    return f"127.0.{1 + n // 250}.{1 + n % 250}"


async def attack(kind: str, port: int, count: int, seconds: float, sources: int = 20) -> None:
    deadline = time.monotonic() + seconds
    stats = {"connections": 0, "connect_errors": 0}
    if kind == "slowloris":
        sources = [f"127.0.0.{2 + i % 50}" for i in range(count)]
        tasks = []
        for i, source in enumerate(sources):  # ramp up: 1,000 per second
            tasks.append(asyncio.ensure_future(trickler(port, source, deadline, stats)))
            if i % 100 == 99:
                await asyncio.sleep(0.1)
    else:
        tasks = [asyncio.ensure_future(holder(port, flood_source(i, sources), deadline, stats))
                 for i in range(count)]
    await asyncio.gather(*tasks, return_exceptions=True)
    busy = 100 * time.process_time() / seconds
    print(f"{stats['connections']} {stats['connect_errors']} {busy:.0f}", flush=True)


# -- the run ----------------------------------------------------------------------


def start_portmux(directory: Path, port: int, per_source: int, fds: int,
                  limits_extra: str = "") -> subprocess.Popen[bytes]:
    config = directory / f"stress-{port}.toml"
    config.write_text(CONFIG.format(port=port, per_source=per_source, limits_extra=limits_extra))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen(
        ["prlimit", f"--nofile={fds}:{fds}", PYTHON, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
         "-l", str(directory / f"portmux-{port}.log"), "portmux", "--config", str(config)],
        env=env, cwd=directory, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("portmux did not start")


def portmux_pid(prlimit_pid: int) -> int:
    """prlimit execs the command, so the pid is portmux's own."""
    return prlimit_pid


NICE_ATTACKERS: list[str] = []
"""``["nice", "-n", "19"]`` with --nice-attackers: the attackers get the CPUs only when
portmux and the legitimate clients leave them idle (as if they ran elsewhere)."""


def run_role(*args: str) -> subprocess.Popen[str]:
    prefix = NICE_ATTACKERS if args[1] in ("slowloris", "flood") else []
    return subprocess.Popen([*prefix, PYTHON, __file__, *args], stdout=subprocess.PIPE, text=True)


def legit_rate(port: int, seconds: float) -> tuple[float, int]:
    out = run_role("--role", "legit", "--port", str(port), "--seconds", str(seconds))
    line, _ = out.communicate(timeout=seconds + 60)
    rate, failed = line.split()
    return float(rate), int(failed)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def phase(name: str, port: int, seconds: float, attack_kind: str | None, count: int,
          ramp: float, pid: int, sources: int = 20) -> tuple[float, int, str]:
    attacker = None
    if attack_kind is not None:
        attacker = run_role("--role", attack_kind, "--port", str(port), "--count", str(count),
                            "--seconds", str(ramp + seconds + 1), "--sources", str(sources))
    time.sleep(ramp)
    before = connections_seen(port)
    cpu = cpu_seconds(pid)
    started = time.monotonic()
    rate, failed = legit_rate(port, seconds)
    spent = cpu_seconds(pid) - cpu
    busy = 100 * spent / (time.monotonic() - started)
    seen = connections_seen(port) - before
    note = f"portmux CPU {busy:3.0f}%, {1e6 * spent / max(1, seen):.0f} µs per sniffed connection ({seen})"
    if attacker is not None:
        line, _ = attacker.communicate(timeout=ramp + seconds + 120)
        connections, errors, busy_attacker = line.split()
        note += (f"; attack connections {connections}, connect errors {errors}, "
                 f"attacker CPU {busy_attacker}%")
    return rate, failed, note


def scenario(directory: Path, title: str, per_source: int, fds: int, kind: str, count: int,
             ramp: float, seconds: float, limits_extra: str = "", sources: int = 20) -> float:
    """One portmux: baseline, the attack, and the rate once it is over; returns the attack's ratio."""
    port = free_port()
    process = start_portmux(directory, port, per_source, fds, limits_extra)
    pid = portmux_pid(process.pid)
    try:
        print(f"-- {title}: portmux fd limit {fds} (max_connections automatic: "
              f"{(fds - 64) // 2}), max_per_source = {per_source or 'off'}"
              + (f", {limits_extra.strip()}" if limits_extra.strip() else ""))
        base, base_failed, base_note = phase("baseline", port, seconds, None, 0, 0, pid)
        print(f"   baseline          {base:8.1f} legit exchanges/s (failed {base_failed}); {base_note}")
        rate, failed, note = phase(kind, port, seconds, kind, count, ramp, pid, sources)
        label = f"{kind} ({count})"
        print(f"   {label:17} {rate:8.1f} legit exchanges/s (failed {failed}) = "
              f"{100 * rate / base:5.1f}% of baseline; {note}")
        after, _, after_note = phase("after", port, seconds, None, 0, 2.0, pid)
        print(f"   after the attack  {after:8.1f} legit exchanges/s = "
              f"{100 * after / base:5.1f}% of baseline; {after_note}")
        log = (directory / f"portmux-{port}.log").read_text(errors="replace")
        print(f"   portmux log: {log.count(chr(10))} lines, "
              f"{log.count('suppressed')} 'suppressed N' summaries; refusals {refusals(port)}")
        return rate / base
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def connections_seen(port: int) -> int:
    """Connections portmux accepted and sniffed so far (not those a limit closed at accept)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json", timeout=10) as answer:
            return int(json.load(answer)["connections"]["accepted"])
    except (OSError, KeyError, ValueError):
        return 0


def refusals(port: int) -> dict[str, int]:
    """portmux's refusal counters by reason, from its status page's JSON."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json", timeout=10) as answer:
            return dict(json.load(answer).get("refusals", {}))
    except OSError:
        return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=("legit", "slowloris", "flood"))
    parser.add_argument("--port", type=int)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--slowloris", type=int, default=5000)
    parser.add_argument("--flood", type=int, default=6000)
    parser.add_argument("--per-source", type=int, default=100, help="max_per_source in the flood run")
    parser.add_argument("--sources", type=int, default=1000,
                        help="source addresses of the many-address flood (250 per /24)")
    parser.add_argument("--quick", action="store_true", help="3 s phases, 1000 tricklers")
    parser.add_argument("--sniff-limits", default="",
                        help='extra [limits] lines for the eviction-on run, e.g. "max_sniffing = 500"')
    parser.add_argument("--nice-attackers", action="store_true",
                        help="run the attackers at nice 19 (they share this machine's CPUs)")
    parser.add_argument("--only", choices=("slowloris", "flood", "flood-limited", "flood-many"),
                        help="run one scenario")
    args = parser.parse_args()
    if args.role == "legit":
        asyncio.run(legit(args.port, args.seconds))
        return
    if args.role in ("slowloris", "flood"):
        raise_fd_limit(args.count + 256)
        asyncio.run(attack(args.role, args.port, args.count, args.seconds, args.sources))
        return
    if args.nice_attackers:
        NICE_ATTACKERS[:] = ["nice", "-n", "19"]
    if args.quick:
        args.seconds, args.slowloris, args.flood = 3.0, 1000, 3000
    available = raise_fd_limit(max(args.slowloris, args.flood) + 512) - 256
    slowloris = min(args.slowloris, available)
    flood = min(args.flood, available)
    if slowloris < args.slowloris:
        print(f"fd limit: {slowloris} tricklers instead of {args.slowloris}")
    own_fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    print(f"{os.cpu_count()} CPUs shared by portmux, the legitimate clients and the attackers; "
          f"{args.seconds:g} s per phase")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        if args.only in (None, "slowloris"):
            scenario(directory, "slowloris, default limits", 0, own_fds, "slowloris", slowloris,
                     count_ramp(slowloris), args.seconds)
        if args.only in (None, "flood"):
            scenario(directory, "fd flood without per-source limits", 0, PORTMUX_FDS, "flood",
                     flood, 2.0, args.seconds)
        if args.only in (None, "flood-limited"):
            scenario(directory, "fd flood with per-source limits", args.per_source, PORTMUX_FDS,
                     "flood", flood, 2.0, args.seconds)
        if args.only == "flood-many" and args.sniff_limits:
            scenario(directory, "many-address flood, eviction on", args.per_source, PORTMUX_FDS,
                     "flood", flood, 2.0, args.seconds, args.sniff_limits, args.sources)
        elif args.only in (None, "flood-many"):
            title = f"flood from {args.sources} addresses (max_per_source {args.per_source} never bites)"
            off = scenario(directory, f"{title}, eviction off", args.per_source, PORTMUX_FDS, "flood",
                           flood, 2.0, args.seconds, "evict_sniffing_after = 0", args.sources)
            on = scenario(directory, f"{title}, eviction on", args.per_source, PORTMUX_FDS,
                          "flood", flood, 2.0, args.seconds, args.sniff_limits, args.sources)
            print(f"   many-address flood: legit rate {100 * off:5.1f}% of baseline without "
                  f"stale-sniffer eviction, {100 * on:5.1f}% with it (goal >= 80%)")


def count_ramp(count: int) -> float:
    """Seconds for the tricklers to connect (1,000 per second) and settle."""
    return count / 1000 + 2.0


if __name__ == "__main__":
    main()
