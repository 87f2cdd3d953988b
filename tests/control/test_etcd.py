"""The etcd v3 JSON-gateway client against a real etcd on loopback."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from portmux.control._etcd import EtcdClient, EtcdError, EtcdUnavailable, WatchEvent, prefix_end
from tests.cluster.harness import ETCD, Etcd, Processes, free_port


class EtcdServer:
    """One etcd for a whole TestCase class (started in setUpClass, killed by PID in tearDownClass)."""

    @classmethod
    def start(cls, owner: Any) -> None:
        if ETCD is None:
            raise SkipTest("needs etcd (Debian etcd-server)")
        owner.tmp = tempfile.TemporaryDirectory()
        owner.processes = Processes(Path(owner.tmp.name))
        owner.etcd = Etcd(owner.processes, Path(owner.tmp.name))
        owner.etcd.start()

    @classmethod
    def stop(cls, owner: Any) -> None:
        owner.processes.stop()
        owner.tmp.cleanup()


class EtcdClientTests(TestCase):
    timeout = 20

    @classmethod
    def setUpClass(cls) -> None:
        EtcdServer.start(cls)

    @classmethod
    def tearDownClass(cls) -> None:
        EtcdServer.stop(cls)

    def client(self, *endpoints: str) -> EtcdClient:
        client = EtcdClient(reactor, list(endpoints) or [self.etcd.url], timeout=2.0)
        self.addCleanup(client.close)
        return client

    def test_prefix_end(self) -> None:
        self.assertEqual(prefix_end(b"/portmux/"), b"/portmux0")
        self.assertEqual(prefix_end(b"a\xff"), b"b")

    async def _gateway(self) -> None:
        client = self.client()
        await client.get_prefix(b"/nothing/")
        self.assertEqual(client.api, "/v3")  # etcd 3.4 serves /v3 (3.3: /v3beta)

    def test_gateway_path_from_version(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._gateway())

    async def _kv(self) -> None:
        client = self.client()
        lease = await client.grant(5)
        created, holder = await client.create(b"/t-kv/a", b"first", lease)
        self.assertEqual((created, holder), (True, None))
        created, holder = await client.create(b"/t-kv/a", b"second", lease)
        self.assertFalse(created)
        assert holder is not None
        self.assertEqual((holder.value, holder.lease), (b"first", lease))
        await client.put(b"/t-kv/b", b"plain")
        revision, kvs = await client.get_prefix(b"/t-kv/")
        self.assertEqual({kv.key: kv.value for kv in kvs}, {b"/t-kv/a": b"first", b"/t-kv/b": b"plain"})
        self.assertGreater(revision, 0)
        # A delete guarded by the lease only removes the key while that lease holds it.
        self.assertFalse(await client.delete(b"/t-kv/b", lease=lease))
        self.assertTrue(await client.delete(b"/t-kv/a", lease=lease))
        self.assertTrue(await client.delete(b"/t-kv/b"))
        self.assertEqual((await client.get_prefix(b"/t-kv/"))[1], [])

    def test_put_range_create_if_absent_delete(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._kv())

    async def _lease(self) -> None:
        client = self.client()
        lease = await client.grant(5)
        await client.put(b"/t-lease/k", b"v", lease)
        self.assertGreater(await client.keepalive(lease), 0)
        await client.revoke(lease)
        self.assertEqual((await client.get_prefix(b"/t-lease/"))[1], [])
        self.assertEqual(await client.keepalive(lease), 0)  # gone

    def test_lease_keeps_keys_until_revoked(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._lease())

    async def _watch(self) -> None:
        client = self.client()
        revision, _ = await client.get_prefix(b"/t-watch/")
        await client.put(b"/t-watch/x", b"1")  # happens before the watch: replayed from the revision
        seen: list[tuple[str, bytes, bytes]] = []

        def on_events(events: list[WatchEvent], _revision: int) -> None:
            seen.extend((e.type, e.kv.key, e.kv.value) for e in events)

        watch = await client.watch(b"/t-watch/", revision + 1, on_events)
        await client.put(b"/t-watch/y", b"2")
        await client.delete(b"/t-watch/x")
        await client.put(b"/elsewhere", b"not watched")
        for _ in range(100):
            if len(seen) >= 3:
                break
            await deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(seen, [("PUT", b"/t-watch/x", b"1"), ("PUT", b"/t-watch/y", b"2"),
                                ("DELETE", b"/t-watch/x", b"")])
        watch.cancel()
        with self.assertRaises(EtcdUnavailable):
            await watch.done

    def test_watch_streams_events_from_a_revision(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._watch())

    async def _unreachable(self) -> None:
        closed = f"http://127.0.0.1:{free_port()}"
        with self.assertRaises(EtcdUnavailable):
            await self.client(closed).put(b"/t-x", b"1")
        # With a second endpoint the same call moves on to it.
        client = self.client(closed, self.etcd.url)
        self.assertGreater(await client.put(b"/t-failover", b"1"), 0)
        self.assertEqual(client.endpoint, self.etcd.url)

    def test_unreachable_endpoint_and_failover(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._unreachable())


class SecuredEtcdTests(TestCase):
    """HTTPS with a client certificate, and etcd users: the ``[registry]`` ca/cert/key and user/password."""

    timeout = 30

    def etcd_with(self, tls: dict[str, Path] | None = None) -> Etcd:
        if ETCD is None:
            raise SkipTest("needs etcd (Debian etcd-server)")
        tmp = Path(tempfile.mkdtemp())
        processes = Processes(tmp)
        self.addCleanup(shutil.rmtree, tmp, True)
        self.addCleanup(processes.stop)
        etcd = Etcd(processes, tmp, tls=tls)
        etcd.start()
        return etcd

    async def _tls(self) -> None:
        import trustme

        ca = trustme.CA()
        server, client = ca.issue_cert("127.0.0.1"), ca.issue_cert("portmux-node")
        tmp = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, tmp, True)
        files = {"ca": tmp / "ca.pem", "cert": tmp / "server.pem", "key": tmp / "server.key",
                 "client_cert": tmp / "client.pem", "client_key": tmp / "client.key"}
        ca.cert_pem.write_to_path(str(files["ca"]))
        server.cert_chain_pems[0].write_to_path(str(files["cert"]))
        server.private_key_pem.write_to_path(str(files["key"]))
        client.cert_chain_pems[0].write_to_path(str(files["client_cert"]))
        client.private_key_pem.write_to_path(str(files["client_key"]))
        etcd = self.etcd_with(tls=files)
        self.assertTrue(etcd.url.startswith("https://"))
        good = EtcdClient(reactor, [etcd.url], ca=ca.cert_pem.bytes(), cert=client.cert_chain_pems[0].bytes(),
                          key=client.private_key_pem.bytes())
        self.addCleanup(good.close)
        await good.put(b"/t-tls/k", b"v")
        self.assertIn("/t-tls/k", etcd.ctl("get", "--prefix", "/t-tls/"))
        # Without a client certificate etcd refuses the handshake.
        anonymous = EtcdClient(reactor, [etcd.url], ca=ca.cert_pem.bytes())
        self.addCleanup(anonymous.close)
        with self.assertRaises(EtcdUnavailable):
            await anonymous.put(b"/t-tls/k", b"v")

    def test_https_with_a_client_certificate(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._tls())

    async def _auth(self) -> None:
        etcd = self.etcd_with()
        etcd.ctl("user", "add", "root", "--new-user-password", "s3cret")
        self.assertIn("Authentication Enabled", etcd.ctl("auth", "enable"))
        client = EtcdClient(reactor, [etcd.url], user="root", password="s3cret")
        self.addCleanup(client.close)
        await client.put(b"/t-auth/k", b"v")
        self.assertEqual([kv.key for kv in (await client.get_prefix(b"/t-auth/"))[1]], [b"/t-auth/k"])
        wrong = EtcdClient(reactor, [etcd.url], user="root", password="nope")
        self.addCleanup(wrong.close)
        with self.assertRaises(EtcdError) as caught:
            await wrong.put(b"/t-auth/k", b"v")
        self.assertIn("authentication failed", str(caught.exception))

    def test_user_and_password(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._auth())
