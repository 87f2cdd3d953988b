"""Issue 11, bug 5's limits: registrations per connection, and unauthorized connect floods."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher

from portmux.control import _framing as pc
from portmux.control._limits import ConnectLimiter, LogThrottle, TokenBucket
from tests.control.test_server import ControlTestCase


def test_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5) and not bucket.take(0.5)


def test_connect_limiter_per_uid_and_overall() -> None:
    limiter = ConnectLimiter(per_uid_rate=1.0, overall_rate=4.0, burst=2.0)
    assert [limiter.admit(7, 0.0) for _ in range(3)] == [True, True, False]
    assert [limiter.admit(8, 0.0) for _ in range(3)] == [True, True, False]
    assert not limiter.admit(9, 0.0)  # the overall bucket (4) is spent


def test_log_throttle_counts_what_it_held_back() -> None:
    lines: list[int] = []
    throttle = LogThrottle(lines.append, interval=10.0)
    for now in (0.0, 1.0, 2.0, 9.0, 10.5, 11.0):
        throttle(now)
    assert lines == [0, 3]


def flood(path: str, count: int) -> list[bytes]:
    """Connect ``count`` times; what each connection received before the server closed it."""
    received = []
    for _ in range(count):
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(5)
        sock.connect(path)
        data = b""
        try:
            while chunk := sock.recv(4096):
                data += chunk
        except ConnectionResetError:
            pass
        sock.close()
        received.append(data)
    return received


class LimitTests(ControlTestCase):
    async def test_registrations_per_connection_are_capped(self) -> None:
        await self.start(max_registrations=3)
        raw = await self.raw()
        raw.send({"op": "hello", "id": 1, "version": pc.VERSION})
        self.assertEqual((await raw.next("hello"))["max_registrations"], 3)
        for n in range(3):
            raw.send({"op": "register", "id": n, "match": {"protocol": "tcpmux", "service": f"s{n}"}})
            await raw.next("registered")
        raw.send({"op": "register", "id": 9, "match": {"protocol": "tcpmux", "service": "s9"}})
        refusal = await raw.next("error")
        self.assertEqual((refusal["error"], refusal["id"]), ("TooManyRegistrations", 9))
        self.assertIn("max_registrations", refusal["message"])
        raw.send({"op": "unregister", "id": 10, "match": {"protocol": "tcpmux", "service": "s0"}})
        await raw.next("unregistered")
        raw.send({"op": "register", "id": 11, "match": {"protocol": "tcpmux", "service": "s9"}})
        await raw.next("registered")
        other = await self.raw()  # the cap is per connection
        other.send({"op": "register", "id": 1, "match": {"protocol": "tcpmux", "service": "t"}})
        await other.next("registered")

    async def test_unauthorized_flood_is_rate_limited_with_one_log_line(self) -> None:
        await self.start(credentials=lambda t: (77, 4242, 4242), own_uid=1,
                         unauthorized_rate=1.0, unauthorized_total_rate=50.0)
        lines: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            if "refused" in str(event.get("log_format", "")) and event.get("label"):
                lines.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        received = await deferToThread(flood, self.path, 40)
        answered = [data for data in received if data]
        self.assertGreaterEqual(len(answered), 1)
        self.assertLessEqual(len(answered), 7)  # the burst of 5, and a token or two refilled
        for data in answered:
            self.assertEqual(pc.FrameDecoder().feed(data)[0]["error"], "Unauthorized")
        self.assertEqual(len(lines), 1)
