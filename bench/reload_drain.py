"""Reloads and drains under load: do they ever cost a connection?

    python bench/reload_drain.py [--reloads 50] [--drain 100]

1. ``twistd portmux`` proxies HTTP to the C backend while bench/src/client.c opens
   connections in a loop (``rate`` mode, 16 at a time); meanwhile portmux gets
   ``--reloads`` SIGHUPs, cycling through two valid configs (routes renamed, a route
   added) and two broken ones (a TOML syntax error, an unknown key). Printed: the
   connections made, the failed ones, and the reloads applied / refused.
2. ``--drain`` connections are opened through portmux to the backend's echo mode and
   proven attached (one echo each); portmux gets SIGTERM; each connection then sends
   another message, reads its echo and closes. Printed: how many finished, how many
   were cut before the grace period, whether new connections were refused, and how
   long portmux took to exit after the last one closed.

Everything runs on 127.0.0.1 with a count and a time limit.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import HERE, PYTHON, build, free_port, stop, wait_listening

TWISTD = [PYTHON, "-c", "from twisted.scripts.twistd import run; run()"]
LISTENING = re.compile(r"portmux listening on \S+ \(127\.0\.0\.1:(\d+)\)")


def config(port: int, backend: int, variant: int, grace: float = 30.0) -> str:
    """Four configs: two valid (0, 1), one with a TOML syntax error (2), one with an unknown key (3)."""
    head = f'[[listen]]\nendpoint = "tcp:{port}:interface=127.0.0.1"\n[shutdown]\ngrace_period = {grace}\n'
    if variant == 0:
        return head + f'[[route]]\nname = "web"\nmatch = {{ protocol = "http" }}\nproxy = ["tcp:127.0.0.1:{backend}"]\n'
    if variant == 1:
        return head + (
            '[[route]]\nname = "echo"\nmatch = { protocol = "tcpmux", service = "echo" }\necho = true\n'
            f'[[route]]\nname = "web-v2"\nmatch = {{ protocol = "http" }}\nproxy = ["tcp:127.0.0.1:{backend}"]\n'
        )
    if variant == 2:
        return head + "[[route]\nname = broken\n"
    return head + f'[[route]]\nname = "web"\nmatch = {{ protocol = "http" }}\nproxy = ["tcp:127.0.0.1:{backend}"]\nbogus = 1\n'


class Portmux:
    """A twistd portmux process with its config file and log."""

    def __init__(self, work: Path, text: str) -> None:
        self.path = work / "portmux.toml"
        self.path.write_text(text)
        self.log = work / "portmux.log"
        env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
        self.process = subprocess.Popen(
            [*TWISTD, "-n", "--pidfile=", "-l", str(self.log), "portmux", "--config", str(self.path)],
            cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not LISTENING.search(self.text()):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("portmux did not start:\n" + self.text())
            time.sleep(0.05)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def reloads(work: Path, client: Path, backend: int, count: int) -> None:
    port = free_port()
    box = Portmux(work, config(port, backend, 0))
    seconds = 2.0 + count * 0.1
    load = subprocess.Popen([str(client), "rate", str(port), "16", str(seconds)], stdout=subprocess.PIPE)
    applied = refused = 0
    try:
        time.sleep(0.5)
        for i in range(count):
            variant = (0, 2, 1, 3)[i % 4]
            box.path.write_text(config(port, backend, variant))
            box.process.send_signal(signal.SIGHUP)
            time.sleep(0.1)
        out, _ = load.communicate(timeout=seconds + 60)
        time.sleep(0.3)
        log = box.text()
        applied = log.count("reloaded:")
        refused = log.count("reload refused")
    finally:
        stop(box.process)
        if load.poll() is None:
            load.kill()
    import json

    result = json.loads(out.decode().strip().splitlines()[-1])
    print(f"reloads: {count} SIGHUPs ({applied} applied, {refused} refused as broken) during "
          f"{result['connections']:,} connections in {seconds:.1f} s: {result['errors']} failed")


def drain(work: Path, backend: int, count: int) -> None:
    port = free_port()
    box = Portmux(work, config(port, backend, 0, grace=30.0))
    socks = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.sendall(b"GET /echo HTTP/1.1\r\nHost: bench\r\n\r\n")
            socks.append(sock)
        for sock in socks:  # each one proven attached to the backend: its request echoed back
            got = b""
            while len(got) < len(b"GET /echo HTTP/1.1\r\nHost: bench\r\n\r\n"):
                got += sock.recv(4096)
        box.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            new_refused = False
        except ConnectionRefusedError:
            new_refused = True
        finished = cut = 0
        lock = threading.Lock()

        def finish(sock: socket.socket, index: int) -> None:
            nonlocal finished, cut
            time.sleep(0.5 + (index % 10) * 0.1)  # the connections end over the next second or so
            message = f"still here {index}\n".encode()
            try:
                sock.sendall(message)
                got = b""
                while len(got) < len(message):
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    got += chunk
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(4096):
                    pass
                ok = got == message
            except OSError:
                ok = False
            with lock:
                if ok:
                    finished += 1
                else:
                    cut += 1
            sock.close()

        threads = [threading.Thread(target=finish, args=(s, i)) for i, s in enumerate(socks)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        last = time.monotonic()
        box.process.wait(40)
        exit_after = time.monotonic() - last
    finally:
        stop(box.process)
    print(f"drain: {count} open connections at SIGTERM (grace 30 s): {finished} finished, "
          f"{cut} cut before grace; new connections refused: {new_refused}; "
          f"portmux exited {exit_after:.2f} s after the last one closed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reloads", type=int, default=50)
    parser.add_argument("--drain", type=int, default=100)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="portmux-reload-bench-") as tmp:
        work = Path(tmp)
        backend_bin, client_bin = build(work)
        backend_port = free_port()
        backend = subprocess.Popen([str(backend_bin), str(backend_port)], stdout=subprocess.DEVNULL)
        try:
            wait_listening(backend_port)
            (work / "reload").mkdir()
            reloads(work / "reload", client_bin, backend_port, args.reloads)
            (work / "drain").mkdir()
            drain(work / "drain", backend_port, args.drain)
        finally:
            stop(backend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
