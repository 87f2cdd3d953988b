"""Issue 15's "done means": every new protocol's real client through ONE listener.

One in-process Multiplexer on a loopback port routes psql, redis-cli, mosquitto_pub,
an slixmpp client, curl over SOCKS5 and SOCKS4a, an openvpn client, xfreerdp and
dig +tcp to their own backends, while TLS, HTTP and SSH keep reaching theirs.
Real servers where Debian has them (postgres, redis-server, mosquitto, openvpn,
sshd); otherwise a small backend in the test (a SOCKS server, an XMPP and an RDP
recorder, a twisted.names DNS server). A sub-case is skipped only when its
binary is missing.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from glob import glob
from pathlib import Path
from typing import Any, ClassVar

import trustme
from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.names import dns, server
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.server import Site

from portmux.core.mux import Multiplexer
from portmux.core.routing import Match, Route
from portmux.targets.proxy import ProxyTarget
from tests.support import SSHD, free_port, start_sshd, stop_process, wait_listening
from tests.targets.test_tls_proxy import tls_backend
from tests.targets.test_tls_support import in_thread, make_pki, reactor, site_root, tls_exchange

TIMEOUT = 30.0

SOCKS_SERVER = r"""
import socket, struct, sys, threading

def exact(conn, size):
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data

def c_string(conn):
    data = b""
    while (byte := exact(conn, 1)) != b"\0":
        data += byte
    return data

def pump(source, sink):
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

def handle(conn):
    try:
        version = exact(conn, 1)
        if version == b"\x05":
            exact(conn, exact(conn, 1)[0])
            conn.sendall(b"\x05\x00")
            _, command, _, kind = exact(conn, 4)
            if kind == 1:
                host = socket.inet_ntoa(exact(conn, 4))
            else:
                host = exact(conn, exact(conn, 1)[0]).decode()
            port = struct.unpack("!H", exact(conn, 2))[0]
            upstream = socket.create_connection((host, port))
            conn.sendall(b"\x05\x00\x00\x01" + bytes(6))
        else:
            exact(conn, 1)
            port = struct.unpack("!H", exact(conn, 2))[0]
            address = exact(conn, 4)
            c_string(conn)
            host = c_string(conn).decode() if address[:3] == bytes(3) else socket.inet_ntoa(address)
            upstream = socket.create_connection((host, port))
            conn.sendall(b"\x00\x5a" + bytes(6))
    except (OSError, EOFError):
        conn.close()
        return
    threading.Thread(target=pump, args=(upstream, conn), daemon=True).start()
    pump(conn, upstream)

server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
while True:
    conn, _ = server.accept()
    threading.Thread(target=handle, args=(conn,), daemon=True).start()
"""

XMPP_CLIENT = """
import asyncio, sys
import slixmpp

client = slixmpp.ClientXMPP(sys.argv[1], "secret")
client.enable_direct_tls = False
client.enable_starttls = False
client.enable_plaintext = True
client.connect(host="127.0.0.1", port=int(sys.argv[2]))
asyncio.get_event_loop().run_until_complete(asyncio.sleep(1.5))
"""


def run(argv: list[str], stdin: bytes = b"", timeout: float = TIMEOUT) -> subprocess.CompletedProcess[bytes]:
    """Blocking: a real client with a timeout, both streams captured."""
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout, check=False)


def run_until(argv: list[str], marker: bytes, log: Path, limit: float = TIMEOUT) -> bytes:
    """Blocking: run a client that never exits until ``marker`` is in its output; stop it."""
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and process.poll() is None:
            if marker in log.read_bytes():
                break
            time.sleep(0.1)
    finally:
        stop_process(process)
    return log.read_bytes()


def need(*binaries: str) -> None:
    """Skip the sub-case when a client or server binary is missing."""
    missing = [b for b in binaries if shutil.which(b) is None]
    if missing:
        raise SkipTest(f"{', '.join(missing)} not installed")


class Recorder(Protocol):
    """Keeps what a client sent; answers once with the factory's ``reply``."""

    def dataReceived(self, data: bytes) -> None:
        factory: Any = self.factory
        if not factory.received and factory.reply:
            self.transport.write(factory.reply)  # type: ignore[union-attr]
        factory.received += data


def recorder(reply: bytes = b"") -> Factory:
    factory = Factory.forProtocol(Recorder)
    factory.received = b""  # type: ignore[attr-defined]
    factory.reply = reply  # type: ignore[attr-defined]
    return factory


class FixedAnswers:
    """A resolver answering every A query with 127.64.2.7."""

    def query(self, query: dns.Query, timeout: Any = None) -> defer.Deferred[Any]:
        answer = dns.RRHeader(name=query.name.name, type=dns.A, auth=True,
                              payload=dns.Record_A("127.64.2.7", ttl=60))
        return defer.succeed(([answer], [], []))


# -- real servers, started once for the module ------------------------------------


class Servers:
    """Backend processes on loopback ports; each one is None when its binary is missing."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.processes: list[subprocess.Popen[bytes]] = []
        self.ports: dict[str, int] = {}
        self.problems: dict[str, str] = {}
        self.cleanup_dirs: list[Path] = []

    def start(self, name: str, argv: list[str], port: int, wait: bool = True,
              **kwargs: Any) -> None:
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        with log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, **kwargs)
        self.processes.append(process)
        if wait:
            wait_listening(port, process)
        self.ports[name] = port

    def stop(self) -> None:
        for process in self.processes:
            stop_process(process)

    def attempt(self, name: str, function: Any) -> None:
        try:
            function()
        except (OSError, RuntimeError, subprocess.SubprocessError, KeyError) as error:
            self.problems[name] = f"{name} backend did not start: {error}"

    def start_all(self) -> None:
        if shutil.which("redis-server"):
            self.attempt("redis", self._redis)
        if shutil.which("mosquitto"):
            self.attempt("mqtt", self._mosquitto)
        if glob("/usr/lib/postgresql/*/bin/postgres") or shutil.which("postgres"):
            self.attempt("postgres", self._postgres)
        if shutil.which("openvpn"):
            self.attempt("openvpn", self._openvpn)
        if os.path.exists(SSHD) and shutil.which("ssh-keygen"):
            self.attempt("ssh", self._sshd)
        port = free_port()
        self.start("socks", [sys.executable, "-c", SOCKS_SERVER, str(port)], port)

    def _redis(self) -> None:
        port = free_port()
        self.start("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(self.root)], port)

    def _mosquitto(self) -> None:
        port = free_port()
        config = self.root / "mosquitto.conf"
        config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
        self.start("mqtt", ["mosquitto", "-c", str(config)], port)

    def _postgres(self) -> None:
        """initdb and postgres (as the postgres user when we are root), TLS on."""
        binaries = sorted(glob("/usr/lib/postgresql/*/bin"))
        bin_dir = Path(binaries[-1]) if binaries else Path(str(shutil.which("postgres"))).parent
        directory = Path(tempfile.mkdtemp(prefix="portmux-pg-"))
        self.cleanup_dirs.append(directory)
        as_user: dict[str, Any] = {}
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
            os.chown(directory, account.pw_uid, account.pw_gid)
        ca = trustme.CA()
        cert = ca.issue_cert("localhost", common_name="localhost")
        cert.cert_chain_pems[0].write_to_path(str(directory / "server.crt"))
        cert.private_key_pem.write_to_path(str(directory / "server.key"))
        for name in ("server.crt", "server.key"):
            os.chmod(directory / name, 0o600)
            if as_user:
                os.chown(directory / name, as_user["user"], as_user["group"])
        subprocess.run([str(bin_dir / "initdb"), "-D", str(directory / "data"), "-A", "trust",
                        "-U", "postgres"], check=True, capture_output=True, timeout=60,
                       **as_user)
        port = free_port()
        self.start("postgres", [
            str(bin_dir / "postgres"), "-D", str(directory / "data"), "-p", str(port),
            "-k", str(directory), "-c", "listen_addresses=127.0.0.1", "-c", "ssl=on",
            "-c", f"ssl_cert_file={directory / 'server.crt'}",
            "-c", f"ssl_key_file={directory / 'server.key'}",
        ], port, **as_user)

    def _openvpn(self) -> None:
        """A point-to-point TLS server (no tun device: --dev null)."""
        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(self.root / "vpn-ca.pem"))
        for name in ("server", "client"):
            leaf = ca.issue_cert(f"{name}.example", common_name=f"{name}.example")
            leaf.cert_chain_pems[0].write_to_path(str(self.root / f"vpn-{name}.pem"))
            leaf.private_key_pem.write_to_path(str(self.root / f"vpn-{name}.key"))
        port = free_port()
        self.start("openvpn", [
            "openvpn", "--tls-server", "--dev", "null", "--proto", "tcp-server",
            "--local", "127.0.0.1", "--lport", str(port), "--dh", "none",
            "--ca", str(self.root / "vpn-ca.pem"), "--cert", str(self.root / "vpn-server.pem"),
            "--key", str(self.root / "vpn-server.key"), "--verb", "3",
        ], port, wait=False)  # p2p mode serves one client: no readiness connection
        log = self.root / "openvpn.log"
        deadline = time.monotonic() + 15
        while b"Listening for incoming TCP connection" not in log.read_bytes():
            if time.monotonic() > deadline or self.processes[-1].poll() is not None:
                raise RuntimeError(log.read_text(errors="replace")[-400:])
            time.sleep(0.05)

    def _sshd(self) -> None:
        (self.root / "ssh").mkdir()
        process, port = start_sshd(self.root / "ssh")
        self.processes.append(process)
        self.ports["ssh"] = port


class OnePortAllProtocolsTests(TestCase):
    """Every protocol on one listener, each routed to its own backend."""

    servers: ClassVar[Servers]
    root: ClassVar[Path]

    @classmethod
    def setUpClass(cls) -> None:
        cls.root = Path(tempfile.mkdtemp(prefix="portmux-one-port-"))
        cls.servers = Servers(cls.root)
        try:
            cls.servers.start_all()
        except BaseException:
            cls.servers.stop()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        cls.servers.stop()
        for directory in [*cls.servers.cleanup_dirs, cls.root]:
            shutil.rmtree(directory, ignore_errors=True)

    def setUp(self) -> None:
        """The one listener: every route below, plus backends living in the reactor."""
        pki = make_pki(self.root / f"pki-{id(self)}")
        self.ca_file = pki.ca_file
        self.xmpp = recorder(b"<?xml version='1.0'?><stream:stream from='chat.example' "
                             b"xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/"
                             b"streams' id='s1' version='1.0'>")
        self.rdp = recorder()
        in_reactor = {
            "http": reactor.listenTCP(0, Site(site_root(b"hello from http\n")),
                                      interface="127.0.0.1"),
            "dns": reactor.listenTCP(0, server.DNSServerFactory(clients=[FixedAnswers()]),
                                     interface="127.0.0.1"),
            "xmpp": reactor.listenTCP(0, self.xmpp, interface="127.0.0.1"),
            "rdp": reactor.listenTCP(0, self.rdp, interface="127.0.0.1"),
        }
        ports = dict(self.servers.ports)
        for name, listening in in_reactor.items():
            self.addCleanup(listening.stopListening)
            ports[name] = listening.getHost().port
        ports["tls"] = tls_backend(self, pki.ca.issue_cert("tls.example"))
        self.http_port = ports["http"]

        def to(name: str) -> ProxyTarget:
            return ProxyTarget(reactor, [f"tcp:127.0.0.1:{ports.get(name, 9)}"])

        routes = [
            Route("tls", Match(protocol="tls", sni="tls.example"), to("tls")),
            Route("http", Match(protocol="http", host="web.example"), to("http")),
            Route("ssh", Match(protocol="ssh"), to("ssh")),
            Route("pg-ssl", Match(protocol="postgres", request="ssl"), to("postgres")),
            Route("pg", Match(protocol="postgres", user="postgres"), to("postgres")),
            Route("redis", Match(protocol="redis"), to("redis")),
            Route("mqtt", Match(protocol="mqtt", client_id="sensor-17"), to("mqtt")),
            Route("xmpp", Match(protocol="xmpp", host="chat.example"), to("xmpp")),
            Route("socks5", Match(protocol="socks", version="5"), to("socks")),
            Route("socks4a", Match(protocol="socks", version="4a"), to("socks")),
            Route("openvpn", Match(protocol="openvpn"), to("openvpn")),
            Route("rdp", Match(protocol="rdp", cookie="alice"), to("rdp")),
            Route("dns", Match(protocol="dns"), to("dns")),
        ]
        self.mux = Multiplexer(reactor, routes)
        listening = reactor.listenTCP(0, self.mux, interface="127.0.0.1")
        self.port = listening.getHost().port
        self.addCleanup(listening.stopListening)
        self.addCleanup(self._connections_closed)

    @defer.inlineCallbacks
    def _connections_closed(self) -> Any:
        """Let proxied connections finish closing (bounded), so the reactor is clean."""
        for _ in range(250):
            if all(c.active == 0 for c in self.mux.stats.routes.values()):
                break
            yield deferLater(reactor, 0.02, lambda: None)
        yield deferLater(reactor, 0.05, lambda: None)

    def server(self, name: str) -> None:
        """Skip when the real server for ``name`` is not available."""
        if name in self.servers.problems:
            raise SkipTest(self.servers.problems[name])
        if name not in self.servers.ports:
            raise SkipTest(f"no {name} server installed")

    def routed(self, name: str) -> int:
        counters = self.mux.stats.routes.get(name)
        return 0 if counters is None else int(counters.connections)

    # -- the protocols already served: TLS, HTTP, SSH ------------------------------

    @defer.inlineCallbacks
    def test_tls_http_and_ssh_still_routed(self) -> Any:
        result = yield in_thread(tls_exchange, self.port, "tls.example", self.ca_file, b"hi",
                                 read_until=b"hi")
        self.assertEqual(result.data, b"tls-backend:hi")
        need("curl")
        http = yield in_thread(run, ["curl", "-sf", "--resolve", f"web.example:{self.port}:127.0.0.1",
                                     f"http://web.example:{self.port}/hello"])
        self.assertEqual(http.stdout, b"hello from http\n")
        self.server("ssh")
        need("ssh")
        keys = self.root / "ssh"
        ssh = yield in_thread(run, [
            "ssh", "-p", str(self.port), "-i", str(keys / "user"), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={keys / 'known'}",
            "root@127.0.0.1", "echo", "ssh-through-portmux"])
        self.assertEqual(ssh.stdout, b"ssh-through-portmux\n", ssh.stderr[-400:])
        self.assertEqual([self.routed(n) for n in ("tls", "http", "ssh")], [1, 1, 1])

    # -- the new protocols ------------------------------------------------------

    @defer.inlineCallbacks
    def test_psql_startup_and_ssl_passthrough(self) -> Any:
        need("psql")
        self.server("postgres")
        base = f"host=127.0.0.1 port={self.port} dbname=postgres gssencmode=disable"
        plain = yield in_thread(run, ["psql", f"{base} user=postgres sslmode=disable", "-Atc",
                                      "select current_user"])
        self.assertEqual(plain.stdout, b"postgres\n", plain.stderr)
        # The SSLRequest goes through unchanged: postgres answers 'S', TLS is end to end.
        tls = yield in_thread(run, ["psql", f"{base} user=postgres sslmode=require", "-Atc",
                                    "select ssl from pg_stat_ssl where pid = pg_backend_pid()"])
        self.assertEqual(tls.stdout, b"t\n", tls.stderr)
        self.assertEqual((self.routed("pg"), self.routed("pg-ssl")), (1, 1))
        refused = yield in_thread(run, ["psql", f"{base} user=mallory sslmode=disable", "-Atc",
                                        "select 1"])
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn(b"FATAL:  no route for postgres", refused.stderr)

    @defer.inlineCallbacks
    def test_redis_cli(self) -> Any:
        need("redis-cli")
        self.server("redis")
        cli = ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port)]
        ping = yield in_thread(run, [*cli, "PING"])
        self.assertEqual(ping.stdout, b"PONG\n")
        yield in_thread(run, [*cli, "SET", "portmux", "one-port"])
        value = yield in_thread(run, [*cli, "GET", "portmux"])
        self.assertEqual(value.stdout, b"one-port\n")
        self.assertEqual(self.routed("redis"), 3)

    @defer.inlineCallbacks
    def test_mosquitto_pub_routed_by_client_id(self) -> Any:
        need("mosquitto_pub")
        self.server("mqtt")
        pub = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(self.port), "-t", "t", "-m", "hi"]
        accepted = yield in_thread(run, [*pub, "-i", "sensor-17"])
        self.assertEqual(accepted.returncode, 0, accepted.stderr)
        accepted5 = yield in_thread(run, [*pub, "-i", "sensor-17", "-V", "mqttv5"])
        self.assertEqual(accepted5.returncode, 0, accepted5.stderr)
        refused = yield in_thread(run, [*pub, "-i", "intruder"])
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn(b"unavailable", refused.stderr.lower())
        self.assertEqual(self.routed("mqtt"), 2)

    @defer.inlineCallbacks
    def test_xmpp_stream_routed_by_to_domain(self) -> Any:
        try:
            import slixmpp  # noqa: F401
        except ImportError:
            raise SkipTest("slixmpp is not installed") from None
        yield in_thread(run, [sys.executable, "-c", XMPP_CLIENT, "alice@chat.example",
                              str(self.port)])
        self.assertIn(b"<stream:stream to='chat.example'", self.xmpp.received)  # type: ignore[attr-defined]
        self.assertEqual(self.routed("xmpp"), 1)
        other = yield in_thread(_exchange, self.port,
                                b"<stream:stream to='other.example' xmlns='jabber:client' "
                                b"xmlns:stream='http://etherx.jabber.org/streams'>")
        self.assertIn(b"<host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>", other)

    @defer.inlineCallbacks
    def test_curl_socks5_and_socks4a(self) -> Any:
        need("curl")
        url = f"http://localhost:{self.http_port}/hello"
        five = yield in_thread(run, ["curl", "-sf", "--socks5", f"127.0.0.1:{self.port}",
                                     url.replace("localhost", "127.0.0.1")])
        self.assertEqual(five.stdout, b"hello from http\n", five.stderr)
        four = yield in_thread(run, ["curl", "-sf", "--socks4a", f"127.0.0.1:{self.port}", url])
        self.assertEqual(four.stdout, b"hello from http\n", four.stderr)
        self.assertEqual((self.routed("socks5"), self.routed("socks4a")), (1, 1))
        socks4 = yield in_thread(run, ["curl", "-s", "--socks4", f"127.0.0.1:{self.port}",
                                       url.replace("localhost", "127.0.0.1")])
        self.assertNotEqual(socks4.returncode, 0)  # no SOCKS4 route: refused with 0x5B

    @defer.inlineCallbacks
    def test_openvpn_client_completes_initialization(self) -> Any:
        need("openvpn")
        self.server("openvpn")
        root = self.root
        log = yield in_thread(run_until, [
            "openvpn", "--tls-client", "--dev", "null", "--proto", "tcp-client", "--nobind",
            "--remote", "127.0.0.1", str(self.port), "--ca", str(root / "vpn-ca.pem"),
            "--cert", str(root / "vpn-client.pem"), "--key", str(root / "vpn-client.key"),
            "--connect-retry-max", "1", "--verb", "3",
        ], b"Initialization Sequence Completed", root / "openvpn-client.log")
        self.assertIn(b"Initialization Sequence Completed", log, log[-600:])
        self.assertEqual(self.routed("openvpn"), 1)

    @defer.inlineCallbacks
    def test_xfreerdp_routed_by_cookie(self) -> Any:
        need("xfreerdp", "xvfb-run")
        yield in_thread(run, ["xvfb-run", "-a", "timeout", "5", "xfreerdp",
                              f"/v:127.0.0.1:{self.port}", "/u:alice", "/cert:ignore",
                              "/log-level:OFF"], timeout=20)
        received: bytes = self.rdp.received  # type: ignore[attr-defined]
        self.assertTrue(received.startswith(b"\x03\x00"), received[:20])
        self.assertIn(b"Cookie: mstshash=alice\r\n", received)
        self.assertEqual(self.routed("rdp"), 1)

    @defer.inlineCallbacks
    def test_all_at_once(self) -> Any:
        """Every available client at the same time, each answered by its own backend."""
        port = str(self.port)
        clients: dict[str, tuple[list[str], bytes]] = {
            "http": (["curl", "-sf", "--resolve", f"web.example:{port}:127.0.0.1",
                      f"http://web.example:{port}/hello"], b"hello from http\n"),
            "socks5": (["curl", "-sf", "--socks5", f"127.0.0.1:{port}",
                        f"http://127.0.0.1:{self.http_port}/hello"], b"hello from http\n"),
            "dns": (["dig", "+tcp", "+short", "@127.0.0.1", "-p", port, "a.example"],
                    b"127.64.2.7\n"),
        }
        if "redis" in self.servers.ports:
            clients["redis"] = (["redis-cli", "-h", "127.0.0.1", "-p", port, "PING"], b"PONG\n")
        if "postgres" in self.servers.ports:
            dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=disable"
            clients["pg"] = (["psql", dsn, "-Atc", "select 42"], b"42\n")
        if "mqtt" in self.servers.ports:
            clients["mqtt"] = (["mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-i",
                                "sensor-17", "-t", "t", "-m", "hi"], b"")
        available = {name: case for name, case in clients.items()
                     if shutil.which(case[0][0])}
        results = yield defer.gatherResults(
            [in_thread(run, argv) for argv, _ in available.values()]
            + [in_thread(tls_exchange, self.port, "tls.example", self.ca_file, b"x",
                         read_until=b"x")]
        )
        *outputs, tls = results
        for (name, (_, expected)), output in zip(available.items(), outputs, strict=True):
            self.assertEqual((name, output.stdout), (name, expected), output.stderr)
            self.assertEqual(self.routed(name), 1)
        self.assertEqual(tls.data, b"tls-backend:x")

    @defer.inlineCallbacks
    def test_dig_over_tcp(self) -> Any:
        need("dig")
        answer = yield in_thread(run, ["dig", "+tcp", "+short", "+tries=1", "+time=5",
                                       "@127.0.0.1", "-p", str(self.port), "www.example.com", "A"])
        self.assertEqual(answer.stdout, b"127.64.2.7\n", answer.stderr)
        self.assertEqual(self.routed("dns"), 1)


def _exchange(port: int, data: bytes) -> bytes:
    """Blocking: send ``data``, read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(data)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
        return received

