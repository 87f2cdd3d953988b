# -*- test-case-name: tests.worker.test_library -*-
"""``twistd portmux-worker``: serve any factory, or another twistd plugin's server, behind portmux.

    twistd -n portmux-worker --control unix:/run/portmux.sock \\
        --match 'protocol=http,host=*,path=/' web --path /srv
    twistd -n portmux-worker --control unix:/run/portmux.sock \\
        --match protocol=tcpmux,service=echo --factory portmux.targets.echo:EchoFactory
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any, ClassVar

from twisted.application.service import (
    IServiceCollection,
    IServiceMaker,
    MultiService,
    Service,
)
from twisted.internet.interfaces import IProtocolFactory
from twisted.logger import Logger
from twisted.plugin import getPlugins
from twisted.python import usage

from portmux.worker._library import ControlError, Worker, parse_address_text

log = Logger(namespace="portmux.worker")


class Options(usage.Options):
    """Options for ``twistd portmux-worker``; a trailing twistd plugin supplies the factory."""

    synopsis = "--control unix:PATH --match KEY=VALUE,... (--factory MOD:NAME | PLUGIN [plugin options])"
    optParameters: ClassVar[list[list[Any]]] = [
        ["control", None, None, "portmux's control socket, e.g. unix:/run/portmux/control.sock"],
        ["mode", None, "handoff", "delivery mode: handoff (socket passing) or proxy"],
        ["listen", None, "tcp:0:interface=127.0.0.1",
         "proxy mode: where this worker listens for portmux (a server endpoint string)"],
        ["advertise", None, None,
         ("with a [registry] cluster: tcp:HOST:PORT where other portmux nodes reach this worker; "
          "the worker listens there (in handoff mode too)")],
        ["factory", None, None, "module:name of a protocol factory (or a callable returning one)"],
        ["retry", None, "2.0", "seconds between reconnection attempts when portmux is away"],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["matches"] = []

    def opt_match(self, text: str) -> None:
        """A match to register (repeatable), config route keys: protocol=http,host=*,path=/app/."""
        try:
            self["matches"].append(parse_address_text(text))
        except ValueError as e:
            raise usage.UsageError(str(e)) from None

    def opt_address(self, text: str) -> None:
        """Deprecated: tcpmux:NAME, http:HOST/PATH, tls:SNI, net.tcp://HOST/PATH/ (as --match)."""
        self.opt_match(text)

    @property
    def subCommands(self) -> Iterator[tuple[str, None, Any, str]]:
        for plugin in getPlugins(IServiceMaker):
            if plugin.tapname == "portmux-worker":
                continue
            yield plugin.tapname, None, (lambda plugin=plugin: plugin.options()), plugin.description

    def postOptions(self) -> None:
        if not self["control"]:
            raise usage.UsageError("--control unix:PATH is required")
        if not self["matches"]:
            raise usage.UsageError("give at least one --match to register")
        if self["mode"] not in ("handoff", "proxy"):
            raise usage.UsageError("--mode must be handoff or proxy")
        advertise = self["advertise"]
        if advertise is not None:
            parts = advertise.split(":")
            if len(parts) != 3 or parts[0] != "tcp" or not parts[2].isdigit():
                raise usage.UsageError("--advertise must be tcp:HOST:PORT")
        if not self["factory"] and not self.subCommand:
            raise usage.UsageError("give --factory MOD:NAME or a twistd plugin to run")


def load_factory(spec: str) -> IProtocolFactory:
    """Import ``module:name``; call it if it is not a factory already."""
    module_name, _, name = spec.partition(":")
    if not name:
        raise usage.UsageError(f"--factory {spec!r}: use module:name")
    obj = getattr(importlib.import_module(module_name), name)
    if not IProtocolFactory.providedBy(obj):
        obj = obj()
    if not IProtocolFactory.providedBy(obj):
        raise usage.UsageError(f"--factory {spec!r} is not a protocol factory")
    return obj


def take_factory(service: Any) -> IProtocolFactory | None:
    """Find the first listening service's factory in ``service``'s tree and detach that service."""
    children = list(IServiceCollection(service, []))
    for child in children:
        factory = getattr(child, "factory", None)
        if factory is not None and IProtocolFactory.providedBy(factory) and hasattr(child, "endpoint"):
            child.disownServiceParent()
            return factory
        found = take_factory(child)
        if found is not None:
            return found
    return None


class WorkerService(Service):
    """Keeps a Worker connected and registered; reconnects when portmux goes away."""

    def __init__(self, reactor: Any, options: Any, factory: Any) -> None:
        self.reactor = reactor
        self.options = options
        self.factory = factory
        self.worker: Worker | None = None
        self.endpoint: str | None = None
        self.advertise: str | None = None
        self._retry: Any = None
        self._port: Any = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        advertise = self.options.get("advertise")
        if self.options["mode"] == "proxy" or advertise:
            from twisted.internet.endpoints import serverFromString

            listen = self.options["listen"]
            if advertise:
                _, host, port = advertise.split(":")
                listen = f"tcp:{port}:interface={host}"
            d = serverFromString(self.reactor, listen).listen(self.factory)
            d.addCallback(self._listening)
        else:
            self._connect()

    def _listening(self, port: Any) -> None:
        self._port = port
        host = port.getHost()
        if self.options["mode"] == "proxy":
            self.endpoint = f"tcp:{host.host}:{host.port}"
        if self.options.get("advertise"):
            self.advertise = f"tcp:{host.host}:{host.port}"
        self._connect()

    def _connect(self) -> None:
        self._retry = None
        if not self.running:
            return
        worker = self.worker = Worker(self.reactor, self.options["control"], self.factory)

        async def run() -> None:
            await worker.connect()
            for match in self.options["matches"]:
                reply = await worker.register(match, self.options["mode"], self.endpoint, self.advertise)
                log.info("registered {route}", route=reply.get("route"))

        from twisted.internet.defer import Deferred

        d = Deferred.fromCoroutine(run())
        d.addErrback(self._failed)
        worker.lost.addCallback(lambda _: self._again())

    def _failed(self, failure: Any) -> None:
        if failure.check(ControlError) and failure.value.code == "RegistryUnavailable":
            # The shared registry (etcd) is away: a passing state, so try again later.
            log.warn("portmux cannot register us now: {error}; retrying", error=failure.value)  # noqa: G010
            if self.worker is not None:
                self.worker.close()  # its `lost` schedules the retry
            return
        if failure.check(ControlError) and failure.value.code not in ("Disconnected",):
            log.error("portmux refused us: {error}; stopping", error=failure.value)
            self.reactor.stop()
            return
        log.warn("cannot reach portmux: {error}; retrying", error=failure.getErrorMessage())  # noqa: G010 (twisted.logger)
        if self.worker is not None and self.worker.protocol is None:
            self._again()

    def _again(self) -> None:
        if self.running and self._retry is None:
            self._retry = self.reactor.callLater(float(self.options["retry"]), self._connect)

    def stopService(self) -> Any:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self.worker is not None:
            self.worker.close()
        if self._port is not None:
            return self._port.stopListening()
        return None


def makeService(options: Options) -> MultiService:
    """The worker service, plus whatever else the wrapped plugin built."""
    from twisted.internet import reactor

    top = MultiService()
    if options["factory"]:
        factory = load_factory(options["factory"])
    else:
        plugin = next(p for p in getPlugins(IServiceMaker) if p.tapname == options.subCommand)
        inner: Any = plugin.makeService(options.subOptions)
        own = getattr(inner, "factory", None)
        if own is not None and hasattr(inner, "endpoint") and IProtocolFactory.providedBy(own):
            factory = own
        else:
            found = take_factory(inner)
            if found is None:
                raise usage.UsageError(
                    f"twistd {options.subCommand} built no listening server to take over")
            factory = found
            inner.setServiceParent(top)
    WorkerService(reactor, options, factory).setServiceParent(top)  # type: ignore[no-untyped-call]
    return top
