# -*- test-case-name: tests.daemon.test_daemon,tests.daemon.test_one_port -*-
"""Assembles the running daemon: listeners, the multiplexer, control; reload; stop."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from portmux.core.mux import Multiplexer
from portmux.core.routing import parse_networks
from portmux.daemon.endpoints import EndpointStringError, parse_server_endpoint

log = Logger(namespace="portmux")


class PortmuxService(MultiService):
    """One Multiplexer shared by every configured listener, plus the control socket.

    ``load`` returns a fresh portmux.daemon.config.Config (or raises ConfigError); it is
    called again on SIGHUP to swap routes and reload certificates.
    """

    def __init__(self, reactor: Any, load: Callable[[], Any], listen: list[str] | None = None,
                 control: str | None = None, processes: int | None = None,
                 config_path: str | None = None, adopt: list[Any] | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.reactor = reactor
        self._load = load
        self._listen_override = list(listen or [])
        self._control_override = control
        config = load()
        self.config = config
        self.mux = Multiplexer(reactor, config.routes, settings=config.sniff)
        if self._listen_override:
            listeners: list[tuple[Any, Any]] = [(d, ()) for d in self._listen_override]
        else:
            listeners = [
                (listener.endpoint, _header_networks(listener)) for listener in config.listeners
            ]
        if adopt is not None:  # a child of a process group: the parent's sockets, same order
            trusted_lists = [t for _, t in listeners] if len(listeners) == len(adopt) else []
            listeners = [(e, trusted_lists[i] if trusted_lists else ()) for i, e in enumerate(adopt)]
        services = []
        for description, trusted in listeners:
            factory = self.mux.listener_factory(tuple(trusted))
            listener_service = ListenerService(reactor, description, self.mux, factory)
            listener_service.setServiceParent(self)  # type: ignore[no-untyped-call]
            services.append(listener_service)
        count = processes if processes is not None else getattr(config, "processes", 1)
        self.group: Any = None
        if adopt is None and count > 1:
            from portmux.daemon.group import ProcessGroup

            if self._control_override or getattr(config, "control", None) is not None:
                raise StartupError("processes > 1 cannot be combined with a control socket yet")
            self.group = ProcessGroup(reactor, count, services, config_path,
                                      plain=bool(self._listen_override), stats=self.mux.stats)
            self.group.setServiceParent(self)  # type: ignore[no-untyped-call]
        control_config = getattr(config, "control", None) if adopt is None else None
        if self._control_override and adopt is None:
            control_config = _control_with_endpoint(control_config, self._control_override)
        if control_config is not None:
            from portmux.control._server import ControlService

            ControlService(  # type: ignore[no-untyped-call]
                reactor, self.mux, control_config, getattr(config, "reservations", ())
            ).setServiceParent(self)
        self._previous_sighup: Any = None

    def startService(self) -> None:
        for route in self.mux.router.routes:
            log.info(
                "route {name}: {match} -> {target}",
                name=route.name,
                match=route.match.describe(),
                target=getattr(route.target, "description", route.kind),
            )
        super().startService()  # type: ignore[no-untyped-call]
        from portmux.daemon._gc import freeze_startup_objects

        freeze_startup_objects()
        try:
            self._previous_sighup = signal.signal(
                signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.reload)
            )
        except ValueError:  # not the main thread (embedded in tests)
            self._previous_sighup = None

    def stopService(self) -> Any:
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        return super().stopService()  # type: ignore[no-untyped-call]

    def reload(self) -> bool:
        """Re-read the config and swap routes; on any error keep the running config."""
        from portmux.daemon.config import ConfigError

        try:
            config = self._load()
        except ConfigError as error:
            log.error("reload refused, keeping the running config:\n{errors}", errors=str(error))
            return False
        except Exception:  # noqa: BLE001  # keep running on any reload failure
            log.failure("reload failed, keeping the running config")
            return False
        old_listeners = [listener.endpoint for listener in self.config.listeners]
        new_listeners = [listener.endpoint for listener in config.listeners]
        if not self._listen_override and old_listeners != new_listeners:
            log.warn(  # noqa: G010  # twisted.logger.Logger has no .warning
                "reload: listeners changed in the config; restart portmux to apply them"
            )
        self.config = config
        self.mux.settings = config.sniff
        self.mux.set_static_routes(config.routes)
        for target in self.mux.router.targets():
            reload_target = getattr(target, "reload", None)
            if reload_target is not None:
                try:
                    reload_target()
                except Exception:  # noqa: BLE001
                    log.failure("reloading target {target} failed", target=target)
        log.info("reloaded: {count} routes", count=len(self.mux.router.routes))
        if self.group is not None:
            self.group.signal_all(signal.SIGHUP)  # each child re-reads the same file
        return True


class StartupError(SystemExit):
    """A startup failure told in one line: twistd prints it and exits with status 1.

    A SystemExit with a message is how a Python program says "stop, here is why"
    without a traceback; twistd lets it through from privilegedStartService.
    """

    def __init__(self, message: str) -> None:
        super().__init__(f"portmux: {message}")


class ListenerService(Service):
    """Listens on one endpoint string with the multiplexer; binds in privilegedStartService.

    A bind failure raises at startup so twistd exits with the reason.
    """

    def __init__(self, reactor: Any, description: Any, mux: Multiplexer,
                 factory: Any = None) -> None:
        self.reactor = reactor
        # An endpoint object (a process group child's inherited socket) or a string to parse.
        self._endpoint = None if isinstance(description, str) else description
        self.description = description if isinstance(description, str) else _label(description)
        self.mux = mux
        self.factory = factory if factory is not None else mux
        self.port: Any = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        if self.port is not None:
            return
        outcome: list[Any] = []
        try:
            endpoint = self._endpoint or parse_server_endpoint(self.reactor, self.description)
            endpoint.listen(self.factory).addBoth(outcome.append)
        except (EndpointStringError, OSError) as error:
            raise StartupError(f"cannot listen on {self.description}: {error}") from None
        if not outcome:
            raise StartupError(f"{self.description}: the endpoint did not listen at once")
        result = outcome[0]
        if isinstance(result, Failure):
            raise StartupError(f"cannot listen on {self.description}: {result.getErrorMessage()}")
        self.port = result
        address = result.getHost()
        where = f"{getattr(address, 'host', '')}:{getattr(address, 'port', '')}"
        if not getattr(address, "port", None):
            where = str(getattr(address, "name", address))
        self.mux.listeners.append(f"{self.description} ({where})")
        log.info("portmux listening on {endpoint} ({address})",
                 endpoint=self.description, address=where)

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
        super().startService()  # type: ignore[no-untyped-call]

    def stopService(self) -> Any:
        super().stopService()  # type: ignore[no-untyped-call]
        port, self.port = self.port, None
        if port is None:
            return None
        self.mux.listeners[:] = [x for x in self.mux.listeners if not x.startswith(self.description + " (")]
        return maybeDeferred(port.stopListening)


def _label(endpoint: Any) -> str:
    """A display name for an endpoint object (an inherited socket: its descriptor)."""
    fileno = getattr(endpoint, "fileno", None)
    return f"inherited:fd={fileno}" if isinstance(fileno, int) else repr(endpoint)


def _header_networks(listener: Any) -> tuple[Any, ...]:
    """Networks whose peers must send a PROXY header (all, when none are listed)."""
    if not listener.proxy_protocol:
        return ()
    return tuple(listener.trusted) or parse_networks(["0.0.0.0/0", "::/0"])


def _control_with_endpoint(control: Any, endpoint: str) -> Any:
    """The [control] config with its endpoint replaced by the command line's."""
    import dataclasses

    from portmux.daemon.config import ControlConfig

    if control is None:
        return ControlConfig(endpoint=endpoint)
    return dataclasses.replace(control, endpoint=endpoint)
