"""A delaying wire between two network namespaces, for kernels without sch_netem.

``python bench/netns_wire.py CLIENT_NS SERVER_NS``: makes a TUN device in each
namespace (``pmxw-c``, ``pmxw-s``) and copies every IP packet from one to the
other after the current one-way delay, in order. Reads ``delay SECONDS`` lines on
stdin to change it; prints ``ready`` once both devices exist. Used by
bench/http_seed.py when ``tc qdisc … netem`` is not available; the wire's own
cost (tens of microseconds a packet) is the same for direct and portmux calls.
"""

from __future__ import annotations

import ctypes
import fcntl
import heapq
import os
import select
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
CLONE_NEWNET = 0x40000000


def enter(namespace: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {namespace}")
    finally:
        os.close(fd)


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def main() -> None:
    client_ns, server_ns = sys.argv[1:3]
    enter(client_ns)
    client = open_tun("pmxw-c")
    enter(server_ns)
    server = open_tun("pmxw-s")
    print("ready", flush=True)
    other = {client: server, server: client}
    delay = 0.0
    queue: list[tuple[float, int, int, bytes]] = []
    order = 0
    stdin = sys.stdin.fileno()
    while True:
        timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else 1.0
        readable, _, _ = select.select([client, server, stdin], [], [], timeout)
        for fd in readable:
            if fd == stdin:
                line = sys.stdin.readline()
                if not line:
                    return
                if line.startswith("delay "):
                    delay = float(line.split()[1])
                continue
            for _ in range(64):
                try:
                    packet = os.read(fd, 65536)
                except BlockingIOError:
                    break
                order += 1
                heapq.heappush(queue, (time.monotonic() + delay, order, other[fd], packet))
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, fd, packet = heapq.heappop(queue)
            try:
                os.write(fd, packet)
            except OSError:
                pass


if __name__ == "__main__":
    main()
