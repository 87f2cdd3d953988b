"""A hostile control client (issue 11, bug 2): every bad frame gets an error frame or a clean close.

Over a real UNIX control socket: the frames from the attack (``1e400``, ``Infinity``,
100,000 ``[``), huge integers, wrong types in every field of every op, and a seeded
random fuzz of bodies and framing. A logged traceback fails the test (tests/conftest.py).
"""

from __future__ import annotations

import json
import random
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from portmux.control import _framing as pc
from tests.control.test_server import ControlTestCase

OPS = ["hello", "register", "unregister", "routes", "ping", "pong", "ack", "nack", "bogus", ""]
HOSTILE_VALUES: list[Any] = [
    None, True, False, 0, -1, 1 << 52, 1.5, -0.0, "", "x" * 5000, "\u00b2\u0660", "\ud7ff",
    [], [1, [2, [3]]], {}, {"kind": "http"}, {"protocol": "http", "host": ["a"]}, {"service": {"x": 1}},
    {"host": "a", "network": [1, 2]}, {"via": "net.tcp://[::1/"}, {"path": "/" + "a/" * 2000},
]


def talk(path: str, payload: bytes, timeout: float = 5.0) -> tuple[list[pc.Message], bool]:
    """Send ``payload`` on a fresh connection, then a ping; (frames received, closed by the server)."""
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(timeout)
    sock.connect(path)
    decoder = pc.FrameDecoder()
    frames: list[pc.Message] = []
    try:
        sock.sendall(payload + pc.encode({"op": "ping", "id": 424242}))
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                return frames, True
            if not data:
                return frames, True
            frames.extend(decoder.feed(data))
            if any(f.get("id") == 424242 for f in frames):
                return frames, False
    finally:
        sock.close()


def raw_frame(body: bytes) -> bytes:
    return b"%d:%s," % (len(body), body)


class HostileFrameTests(ControlTestCase):
    timeout = 60

    async def check(self, payload: bytes) -> tuple[list[pc.Message], bool]:
        frames, closed = await deferToThread(talk, self.path, payload)
        replies = [f for f in frames if f["op"] != "ping"]
        if closed:
            self.assertTrue(replies, f"closed without an error frame after {payload[:60]!r}")
            self.assertEqual(replies[-1]["op"], "error")
        else:
            self.assertEqual(replies[-1], {"op": "pong", "id": 424242})
        return replies, closed

    async def test_the_attack_frames_get_error_frames(self) -> None:
        await self.start()
        for body in (b'{"op":"ack","id":1e400}', b'{"op":"ack","id":Infinity}',
                     b'{"op":"nack","id":-Infinity}', b'{"op":"ack","id":NaN}', b"[" * 100_000,
                     b'{"op":"ack","id":' + b"9" * 5000 + b"}", b'{"op":"ack","id":' + b"9" * 40 + b"}",
                     b'{"op":"x","a":' + b"[" * 50_000 + b"]" * 50_000 + b"}", b"\xff\xfe", b"{}"):
            replies, closed = await self.check(raw_frame(body))
            self.assertTrue(closed)
            self.assertEqual(replies[-1]["error"], "BadFrame")

    async def test_wrong_types_are_bad_requests_and_the_connection_stays(self) -> None:
        await self.start()
        cases = [
            {"op": "ack", "id": 1.5}, {"op": "ack", "id": -3}, {"op": "ack", "id": "7"}, {"op": "ack"},
            {"op": "nack", "id": [1]},
            {"op": "hello", "version": True}, {"op": "hello", "version": [2]}, {"op": "hello", "version": 2.0},
            {"op": "register", "match": {"host": "a"}, "mode": ["proxy"]},
            {"op": "register", "match": {"host": "a"}, "mode": "proxy", "endpoint": 5},
            {"op": "register", "address": {"kind": ["http"]}}, {"op": "register", "address": {"kind": {}}},
            {"op": "unregister", "match": 7}, {"op": "x" * 100_000},
        ]
        for message in cases:
            replies, closed = await self.check(pc.encode(message))
            self.assertFalse(closed, message)
            self.assertEqual(replies[0]["op"], "error", message)

    async def test_seeded_random_frames(self) -> None:
        await self.start()
        rng = random.Random(11_2)

        def value(depth: int = 0) -> Any:
            if depth < 3 and rng.random() < 0.2:
                return {rng.choice(["id", "match", "host", "kind", "via", "mode"]): value(depth + 1)}
            return rng.choice(HOSTILE_VALUES)

        payloads = []
        for _ in range(150):
            message: dict[str, Any] = {"op": rng.choice(OPS)}
            for key in rng.sample(["id", "version", "match", "address", "mode", "endpoint", "reason"], 3):
                message[key] = value()
            if isinstance(message.get("id"), (bool, float)) or message.get("id") in ("", "x" * 5000):
                message.pop("id")
            body = json.dumps(message).encode()
            mutation = rng.random()
            if mutation < 0.1:  # truncate the body
                body = body[: rng.randrange(len(body))]
            elif mutation < 0.2:  # flip a byte
                at = rng.randrange(len(body))
                body = body[:at] + bytes([rng.randrange(256)]) + body[at + 1:]
            frame = raw_frame(body)
            if rng.random() < 0.05:  # broken framing
                frame = rng.choice([b"01:x,", b"abc:", b"5:hello;", b"9999999999:", b"3:{},"[:-1] + b"]"])
            payloads.append(frame)
        closed_count = 0
        for payload in payloads:
            _, closed = await self.check(payload)
            closed_count += closed
        self.assertLess(closed_count, len(payloads))  # most bad requests keep the connection
        # The server still serves an ordinary client afterwards.
        self.assertEqual((await self.check(b""))[0], [{"op": "pong", "id": 424242}])


def test_decoder_never_raises_anything_but_frame_error() -> None:
    rng = random.Random(2)
    alphabet = b'0123456789:,{}[]"\\ -.eE+abINnfity\xff\x00'
    for _ in range(3000):
        data = bytes(rng.choice(alphabet) for _ in range(rng.randrange(1, 60)))
        decoder = pc.FrameDecoder(max_frame=1000)
        try:
            for start in range(0, len(data), rng.randrange(1, 8)):
                for message in decoder.feed(data[start:start + 8]):
                    assert isinstance(message, dict) and isinstance(message["op"], str)
        except pc.FrameError:
            pass


def test_frames_before_a_bad_one_are_kept() -> None:
    good = pc.encode({"op": "ping", "id": 1})
    try:
        pc.FrameDecoder().feed(good + b"x:")
    except pc.FrameError as error:
        assert error.messages == [{"op": "ping", "id": 1}]
    else:  # pragma: no cover
        raise AssertionError("bad framing not detected")


del reactor  # imported for ControlTestCase's sake only
