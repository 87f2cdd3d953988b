# -*- test-case-name: tests.control.test_cluster,tests.control.test_etcd -*-
"""The route registry shared by many portmux nodes through etcd.

Each node holds one etcd lease, kept alive while the node lives. A route a local
worker registers is claimed in etcd with a create-if-absent transaction under that
lease (``PREFIX/registrations/<match>``) and deleted when its last worker leaves;
every node watches ``PREFIX`` and routes other nodes' registrations by proxy to the
address their worker advertised. ``PREFIX/routes/NAME`` holds static routes as JSON
``[[route]]`` tables. When etcd is unreachable the node keeps its last table, says it
is stale, refuses new registrations, and resumes the watch from the last revision it
saw. See docs/scale-out.md.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from portmux.control._etcd import (
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    KeyValue,
    Watch,
    WatchEvent,
)
from portmux.control._keys import known_protocols, parse_match
from portmux.control._registry import Group, Owner, RegistrationError, Registry
from portmux.core.routing import Match, Route

log = Logger(namespace="portmux")

HEALTH_KEY = "portmux.control.registry-health"
"""``Multiplexer.shared`` key of the node's RegistryHealth (None when not clustered)."""
REGISTRATIONS = b"registrations/"
ROUTES = b"routes/"
RETRY_FIRST = 0.25
RETRY_MAX = 5.0
APPLY_BATCH = 128
"""Watch events applied per reactor turn (each costs well under a millisecond)."""


@dataclass
class RegistryHealth:
    """What the status page and metrics say about the shared registry on this node."""

    node: str
    endpoints: tuple[str, ...]
    stale: bool = True
    reason: str = "not connected to etcd yet"
    since: float = 0.0
    revision: int = 0
    lease: int = 0
    remote_routes: int = 0
    etcd_routes: list[str] = field(default_factory=list)
    route_errors: dict[str, str] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    full_reads: int = 0
    events: int = 0

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready form for status.json."""
        return {
            "node": self.node, "etcd": list(self.endpoints), "stale": self.stale,
            "reason": self.reason if self.stale else "", "stale_since": self.since if self.stale else None,
            "revision": self.revision, "lease": f"{self.lease:x}", "remote_routes": self.remote_routes,
            "etcd_routes": list(self.etcd_routes), "etcd_route_errors": dict(self.route_errors),
            "lost_registrations": list(self.lost), "full_reads": self.full_reads, "events": self.events,
        }


def registry_health(mux: Any) -> RegistryHealth | None:
    """The node's RegistryHealth, or None when this multiplexer is not part of a cluster."""
    health: RegistryHealth | None = mux.shared(HEALTH_KEY, lambda _mux: None)
    return health


@dataclass(eq=False)
class RemoteRoute:
    """Another node's registration, routed here by proxy to its advertised addresses."""

    value: bytes
    route: Route


@dataclass(eq=False)
class Claim:
    """A match this node holds in etcd, and the advertised address of each local member."""

    key: bytes
    mode: str
    uid: int
    advertised: dict[int, str] = field(default_factory=dict)  # id(owner) -> advertise


def registration_key(prefix: bytes, match: Match) -> bytes:
    """``PREFIX/registrations/protocol=http,host=a.example,path=/`` (the canonical match text)."""
    return prefix + REGISTRATIONS + match.describe(",").encode("utf-8")


class Cluster(Service):
    """Replicates the local Registry through etcd and routes every other node's registrations.

    ``read_route(name, json_bytes)`` turns a ``PREFIX/routes/NAME`` value into a Route or
    raises ValueError with the config checker's message; ``set_etcd_routes`` receives
    those routes (the daemon places them after the file's routes).
    """

    def __init__(
        self,
        reactor: Any,
        client: EtcdClient,
        mux: Any,
        prefix: str = "/portmux/",
        node: str | None = None,
        lease_ttl: int = 10,
        read_route: Callable[[str, bytes], Route] | None = None,
        set_etcd_routes: Callable[[list[Route]], None] | None = None,
        make_proxy: Callable[[list[str]], Any] | None = None,
    ) -> None:
        self.reactor = reactor
        self.client = client
        self.mux = mux
        self.prefix = prefix.encode("utf-8")
        self.node = node or os.uname().nodename
        self.lease_ttl = lease_ttl
        self._read_route = read_route
        self._set_etcd_routes = set_etcd_routes
        self._make_proxy = make_proxy or _proxy_to
        self.health = mux.shared(HEALTH_KEY, lambda _mux: RegistryHealth(self.node, tuple(client.endpoints)))
        self.health.since = reactor.seconds()
        self.lease = 0
        self.revision = 0
        self.remote: dict[bytes, RemoteRoute] = {}
        self._protocols: frozenset[str] | None = None
        self._backlog: deque[WatchEvent] = deque()
        self._draining: Any = None
        self.etcd_routes: dict[str, Route] = {}
        self.claims: dict[Match, Claim] = {}
        self._unreleased: dict[bytes, None] = {}
        self._watch: Watch | None = None
        self._timer: Any = None
        self._connecting = False
        self._joined = False
        self._resync = True
        self._retry = RETRY_FIRST

    # -- service ------------------------------------------------------------

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._connect()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()  # type: ignore[no-untyped-call]
        self._cancel_timer()
        if self._draining is not None and self._draining.active():
            self._draining.cancel()
        self._draining = None
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
        lease, self.lease = self.lease, 0
        if not lease or self.health.stale:
            return self.client.close()
        done = self.client.revoke(lease)  # every route this node published goes at once
        done.addErrback(lambda f: log.info("registry: revoking lease {lease:x} failed: {why}", lease=lease,
                                           why=f.getErrorMessage()))
        return done.addBoth(lambda _: self.client.close())

    # -- the local registry's hooks ----------------------------------------

    def register(self, registry: Registry, owner: Owner, match: Match, mode: str, endpoint: str | None,
                 advertise: str | None) -> Deferred[Group]:
        """Claim ``match`` cluster-wide (create-if-absent), then register it locally."""
        if self.health.stale:
            return fail(RegistrationError("RegistryUnavailable", self._unavailable()))
        if advertise is not None:
            try:
                self._make_proxy([advertise])
            except (TypeError, ValueError) as error:
                return fail(RegistrationError("BadAdvertise", f"advertise must be a client endpoint string: {error}"))
        claim = self.claims.get(match)
        if claim is not None and match in registry.groups:
            try:
                group = registry.register(owner, match, mode, endpoint)
            except RegistrationError as error:
                return fail(error)
            self._remember(claim, owner, advertise)
            return succeed(group)
        key = registration_key(self.prefix, match)
        value = self._value(match, mode, owner.uid, [advertise] if advertise else [], owner.pid)
        lease = self.lease

        async def claim_and_register() -> Group:
            created, holder = await self.client.create(key, value, lease)
            previous_run = not created and holder is not None and holder.lease != lease \
                and _node_of(holder) == self.node
            # Held by this node's previous run (its lease not yet expired): take it over.
            if previous_run and holder is not None and await self.client.replace(key, value, lease, holder.lease):
                created, holder = True, None
            if not created and (holder is None or holder.lease != lease):
                raise RegistrationError("ConflictingRegistration", _conflict(match, holder))
            try:
                group = registry.register(owner, match, mode, endpoint)
            except RegistrationError:
                if created and match not in registry.groups:
                    # Refused here (a reservation, the capture rule...): free the address first.
                    try:
                        await self.client.delete(key, lease=lease)
                    except EtcdError:
                        self._unreleased[key] = None
                raise
            claim = self.claims.setdefault(match, Claim(key, mode, owner.uid))
            self._remember(claim, owner, advertise)
            return group

        def unreachable(failure: Failure) -> Failure:
            if failure.check(EtcdUnavailable):
                self._lost_contact(failure.getErrorMessage())
                return Failure(RegistrationError("RegistryUnavailable", self._unavailable()))
            if failure.check(EtcdError):
                return Failure(RegistrationError("RegistryUnavailable", f"etcd refused the claim: "
                                                 f"{failure.getErrorMessage()}"))
            return failure

        return Deferred.fromCoroutine(claim_and_register()).addErrback(unreachable)

    def released(self, registry: Registry, owner: Owner, matches: Iterable[Match]) -> None:
        """``owner`` left ``matches``: delete the keys of groups now gone, update the others."""
        for match in matches:
            claim = self.claims.get(match)
            if claim is None:
                continue
            claim.advertised.pop(id(owner), None)
            group = registry.groups.get(match)
            if group is not None:
                self._republish_claim(match, claim, group.members[0].owner.pid if group.members else 0)
                continue
            del self.claims[match]
            self._delete(claim.key)

    def _remember(self, claim: Claim, owner: Owner, advertise: str | None) -> None:
        if advertise is None or claim.advertised.get(id(owner)) == advertise:
            return
        first = not claim.advertised
        claim.advertised[id(owner)] = advertise
        if not first:
            self._republish_claim(None, claim, owner.pid)

    def _republish_claim(self, match: Match | None, claim: Claim, pid: int) -> None:
        """Rewrite a held key with the members' current advertised addresses."""
        if self.health.stale or not self.lease:
            return  # re-put on reconnection
        match = match or next(m for m, c in self.claims.items() if c is claim)
        value = self._value(match, claim.mode, claim.uid, list(claim.advertised.values()), pid)
        self.client.put(claim.key, value, self.lease).addErrback(
            lambda f: log.info("registry: updating {key} failed: {why}", key=claim.key, why=f.getErrorMessage()))

    def _value(self, match: Match, mode: str, uid: int, advertise: list[str], pid: int) -> bytes:
        return json.dumps({"match": match.to_keys(), "mode": mode, "uid": uid, "node": self.node,
                           "pid": pid, "advertise": advertise}).encode("utf-8")

    def _delete(self, key: bytes) -> None:
        if self.health.stale or not self.lease:
            self._unreleased[key] = None
            return
        lease = self.lease

        def failed(failure: Failure) -> None:
            self._unreleased[key] = None
            if failure.check(EtcdUnavailable):
                self._lost_contact(failure.getErrorMessage())

        self.client.delete(key, lease=lease).addErrback(failed)

    def _unavailable(self) -> str:
        return (f"the shared route registry (etcd {', '.join(self.health.endpoints)}) is unreachable: "
                f"{self.health.reason}; new registrations are refused until it is back")

    # -- connecting, keepalive, watch -----------------------------------------

    def _connect(self) -> None:
        if self._connecting or not self.running:
            return
        self._connecting = True
        Deferred.fromCoroutine(self._sync()).addBoth(self._connected)

    async def _sync(self) -> None:
        renewed = False
        if not self.lease or await self.client.keepalive(self.lease) <= 0:
            self.lease = await self.client.grant(self.lease_ttl)
            self.health.lease = self.lease
            renewed = True
        if self._resync:
            self.health.full_reads += 1
            revision, kvs = await self.client.get_prefix(self.prefix)
            self._backlog.clear()  # the snapshot supersedes events not applied yet
            self._apply_snapshot(kvs)
            self.revision = revision
            self._resync = False
        if renewed and self.claims:
            await self._reclaim()
        for key in list(self._unreleased):
            await self.client.delete(key, lease=self.lease)
            self._unreleased.pop(key, None)
        watch = await self.client.watch(self.prefix, self.revision + 1, self._on_events)
        self._watch = watch
        watch.done.addErrback(self._watch_ended, watch)

    def _connected(self, result: Any) -> None:
        self._connecting = False
        if isinstance(result, Failure):
            if not result.check(EtcdError):
                log.failure("registry: connecting to etcd failed", result)
            self._lost_contact(result.getErrorMessage())
            self._schedule(self._connect, self._retry)
            self._retry = min(self._retry * 2, RETRY_MAX)
            return
        self._retry = RETRY_FIRST
        health = self.health
        if health.stale:
            if not self._joined:
                log.info("registry: node {node} joined etcd {etcd} (lease {lease:x}, revision {rev}, "
                         "{remote} remote routes)", node=self.node, etcd=self.client.endpoint, lease=self.lease,
                         rev=self.revision, remote=len(self.remote))
            else:
                log.info("registry: etcd reachable again after {seconds:.1f}s; watch resumed from revision {rev}",
                         seconds=self.reactor.seconds() - health.since, rev=self.revision + 1)
        health.stale = False
        health.reason = ""
        self._joined = True
        self._schedule(self._keepalive, self._keepalive_interval())

    def _keepalive_interval(self) -> float:
        return max(self.lease_ttl / 3.0, 0.2)

    def _keepalive(self) -> None:
        self._timer = None

        def alive(ttl: int) -> None:
            if ttl <= 0:
                log.warn("registry: lease {lease:x} expired; claiming this node's routes again", lease=self.lease)  # noqa: G010
                self._restart()
                return
            self._schedule(self._keepalive, self._keepalive_interval())

        def failed(failure: Failure) -> None:
            self._lost_contact(failure.getErrorMessage())
            self._restart()

        self.client.keepalive(self.lease).addCallbacks(alive, failed)

    def _watch_ended(self, failure: Failure, watch: Watch) -> None:
        if watch is not self._watch or not self.running:
            return
        self._watch = None
        if "compacted" in failure.getErrorMessage():
            log.info("registry: {why}; reading the whole table again", why=failure.getErrorMessage())
            self._resync = True
        else:
            self._lost_contact(failure.getErrorMessage())
        self._restart()

    def _restart(self) -> None:
        """Drop the watch and timers; connect again (at once, then with backoff)."""
        self._cancel_timer()
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
        self._connect()

    def _lost_contact(self, reason: str) -> None:
        health = self.health
        if not self._joined:
            health.reason = f"not connected to etcd yet ({reason})"
            return
        if health.stale:
            return
        health.stale = True
        health.reason = reason
        health.since = self.reactor.seconds()
        log.warn("registry: etcd unreachable ({reason}); routing with the last table (revision {rev}, {remote} "  # noqa: G010
                 "remote routes); new registrations are refused", reason=reason, rev=self.revision,
                 remote=len(self.remote))

    def _schedule(self, what: Callable[[], None], delay: float) -> None:
        self._cancel_timer()
        if self.running:
            self._timer = self.reactor.callLater(delay, what)

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    async def _reclaim(self) -> None:
        """After a new lease: claim this node's routes again; ones taken meanwhile are lost."""
        for match, claim in list(self.claims.items()):
            value = self._value(match, claim.mode, claim.uid, list(claim.advertised.values()), 0)
            created, holder = await self.client.create(claim.key, value, self.lease)
            if not created and (holder is None or holder.lease != self.lease):
                text = f"{match.describe(',')}: {_conflict(match, holder)}"
                log.warn("registry: lost {text} while etcd was away; it stays routed on this node only",  # noqa: G010
                         text=text)
                self.health.lost.append(text)
                del self.claims[match]

    # -- applying etcd's table -----------------------------------------------

    def _on_events(self, events: list[WatchEvent], revision: int) -> None:
        """Queue a watch message's events; apply them in order, APPLY_BATCH per reactor turn."""
        self._backlog.extend(events)
        if self._draining is None:
            self._drain()

    def _drain(self) -> None:
        """Apply queued events; a big batch (a node's lease expiring) never blocks the reactor long.

        ``revision`` only counts applied events, so a watch resumed meanwhile may deliver some
        again; applying an event twice changes nothing.
        """
        self._draining = None
        routes_changed = False
        for _ in range(min(APPLY_BATCH, len(self._backlog))):
            event = self._backlog.popleft()
            self.revision = max(self.revision, event.kv.mod_revision)
            self.health.events += 1
            routes_changed |= self._apply(event.kv.key, event.kv if event.type == "PUT" else None) == "route"
        self.health.revision = self.revision
        self.health.remote_routes = len(self.remote)
        if routes_changed:
            self._publish_etcd_routes()
        if self._backlog and self.running:
            self._draining = self.reactor.callLater(0, self._drain)

    def _apply_snapshot(self, kvs: Sequence[KeyValue]) -> None:
        seen = {kv.key for kv in kvs}
        for key in [k for k in self.remote if k not in seen]:
            self._apply(key, None)
        for name in [n for n in self.etcd_routes if self.prefix + ROUTES + n.encode() not in seen]:
            self._apply(self.prefix + ROUTES + name.encode(), None)
        for name in [n for n in self.health.route_errors if self.prefix + ROUTES + n.encode() not in seen]:
            self.health.route_errors.pop(name, None)
        for kv in kvs:
            self._apply(kv.key, kv)
        self.health.revision = self.revision
        self.health.remote_routes = len(self.remote)
        self._publish_etcd_routes()

    def _apply(self, key: bytes, kv: KeyValue | None) -> str:
        """Apply one key's new state (None: deleted); which table it touched."""
        rest = key[len(self.prefix):]
        if rest.startswith(REGISTRATIONS):
            self._apply_registration(key, kv)
            return "registration"
        if rest.startswith(ROUTES):
            self._apply_route(rest[len(ROUTES):].decode("utf-8", "replace"), kv)
            return "route"
        return ""

    def _apply_registration(self, key: bytes, kv: KeyValue | None) -> bool:
        """Apply one registration key; True if the remote routes changed."""
        old = self.remote.get(key)
        if kv is not None and old is not None and old.value == kv.value:
            return False
        if old is not None:
            self._forget_remote(key, old)
        if kv is None or (kv.lease and kv.lease == self.lease):
            return old is not None  # deleted, or one of ours (the local Registry routes it)
        try:
            info = json.loads(kv.value)
            if self._protocols is None:
                self._protocols = known_protocols()
            match = parse_match(info["match"], protocols=self._protocols)
            node = str(info.get("node", "?"))
            advertise = [str(a) for a in info.get("advertise") or ()]
        except (ValueError, KeyError, TypeError, RegistrationError) as error:
            log.warn("registry: ignoring malformed registration {key}: {error}", key=key, error=error)  # noqa: G010
            return old is not None
        if not advertise:
            log.info("registry: {node} registered {match} without an advertised address; it is routed on {node} only",
                     node=node, match=match.describe(","))
            return old is not None
        try:
            target = self._make_proxy(advertise)
        except (TypeError, ValueError) as error:
            log.warn("registry: {node}'s {match} advertises {advertise}: {error}", node=node,  # noqa: G010
                     match=match.describe(","), advertise=advertise, error=error)
            return old is not None
        target.description = f"{target.description} (registered on node {node}, pid {info.get('pid', '?')})"
        route = Route(f"{node}:{match.describe(',')}", match, target)
        self.remote[key] = RemoteRoute(kv.value, route)
        self.mux.add_registered_route(route)  # O(log n): the Router's registered layer is incremental
        return True

    def _forget_remote(self, key: bytes, old: RemoteRoute) -> None:
        del self.remote[key]
        self.mux.remove_registered_route(old.route)

    def _apply_route(self, name: str, kv: KeyValue | None) -> None:
        self.etcd_routes.pop(name, None)
        self.health.route_errors.pop(name, None)
        if kv is None or self._read_route is None:
            return
        try:
            self.etcd_routes[name] = self._read_route(name, kv.value)
        except ValueError as error:
            message = str(error)
            self.health.route_errors[name] = message
            log.error("registry: route {name} from etcd refused:\n{message}", name=name, message=message)

    def _publish_etcd_routes(self) -> None:
        routes = [self.etcd_routes[name] for name in sorted(self.etcd_routes)]
        self.health.etcd_routes = sorted(self.etcd_routes)
        if self._set_etcd_routes is not None:
            self._set_etcd_routes(routes)

    def remote_routes(self) -> list[Route]:
        """Other nodes' routes this node routes now."""
        return [remote.route for remote in self.remote.values()]


def _node_of(holder: KeyValue) -> str | None:
    try:
        node = json.loads(holder.value).get("node")
    except (ValueError, AttributeError):
        return None
    return str(node) if node is not None else None


def _conflict(match: Match, holder: KeyValue | None) -> str:
    text = match.describe(",")
    if holder is None:
        return f"{text} is already registered on another node"
    try:
        info = json.loads(holder.value)
        return (f"{text} is already registered on node {info.get('node', '?')} by uid {info.get('uid', '?')} "
                f"(pid {info.get('pid', '?')})")
    except ValueError:
        return f"{text} is already registered on another node"


def _proxy_to(endpoints: list[str]) -> Any:
    from portmux.targets.proxy import ProxyTarget

    return ProxyTarget(endpoints)
