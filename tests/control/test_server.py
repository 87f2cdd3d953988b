"""The control server over real sockets: authorization, handoff failure paths, heartbeat."""

from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from contextlib import redirect_stdout
from types import SimpleNamespace
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.interfaces import IFileDescriptorReceiver
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer

from portmux.control import _framing as pc
from portmux.control._server import ControlFactory, ControlService, prepare_path, unix_path
from portmux.control.cli import query, run_routes
from portmux.core.mux import Multiplexer
from portmux.targets.echo import EchoFactory
from portmux.worker._library import ControlError, Worker


@implementer(IFileDescriptorReceiver)
class Raw(Protocol):
    """A hand-driven control client: records frames and descriptors, answers nothing."""

    def __init__(self) -> None:
        self.decoder = pc.FrameDecoder()
        self.messages: list[pc.Message] = []
        self.fds: list[int] = []
        self.waiters: list[tuple[str, Deferred[pc.Message]]] = []
        self.closed: Deferred[None] = Deferred()

    def fileDescriptorReceived(self, descriptor: int) -> None:
        self.fds.append(descriptor)

    def dataReceived(self, data: bytes) -> None:
        for message in self.decoder.feed(data):
            for waiter in self.waiters:
                if waiter[0] == message["op"]:
                    self.waiters.remove(waiter)
                    waiter[1].callback(message)
                    break
            else:
                self.messages.append(message)

    def next(self, op: str) -> Deferred[pc.Message]:
        for message in self.messages:
            if message["op"] == op:
                self.messages.remove(message)
                d: Deferred[pc.Message] = Deferred()
                d.callback(message)
                return d
        d = Deferred()
        self.waiters.append((op, d))
        return d

    def send(self, message: pc.Message) -> None:
        self.transport.write(pc.encode(message))  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []
        self.closed.callback(None)


class Client(Protocol):
    """A TCP client collecting everything until the connection closes."""

    def __init__(self, send: bytes) -> None:
        self.send_bytes = send
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.local = self.transport.getHost()  # type: ignore[union-attr]
        self.transport.write(self.send_bytes)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(self.received)


class ControlTestCase(TestCase):
    timeout = 15

    async def start(self, **kwargs: Any) -> ControlFactory:
        self.mux = Multiplexer(reactor, [])
        port = await self.mux.listen("tcp:0:interface=127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port
        directory = tempfile.mkdtemp(prefix="pmx")
        self.addCleanup(shutil.rmtree, directory, True)
        self.path = os.path.join(directory, "c.sock")
        self.factory = ControlFactory(reactor, self.mux, **kwargs)
        control = reactor.listenUNIX(self.path, self.factory)  # type: ignore[attr-defined]
        self.addCleanup(control.stopListening)
        return self.factory

    async def raw(self) -> Raw:
        protocol = await connectProtocol(UNIXClientEndpoint(reactor, self.path), Raw())
        self.addCleanup(self._close, protocol)
        return protocol

    def _close(self, protocol: Protocol) -> None:
        if protocol.transport is not None:
            protocol.transport.loseConnection()

    async def worker(self, factory: Any = None) -> Worker:
        worker = Worker(reactor, f"unix:{self.path}", factory or EchoFactory())
        await worker.connect()
        self.addCleanup(worker.close)
        return worker

    async def client(self, data: bytes) -> Client:
        from twisted.internet.endpoints import TCP4ClientEndpoint

        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        return await connectProtocol(endpoint, Client(data))

    async def register(self, raw: Raw, address: dict[str, str], mode: str = "handoff") -> pc.Message:
        raw.send({"op": "register", "id": 1, "match": address, "mode": mode})
        return await raw.next("registered")

    async def eventually(self, predicate: Any, what: str) -> None:
        for _ in range(200):
            if predicate():
                return
            await deferLater(reactor, 0.02, lambda: None)
        self.fail(f"timed out waiting for {what}")


class AuthorizationTests(ControlTestCase):
    async def test_unlisted_uid_is_refused_with_a_reason(self) -> None:
        await self.start(credentials=lambda t: (77, 4242, 4242), own_uid=1)
        raw = await self.raw()
        refusal = await raw.next("error")
        await raw.closed
        self.assertEqual(refusal["error"], "Unauthorized")
        self.assertIn("allow_uids", refusal["message"])

    async def test_allow_uids_and_gids_admit(self) -> None:
        factory = await self.start(credentials=lambda t: (77, 4242, 99), own_uid=1,
                                   allow_gids=[99])
        self.assertTrue(factory.authorized(77, 4242, 99))
        self.assertFalse(factory.authorized(77, 4242, 98))
        self.assertTrue(factory.authorized(77, 1, 5))
        raw = await self.raw()
        raw.send({"op": "hello", "id": 1, "version": pc.VERSION})
        hello = await raw.next("hello")
        self.assertEqual(hello["uid"], 4242)

    async def test_real_other_uid_is_refused(self) -> None:
        if os.getuid() != 0:
            raise SkipTest("needs root to connect as another uid")
        directory = tempfile.mkdtemp(prefix="pmx")
        self.addCleanup(shutil.rmtree, directory, True)
        os.chmod(directory, 0o755)
        path = os.path.join(directory, "c.sock")
        config = SimpleNamespace(endpoint=f"unix:{path}", allow_uids=[12345])
        service = ControlService(reactor, Multiplexer(reactor, []), config)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o666)  # others may connect; SO_PEERCRED decides
        script = (
            "import os,socket,sys; os.setgid(65534); os.setuid(65534);"
            "s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.settimeout(5);"
            "sys.stdout.buffer.write(s.recv(4096))"
        )
        out = await deferToThread(
            subprocess.run, [sys.executable, "-c", script, path], capture_output=True, timeout=10
        )
        message = pc.FrameDecoder().feed(out.stdout)[0]
        self.assertEqual(message["error"], "Unauthorized")
        self.assertIn("uid 65534", message["message"])


class SocketPathTests(TestCase):
    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="pmx")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.path = os.path.join(self.directory, "c.sock")

    def test_created_0600_and_stale_socket_replaced(self) -> None:
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(self.path)
        stale.close()
        service = ControlService(reactor, Multiplexer(reactor, []),
                                 SimpleNamespace(endpoint=f"unix:{self.path}"))
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)
        self.assertRaises(OSError, prepare_path, self.path)  # live now

    def test_path_owned_by_someone_else_is_refused(self) -> None:
        open(self.path, "w").close()
        with self.assertRaises(OSError) as e:
            prepare_path(self.path, uid=os.getuid() + 1)
        self.assertIn("belongs to uid", str(e.exception))
        with self.assertRaises(OSError) as e:
            prepare_path(self.path)
        self.assertIn("not a socket", str(e.exception))
        self.assertTrue(os.path.exists(self.path))

    def test_endpoint_parsing(self) -> None:
        self.assertEqual(unix_path("unix:/run/x.sock"), "/run/x.sock")
        self.assertEqual(unix_path("unix:path=/run/x.sock:mode=600"), "/run/x.sock")
        self.assertRaises(ValueError, unix_path, "tcp:80")


class ProtocolTests(ControlTestCase):
    async def test_requests_and_errors(self) -> None:
        await self.start()
        raw = await self.raw()
        raw.send({"op": "hello", "id": 1, "version": 99})
        self.assertEqual((await raw.next("error"))["error"], "UnsupportedVersion")
        raw.send({"op": "frobnicate", "id": 2})
        self.assertEqual((await raw.next("error"))["error"], "UnknownOp")
        raw.send({"op": "register", "id": 3, "match": {"protocol": "tcpmux", "service": "a b"}})
        self.assertEqual((await raw.next("error"))["error"], "BadMatch")
        raw.send({"op": "register", "id": 3, "address": {"kind": "tcpmux", "service": "a b"}})
        self.assertEqual((await raw.next("error"))["error"], "BadAddress")
        raw.send({"op": "unregister", "id": 4, "match": {"protocol": "tcpmux", "service": "ab"}})
        self.assertEqual((await raw.next("error"))["error"], "NotRegistered")
        raw.send({"op": "ping", "id": 5})
        self.assertEqual((await raw.next("pong"))["id"], 5)
        await self.register(raw, {"protocol": "tcpmux", "service": "ab"})
        raw.send({"op": "unregister", "id": 6, "match": {"protocol": "tcpmux", "service": "ab"}})
        self.assertEqual((await raw.next("unregistered"))["match"], {"protocol": "tcpmux", "service": "ab"})
        self.assertEqual(self.mux.registered_routes, ())
        raw.transport.write(b"xx:garbage")  # type: ignore[union-attr]
        self.assertEqual((await raw.next("error"))["error"], "BadFrame")
        await raw.closed

    async def test_hello_negotiates_the_version(self) -> None:
        await self.start()
        raw = await self.raw()
        raw.send({"op": "hello", "id": 1, "version": 1})
        hello = await raw.next("hello")
        self.assertEqual((hello["version"], hello["versions"]), (1, [1, 2]))
        raw.send({"op": "hello", "id": 2, "version": pc.VERSION})
        self.assertEqual((await raw.next("hello"))["version"], 2)

    async def test_new_keys_registration_is_routed(self) -> None:
        await self.start()
        worker = await self.worker()
        reply = await worker.register({"protocol": "tcpmux", "service": "Keys/2"})
        self.assertEqual(reply["route"], "handoff:protocol=tcpmux,service=keys/2")
        self.assertEqual(reply["match"], {"protocol": "tcpmux", "service": "keys/2"})
        self.assertNotIn("deprecated", reply)
        client = await self.client(b"keys\r\nhello")
        await self.eventually(lambda: client.received == b"+\r\nhello", "the echo via the worker")
        client.transport.loseConnection()  # type: ignore[union-attr]

    async def test_protocol_1_registration_keeps_working_and_is_marked_deprecated(self) -> None:
        await self.start()
        raw = await self.raw()
        raw.send({"op": "hello", "id": 1, "version": 1})
        await raw.next("hello")
        raw.send({"op": "register", "id": 2, "address": {"kind": "tcpmux", "service": "old"}})
        reply = await raw.next("registered")
        self.assertEqual(reply["route"], "handoff:protocol=tcpmux,service=old")
        self.assertIn("deprecated", reply["deprecated"])
        self.assertIn("'protocol': 'tcpmux'", reply["deprecated"])
        worker = await self.worker()
        # the same address in protocol 2's keys is the same group
        await worker.register({"protocol": "tcpmux", "service": "old"})
        self.assertEqual(len(self.factory.registry.groups), 1)
        raw.send({"op": "unregister", "id": 3, "address": {"kind": "tcpmux", "service": "old"}})
        await raw.next("unregistered")
        client = await self.client(b"old\r\nhi")
        await self.eventually(lambda: client.received == b"+\r\nhi", "the echo via the new-keys worker")
        client.transport.loseConnection()  # type: ignore[union-attr]

    async def test_conflicting_registration_by_another_uid(self) -> None:
        uids = iter([1000, 2000])
        await self.start(credentials=lambda t: (1, next(uids), 1), allow_uids=[1000, 2000])
        first = await self.worker()
        await first.register({"protocol": "tcpmux", "service": "svc"})
        second = await self.worker()
        with self.assertRaises(ControlError) as e:
            await second.register({"protocol": "tcpmux", "service": "svc"})
        self.assertEqual(e.exception.code, "ConflictingRegistration")


class HandoffTests(ControlTestCase):
    async def test_worker_serves_handed_off_connection_with_replay_and_real_peer(self) -> None:
        seen: list[Any] = []

        class Recorder(Protocol):
            def dataReceived(self, data: bytes) -> None:
                seen.append((self.portmux_handoff, self.transport.getPeer()))  # type: ignore
                self.transport.write(b"got " + data)  # type: ignore[union-attr]
                self.transport.loseConnection()  # type: ignore[union-attr]

        await self.start()
        worker = await self.worker(Factory.forProtocol(Recorder))
        await worker.register({"protocol": "http", "host": "*", "path": "/w"})
        client = await self.client(b"GET /w/x HTTP/1.1\r\nHost: h\r\n\r\n")
        data = await client.done
        self.assertEqual(data, b"got GET /w/x HTTP/1.1\r\nHost: h\r\n\r\n")
        handoff, peer = seen[0]
        self.assertEqual(handoff.preamble["path"], "/w/x")
        self.assertEqual(handoff.route, "handoff:protocol=http,host=*,path=/w")
        local = client.local
        self.assertEqual((handoff.peer.host, handoff.peer.port), (local.host, local.port))
        self.assertEqual(peer.port, local.port)
        self.assertEqual(self.mux.stats.for_route("handoff:protocol=http,host=*,path=/w").active, 0)

    async def test_worker_dying_before_ack_passes_connection_to_group_member(self) -> None:
        await self.start()
        dying = await self.raw()
        await self.register(dying, {"protocol": "tcpmux", "service": "svc"})
        healthy = await self.worker()
        await healthy.register({"protocol": "tcpmux", "service": "svc"})
        client = await self.client(b"svc\r\nhello")
        await dying.next("handoff")
        dying.transport.loseConnection()  # type: ignore[union-attr]  # dies without ack
        await self.eventually(lambda: client.received == b"+\r\nhello", "the echo via the survivor")
        client.transport.loseConnection()  # type: ignore[union-attr]

    async def test_worker_dying_before_ack_alone_means_refusal(self) -> None:
        await self.start()
        dying = await self.raw()
        await self.register(dying, {"protocol": "tcpmux", "service": "svc"})
        client = await self.client(b"svc\r\nhello")
        await dying.next("handoff")
        self.assertEqual(len(dying.fds), 1)
        dying.transport.loseConnection()  # type: ignore[union-attr]
        data = await client.done
        self.assertTrue(data.startswith(b"-"), data)
        self.assertEqual(self.mux.registered_routes, ())
        after = await (await self.client(b"svc\r\n")).done
        self.assertTrue(after.startswith(b"-") and b"svc" in after, after)

    async def test_backlogged_worker_queue_is_bounded_then_503(self) -> None:
        await self.start(max_pending=2)
        slow = await self.raw()
        await self.register(slow, {"protocol": "http", "host": "*", "path": "/"})
        request = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
        queued = [await self.client(request) for _ in range(2)]
        await self.eventually(lambda: len(slow.fds) == 2, "two queued handoffs")
        refused = await (await self.client(request)).done
        self.assertTrue(refused.startswith(b"HTTP/1.1 503"), refused)
        self.assertIn(b"busy", refused)
        slow.transport.loseConnection()  # type: ignore[union-attr]
        for client in queued:
            self.assertTrue((await client.done).startswith(b"HTTP/1.1 503"))

    async def test_ack_timeout_refuses_and_does_not_retry(self) -> None:
        await self.start(ack_timeout=0.2)
        slow = await self.raw()
        await self.register(slow, {"protocol": "tcpmux", "service": "svc"})
        other = await self.worker()
        await other.register({"protocol": "tcpmux", "service": "svc"})
        data = await (await self.client(b"svc\r\n")).done
        self.assertEqual(data, b"-service unavailable\r\n")  # "not in time" is logged only
        self.assertEqual(other.protocol.handoffs, 0)  # type: ignore[union-attr]

    async def test_silent_control_connection_is_dropped(self) -> None:
        await self.start(heartbeat=0.05, heartbeat_timeout=0.2)
        mute = await self.raw()
        await self.register(mute, {"protocol": "tcpmux", "service": "svc"})
        self.assertEqual(len(self.mux.registered_routes), 1)
        await mute.closed  # never answered a ping
        self.assertEqual(self.mux.registered_routes, ())
        pings = [m for m in mute.messages if m["op"] == "ping"]
        self.assertTrue(pings)

    async def test_answering_worker_stays(self) -> None:
        await self.start(heartbeat=0.05, heartbeat_timeout=0.2)
        worker = await self.worker()
        await worker.register({"protocol": "tcpmux", "service": "svc"})
        await deferLater(reactor, 0.5, lambda: None)
        self.assertEqual(len(self.mux.registered_routes), 1)


class ProxyAndListingTests(ControlTestCase):
    async def test_proxy_mode_and_routes_listing(self) -> None:
        await self.start()
        backend = reactor.listenTCP(0, EchoFactory(), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(backend.stopListening)
        worker = await self.worker()
        endpoint = f"tcp:127.0.0.1:{backend.getHost().port}"
        reply = await worker.register({"protocol": "tcpmux", "service": "pecho"}, "proxy", endpoint)
        self.assertEqual(reply["route"], "proxy:protocol=tcpmux,service=pecho")
        self.mux.add_route(EchoFactory(), name="static-echo", service="secho")
        client = await self.client(b"pecho\r\nping")
        await self.eventually(lambda: client.received == b"+\r\nping", "proxied echo")
        client.transport.loseConnection()  # type: ignore[union-attr]

        answer = await deferToThread(query, self.path)
        member = answer["registered"][0]["members"][0]
        self.assertEqual((member["pid"], member["endpoint"]), (os.getpid(), endpoint))
        self.assertEqual(answer["static"][0]["name"], "static-echo")
        out = io.StringIO()
        with redirect_stdout(out):
            status = await deferToThread(
                run_routes, argparse.Namespace(control=f"unix:{self.path}", json=False, timeout=5)
            )
        self.assertEqual(status, 0)
        self.assertIn("proxy:protocol=tcpmux,service=pecho", out.getvalue())
        self.assertIn(f"pid {os.getpid()} uid {os.getuid()}", out.getvalue())
        self.assertIn("static-echo", out.getvalue())
        worker.close()
        await self.eventually(lambda: self.mux.registered_routes == (), "route dropped")

    def test_routes_cli_reports_unreachable_socket(self) -> None:
        err = io.StringIO()
        from contextlib import redirect_stderr

        with redirect_stderr(err):
            status = run_routes(argparse.Namespace(control="unix:/nonexistent/x.sock",
                                                   json=False, timeout=1))
        self.assertEqual(status, 1)
        self.assertIn("/nonexistent/x.sock", err.getvalue())
