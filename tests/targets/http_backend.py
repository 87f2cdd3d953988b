"""A real HTTP/1.1 backend for the per-request proxy tests (run as a script).

``python http_backend.py PORT NAME [RECORD_FILE]``: a threading keep-alive server.
Every request line it parses is appended to RECORD_FILE (so a test sees exactly
how many requests reached it). ``GET /big/N`` streams N bytes (``/big/N?chunked``
without Content-Length); ``POST``/``PUT`` answer the body's size and sha256, read
as it streams; other requests answer one line naming the backend, path, the
forwarding headers and which of its TCP connections served them.
"""

from __future__ import annotations

import hashlib
import itertools
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COUNTER = itertools.count(1)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "backend"

    def setup(self) -> None:
        super().setup()
        self.connection_number = next(COUNTER)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def record(self) -> None:
        if len(sys.argv) > 3:
            with open(sys.argv[3], "a") as record:
                record.write(self.requestline + "\n")

    def reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        self.record()
        if "/big/" in self.path:
            size = self.path.split("/big/", 1)[1].split("?")[0]
            self.stream(int(size), "chunked" in self.path)
            return
        h = self.headers
        line = (f"{sys.argv[2]} {self.path} host={h.get('Host')} xff={h.get('X-Forwarded-For')} "
                f"proto={h.get('X-Forwarded-Proto')} fwd={h.get('Forwarded')} "
                f"conn={self.connection_number} hop={h.get('X-Hop')} te={h.get('TE')}\n")
        self.reply(200, line.encode(), {"Content-Type": "text/plain", "Connection": "keep-alive, X-Drop",
                                        "X-Drop": "hop-by-hop", "Keep-Alive": "timeout=5"})

    do_HEAD = do_GET
    do_DELETE = do_GET

    def stream(self, size: int, chunked: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(size))
        self.end_headers()
        block = b"x" * 65536
        left = size
        while left > 0:
            piece = block[: min(left, len(block))]
            if chunked:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            else:
                self.wfile.write(piece)
            left -= len(piece)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def do_POST(self) -> None:
        self.record()
        digest = hashlib.sha256()
        size = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                length = int(self.rfile.readline().split(b";")[0], 16)
                if length == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                left = length
                while left:
                    data = self.rfile.read(min(left, 65536))
                    digest.update(data)
                    left -= len(data)
                    size += len(data)
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length", "0"))
            while left:
                data = self.rfile.read(min(left, 65536))
                if not data:
                    break
                digest.update(data)
                size += len(data)
                left -= len(data)
        self.reply(200, f"{sys.argv[2]} {size} {digest.hexdigest()}\n".encode())

    do_PUT = do_POST


if __name__ == "__main__":
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
