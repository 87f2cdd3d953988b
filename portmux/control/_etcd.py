# -*- test-case-name: tests.control.test_etcd -*-
"""A small etcd v3 client over etcd's JSON gateway (grpc-gateway), spoken with treq.

There is no maintained Twisted-native etcd client, and the ``etcd3`` package is
unmaintained and blocking (gRPC threads); the gateway is part of every etcd server,
so plain HTTP+JSON through treq keeps everything on the reactor. Watches are one
streaming POST whose body is a sequence of JSON objects. See docs/scale-out.md.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import treq
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

__all__ = ["EtcdClient", "EtcdError", "EtcdUnavailable", "KeyValue", "Watch", "WatchEvent", "prefix_end"]


MAX_IN_FLIGHT = 16
"""Unary requests one client has in flight at most (the rest wait their turn)."""


class EtcdError(Exception):
    """etcd answered, but with an error (bad request, auth refused, compacted watch …)."""


class EtcdUnavailable(EtcdError):
    """etcd could not be reached, or did not answer in time."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text or "")


def prefix_end(prefix: bytes) -> bytes:
    """The range end covering every key starting with ``prefix`` (etcd's rule: last byte + 1)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


@dataclass(frozen=True)
class KeyValue:
    """One key as etcd reports it; revisions and the lease come as decimal strings on the wire."""

    key: bytes
    value: bytes
    create_revision: int = 0
    mod_revision: int = 0
    lease: int = 0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyValue:
        return cls(_unb64(data.get("key")), _unb64(data.get("value")), int(data.get("create_revision", 0)),
                   int(data.get("mod_revision", 0)), int(data.get("lease", 0)))


@dataclass(frozen=True)
class WatchEvent:
    """A PUT or DELETE seen by a watch."""

    type: str
    kv: KeyValue


@implementer(IPolicyForHTTPS)
class _ClientCertificatePolicy:
    """HTTPS to etcd verified against ``ca`` (or the system roots), optionally with a client certificate."""

    def __init__(self, ca: bytes | None, cert: bytes | None, key: bytes | None) -> None:
        from twisted.internet import ssl

        self._trust = ssl.Certificate.loadPEM(ca) if ca else None
        self._client = ssl.PrivateCertificate.loadPEM(cert + b"\n" + key) if cert and key else None

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        from twisted.internet import ssl

        kwargs: dict[str, Any] = {}
        if self._trust is not None:
            kwargs["trustRoot"] = self._trust
        if self._client is not None:
            kwargs["clientCertificate"] = self._client
        return ssl.optionsForClientTLS(hostname.decode("ascii"), **kwargs)


class _JSONLines(Protocol):
    """Receives a streaming gateway body: JSON objects, one per line; each goes to ``deliver``."""

    def __init__(self, deliver: Callable[[list[dict[str, Any]]], None]) -> None:
        self.deliver = deliver
        self.buffer = b""
        self.finished: Deferred[None] = Deferred()
        self.error: str | None = None

    def dataReceived(self, data: bytes) -> None:
        if self.error is not None:
            return
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        try:
            messages = [json.loads(line) for line in lines if line.strip()]
        except ValueError as e:
            self.error = f"the watch stream sent something that is not JSON: {e}"
            IPushProducer(self.transport).stopProducing()
            return
        if messages:
            self.deliver(messages)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        if self.error is not None:
            self.finished.errback(EtcdError(self.error))
        elif reason.check(ResponseDone):
            self.finished.errback(EtcdUnavailable("etcd closed the watch stream"))
        else:
            self.finished.errback(EtcdUnavailable(f"the watch stream broke: {reason.getErrorMessage()}"))


class Watch:
    """One running watch: events go to ``on_events(events, revision)``; ``done`` fails when it ends."""

    def __init__(self, on_events: Callable[[list[WatchEvent], int], None]) -> None:
        self.on_events = on_events
        self.done: Deferred[None] = Deferred()
        self.created = False
        self._stream: _JSONLines | None = None

    def _attach(self, stream: _JSONLines) -> None:
        self._stream = stream
        stream.finished.addErrback(self._ended)

    def _ended(self, failure: Failure) -> None:
        if not self.done.called:
            self.done.errback(failure)

    def _deliver(self, messages: list[dict[str, Any]]) -> None:
        events: list[WatchEvent] = []
        revision = 0
        for message in messages:
            if "error" in message:
                self._fail(EtcdError(str(message["error"].get("message", message["error"]))))
                return
            result = message.get("result", {})
            if result.get("created"):
                self.created = True
            if result.get("compact_revision") and int(result["compact_revision"]):
                self._fail(EtcdError(f"watch compacted at revision {result['compact_revision']}"))
                return
            if result.get("canceled"):
                self._fail(EtcdError(f"watch canceled: {result.get('cancel_reason', 'no reason')}"))
                return
            revision = max(revision, int(result.get("header", {}).get("revision", 0)))
            for event in result.get("events", ()):
                events.append(WatchEvent(event.get("type", "PUT"), KeyValue.from_json(event.get("kv", {}))))
        if events or revision:
            self.on_events(events, revision)

    def _fail(self, error: Exception) -> None:
        self.cancel()
        if not self.done.called:
            self.done.errback(error)

    def cancel(self) -> None:
        """Stop the stream (the ``done`` Deferred then fails, unless already fired)."""
        stream = self._stream
        if stream is not None and stream.transport is not None:
            IPushProducer(stream.transport).stopProducing()


class EtcdClient:
    """The few etcd v3 calls portmux needs, each a Deferred; endpoints are tried in turn.

    ``user``/``password`` authenticate once and resend the token; ``ca``/``cert``/``key``
    (PEM bytes) configure HTTPS endpoints.
    """

    def __init__(
        self,
        reactor: Any,
        endpoints: Sequence[str],
        timeout: float = 2.0,
        user: str | None = None,
        password: str | None = None,
        ca: bytes | None = None,
        cert: bytes | None = None,
        key: bytes | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.reactor = reactor
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.timeout = timeout
        self.user = user
        self.password = password
        self.api = "/v3"
        self._current = 0
        self._token: str | None = None
        self._version_checked = False
        policy = _ClientCertificatePolicy(ca, cert, key)
        # Every request reuses one of MAX_IN_FLIGHT kept-alive connections: closing a gateway
        # connection right after its answer can make etcd's gRPC side reset the streams of
        # every other request in flight (seen with 100 requests in flight on etcd 3.4).
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = MAX_IN_FLIGHT
        self._pool.retryAutomatically = False
        self._slots = DeferredSemaphore(MAX_IN_FLIGHT)
        self._http = treq.client.HTTPClient(Agent(reactor, contextFactory=policy, pool=self._pool))
        self._stream_http = treq.client.HTTPClient(
            Agent(reactor, contextFactory=policy, pool=HTTPConnectionPool(reactor, persistent=False)))

    @property
    def endpoint(self) -> str:
        return self.endpoints[self._current]

    def close(self) -> Deferred[None]:
        """Close pooled connections."""
        result: Deferred[None] = self._pool.closeCachedConnections()
        return result

    # -- plumbing ---------------------------------------------------------

    async def _ensure_ready(self) -> None:
        if not self._version_checked:
            self.api = await self._gateway_path()
            self._version_checked = True
        if self.user and self._token is None:
            reply = await self._post_once("/auth/authenticate", {"name": self.user, "password": self.password or ""},
                                          auth=False)
            self._token = str(reply.get("token", ""))

    async def _gateway_path(self) -> str:
        """``/v3`` on etcd 3.4+ (and 3.3's /v3beta before it); from GET /version."""
        try:
            response = await self._http.get(f"{self.endpoint}/version", timeout=self.timeout)
            data = json.loads(await response.content())
        except Exception as error:  # noqa: BLE001 - any transport failure means "unreachable"
            self._rotate()
            raise EtcdUnavailable(f"{self.endpoint}: {_reason(error)}") from None
        major, minor, *_ = (int(p) for p in str(data.get("etcdserver", "3.4.0")).split(".")[:2] + ["0"])
        if (major, minor) < (3, 3):
            return "/v3alpha"
        if (major, minor) < (3, 4):
            return "/v3beta"
        return "/v3"

    def _rotate(self) -> None:
        self._current = (self._current + 1) % len(self.endpoints)

    def _headers(self, auth: bool) -> dict[bytes | str, bytes | str]:
        if auth and self._token:
            return {"Authorization": self._token}
        return {}

    async def _post_once(self, path: str, body: dict[str, Any], auth: bool = True) -> dict[str, Any]:
        url = f"{self.endpoint}{self.api}{path}"
        try:
            response = await self._http.post(url, json=body, headers=self._headers(auth), timeout=self.timeout)
            raw = await response.content()
        except Exception as error:  # noqa: BLE001 - refused, reset, timed out: all "unreachable"
            self._rotate()
            raise EtcdUnavailable(f"{self.endpoint}: {_reason(error)}") from None
        try:
            data: dict[str, Any] = json.loads(raw)
        except ValueError:
            raise EtcdError(f"{url}: not JSON (HTTP {response.code})") from None
        if response.code >= 500 and "error" not in data:
            self._rotate()
            raise EtcdUnavailable(f"{url}: HTTP {response.code}")
        if response.code != 200 or "error" in data:
            message = str(data.get("message") or data.get("error") or f"HTTP {response.code}")
            if "token" in message and auth and self.user:
                self._token = None
            raise EtcdError(f"{path}: {message}")
        return data

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One call, trying each endpoint once while they are unreachable."""
        for attempt in range(len(self.endpoints)):
            try:
                return await self._post_endpoint(path, body)
            except EtcdUnavailable:
                if attempt == len(self.endpoints) - 1:
                    raise
        raise AssertionError("unreachable")

    async def _post_endpoint(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        await self._ensure_ready()
        try:
            return await self._post_once(path, body)
        except EtcdError as error:
            if self.user and self._token is None and not isinstance(error, EtcdUnavailable):
                await self._ensure_ready()  # the token expired: authenticate again, once
                return await self._post_once(path, body)
            raise

    def _call(self, path: str, body: dict[str, Any]) -> Deferred[dict[str, Any]]:
        return self._slots.run(lambda: Deferred.fromCoroutine(self._post(path, body)))

    # -- the calls ----------------------------------------------------------

    def put(self, key: bytes, value: bytes, lease: int = 0) -> Deferred[int]:
        """Write ``key``; fires with the new revision."""
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        return self._call("/kv/put", body).addCallback(_revision)

    def get_prefix(self, prefix: bytes) -> Deferred[tuple[int, list[KeyValue]]]:
        """Every key under ``prefix`` and the revision they were read at."""
        body = {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))}

        def read(data: dict[str, Any]) -> tuple[int, list[KeyValue]]:
            return _revision(data), [KeyValue.from_json(kv) for kv in data.get("kvs", ())]

        return self._call("/kv/range", body).addCallback(read)

    def delete(self, key: bytes, lease: int | None = None) -> Deferred[bool]:
        """Delete ``key`` (only while it is held by ``lease``, if given); True if it was deleted."""
        request = {"request_delete_range": {"key": _b64(key)}}
        if lease is None:
            return self._call("/kv/deleterange", {"key": _b64(key)}).addCallback(
                lambda data: int(data.get("deleted", 0)) > 0)
        body = {
            "compare": [{"key": _b64(key), "target": "LEASE", "result": "EQUAL", "lease": str(lease)}],
            "success": [request],
        }
        return self._call("/kv/txn", body).addCallback(lambda data: bool(data.get("succeeded")))

    def create(self, key: bytes, value: bytes, lease: int) -> Deferred[tuple[bool, KeyValue | None]]:
        """Create ``key`` only if absent (one transaction): (True, None), or (False, the holder)."""
        body = {
            "compare": [{"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
            "success": [{"request_put": {"key": _b64(key), "value": _b64(value), "lease": str(lease)}}],
            "failure": [{"request_range": {"key": _b64(key)}}],
        }

        def read(data: dict[str, Any]) -> tuple[bool, KeyValue | None]:
            if data.get("succeeded"):
                return True, None
            for response in data.get("responses", ()):
                kvs = response.get("response_range", {}).get("kvs", ())
                if kvs:
                    return False, KeyValue.from_json(kvs[0])
            return False, None

        return self._call("/kv/txn", body).addCallback(read)

    def replace(self, key: bytes, value: bytes, lease: int, old_lease: int) -> Deferred[bool]:
        """Put ``key`` under ``lease`` only while ``old_lease`` still holds it (one transaction)."""
        body = {
            "compare": [{"key": _b64(key), "target": "LEASE", "result": "EQUAL", "lease": str(old_lease)}],
            "success": [{"request_put": {"key": _b64(key), "value": _b64(value), "lease": str(lease)}}],
        }
        return self._call("/kv/txn", body).addCallback(lambda data: bool(data.get("succeeded")))

    def grant(self, ttl: int) -> Deferred[int]:
        """A new lease of ``ttl`` seconds; fires with its id."""
        return self._call("/lease/grant", {"TTL": str(ttl)}).addCallback(lambda data: int(data["ID"]))

    def keepalive(self, lease: int) -> Deferred[int]:
        """Refresh ``lease``; fires with its remaining TTL (0: the lease is gone)."""
        return self._call("/lease/keepalive", {"ID": str(lease)}).addCallback(
            lambda data: int(data.get("result", {}).get("TTL", 0)))

    def revoke(self, lease: int) -> Deferred[dict[str, Any]]:
        """End ``lease`` now: every key attached to it is deleted."""
        return self._call("/lease/revoke", {"ID": str(lease)})

    def watch(self, prefix: bytes, start_revision: int,
              on_events: Callable[[list[WatchEvent], int], None]) -> Deferred[Watch]:
        """Watch every key under ``prefix`` from ``start_revision``; fires once the stream is open."""
        watch = Watch(on_events)

        async def open_stream() -> Watch:
            await self._ensure_ready()
            body = {"create_request": {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix)),
                                       "start_revision": str(start_revision)}}
            url = f"{self.endpoint}{self.api}/watch"
            try:
                response = await self._stream_http.post(url, json=body, headers=self._headers(True),
                                                         timeout=self.timeout, unbuffered=True)
            except Exception as error:  # noqa: BLE001
                self._rotate()
                raise EtcdUnavailable(f"{self.endpoint}: {_reason(error)}") from None
            if response.code != 200:
                raise EtcdError(f"watch: HTTP {response.code}")
            stream = _JSONLines(watch._deliver)
            watch._attach(stream)
            response.deliverBody(stream)
            return watch

        return Deferred.fromCoroutine(open_stream())


def _revision(data: dict[str, Any]) -> int:
    return int(data.get("header", {}).get("revision", 0))


def _reason(error: BaseException) -> str:
    if hasattr(error, "reasons") and error.reasons:
        return str(error.reasons[0].getErrorMessage())
    text = str(error) or type(error).__name__
    return text.splitlines()[0]

