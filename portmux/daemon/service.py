# -*- test-case-name: tests.daemon.test_daemon,tests.daemon.test_one_port -*-
"""Assembles the running daemon: listeners, the multiplexer, control; reload; stop."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from portmux.core.limits import Limits, Timeouts
from portmux.core.mux import Multiplexer
from portmux.core.routing import parse_networks
from portmux.daemon.endpoints import EndpointStringError, parse_server_endpoint, with_backlog

log = Logger(namespace="portmux")
DEFAULT_BACKLOG = 511


class PortmuxService(MultiService):
    """One Multiplexer shared by every configured listener, plus the control socket.

    ``load`` returns a fresh portmux.daemon.config.Config (or raises ConfigError); it is
    called again on SIGHUP to swap routes, listeners and the access log and to reload
    certificates. SIGTERM drains (see ``stopService``); SIGUSR1 reopens the access log.
    """

    def __init__(self, reactor: Any, load: Callable[[], Any], listen: list[str] | None = None,
                 control: str | None = None,
                 run_as: tuple[int | None, int | None] = (None, None),
                 processes: int | None = None, config_path: str | None = None,
                 adopt: list[Any] | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.reactor = reactor
        self._load = load
        self._listen_override = list(listen or [])
        self._control_override = control
        config = load()
        self.config = config
        self.mux = Multiplexer(
            reactor, config.routes, settings=config.sniff,
            limits=getattr(config, "limits", Limits()), timeouts=getattr(config, "timeouts", Timeouts()),
        )
        if self._listen_override:
            listeners = [(description, (), 0, DEFAULT_BACKLOG) for description in self._listen_override]
        else:
            listeners = [
                (listener.endpoint, _header_networks(listener), listener.max_connections, listener.backlog)
                for listener in config.listeners
            ]
        names: list[str | None] = [None] * len(listeners)
        if adopt is not None:  # a child of a process group: the parent's sockets, same order
            same = len(listeners) == len(adopt)
            # Named as the parent names them, so the group's counters add up per listener.
            names = [str(listeners[i][0]) if same and not self._listen_override else None
                     for i in range(len(adopt))]
            listeners = [
                (e, *(listeners[i][1:] if same else ((), 0, DEFAULT_BACKLOG)))
                for i, e in enumerate(adopt)
            ]
        self._adopted = adopt is not None
        self.listener_services: dict[str, ListenerService] = {}
        for (description, trusted, max_connections, backlog), name in zip(listeners, names, strict=True):
            self._add_listener(description, tuple(trusted), max_connections, backlog, name)
        self.group: Any = None
        count = processes if processes is not None else getattr(config, "processes", 1)
        if adopt is None and count > 1:
            from portmux.daemon.group import ProcessGroup

            self.group = ProcessGroup(reactor, count, list(self.listener_services.values()),
                                      config_path, plain=bool(self._listen_override),
                                      mux=self.mux)
            self.group.setServiceParent(self)
        self.access_log: Any = None
        self.drain: Any = None
        self.control: Any = None
        self.started_at = reactor.seconds()
        extras: list[Callable[[], dict[str, Any]]] = self.mux.shared("status-extras", lambda _: [])
        extras.append(self.status_extras)
        control_config = getattr(config, "control", None) if adopt is None else None
        if self._control_override and adopt is None:
            control_config = _control_with_endpoint(control_config, self._control_override)
        self.cluster: Any = None
        self._stored_routes: Any = None
        if getattr(config, "registry", None) is not None and adopt is None:
            from portmux.daemon.cluster import StoredRoutes, build_cluster

            self._stored_routes = StoredRoutes(self.mux, config)
            self.cluster = build_cluster(reactor, self.mux, config.registry, self._stored_routes)
            self.cluster.setServiceParent(self)
        if control_config is not None:
            from portmux.control._server import ControlService

            self.control = ControlService(
                reactor, self.mux, control_config, getattr(config, "reservations", ()),
                run_as=run_as, cluster=self.cluster,
            )
            self.control.setServiceParent(self)
        self._previous_signals: dict[int, Any] = {}

    def _add_listener(self, description: Any, trusted: tuple[Any, ...], max_connections: int = 0,
                      backlog: int = DEFAULT_BACKLOG, name: str | None = None) -> ListenerService:
        label = name or (description if isinstance(description, str) else _label(description))
        factory = self.mux.listener_factory(trusted, name=label,
                                            max_connections=max_connections)
        listener_service = ListenerService(self.reactor, description, self.mux, factory, backlog)
        self.listener_services[label] = listener_service
        listener_service.setServiceParent(self)  # type: ignore[no-untyped-call]
        return listener_service

    def _set_access_log(self, config: Any) -> None:
        """Open the configured access log (or none), replacing the current one."""
        from portmux.daemon.accesslog import AccessLog

        wanted = getattr(config, "access_log", None)
        current = self.access_log
        if current is not None and wanted is not None and (current.path, current.format_name) == (
            wanted.path, wanted.format
        ):
            return
        if wanted is not None:
            new = AccessLog(self.reactor, wanted.path, wanted.format)
            new.start()
            self.mux.stats.observers.append(new)
            self.access_log = new
        else:
            self.access_log = None
        if current is not None:
            self.mux.stats.observers.remove(current)
            current.stop()

    def status_extras(self) -> dict[str, Any]:
        """What only the daemon knows, for the status page: uptime, workers, draining."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            running_version = version("portmux")
        except PackageNotFoundError:
            running_version = "unknown"
        extras: dict[str, Any] = {
            "version": running_version,
            "started": self.started_at,
            "uptime": self.reactor.seconds() - self.started_at,
            "draining": self.drain is not None,
            "config": getattr(self.config, "filename", None),
        }
        if self.control is not None:
            extras["workers"] = self.control.factory.registry.describe()
        return extras

    def startService(self) -> None:
        for route in self.mux.router.routes:
            log.info(
                "route {name}: {match} -> {target}",
                name=route.name,
                match=route.match.describe(),
                target=getattr(route.target, "description", route.kind),
            )
        self._set_access_log(self.config)
        super().startService()  # type: ignore[no-untyped-call]
        from portmux._twisted import lean_dispatch
        from portmux.daemon._gc import freeze_startup_objects

        freeze_startup_objects()
        lean_dispatch(self.reactor)  # no log context wrapped around every event (performance.md)
        self._handle_reload_signals()
        from portmux.daemon.notify import sd_notify

        sd_notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=listening on "
                  + ", ".join(self.listener_services))

    def privilegedStartService(self) -> None:
        """Take SIGHUP and SIGUSR1 before any listener binds and logs "listening on".

        Their default disposition ends the process: a reload asked for as soon as the
        log shows a listener (or a client connects) must not kill the daemon.
        """
        self._handle_reload_signals()
        super().privilegedStartService()  # type: ignore[no-untyped-call]

    def _handle_reload_signals(self) -> None:
        """SIGHUP reloads, SIGUSR1 reopens the logs (idempotent: the first disposition is kept)."""
        self._on_signal(signal.SIGHUP, self.reload)
        self._on_signal(signal.SIGUSR1, self.reopen_logs)

    def _on_signal(self, signum: int, handler: Callable[[], Any]) -> None:
        """Run ``handler`` in the reactor on ``signum``; remember the old disposition once."""
        try:
            previous = signal.signal(signum, lambda *_: self.reactor.callFromThread(handler))
        except ValueError:  # not the main thread (embedded in tests)
            return
        self._previous_signals.setdefault(signum, previous)

    def restore_signals(self) -> None:
        """Give back every signal disposition this service replaced."""
        for signum, previous in self._previous_signals.items():
            if previous is not None:
                signal.signal(signum, previous)
        self._previous_signals.clear()

    def reopen_logs(self) -> None:
        """SIGUSR1: reopen the access log (logrotate)."""
        if self.access_log is not None:
            self.access_log.reopen()

    def stopService(self) -> Any:
        """Stop accepting and registering, let open connections finish (grace period), then stop.

        A second SIGTERM (or SIGINT) during the grace period closes what is left at once.
        """
        from portmux.daemon.drain import Drain
        from portmux.daemon.notify import sd_notify

        sd_notify("STOPPING=1")
        for listener in list(self.listener_services.values()):
            listener.stopService()
        grace = float(getattr(self.config, "grace_period", 30.0))
        if self.group is not None:
            self.group.stop_children(grace)  # they drain as we do
        if self.control is not None:
            self.control.factory.draining = True
        self.drain = Drain(self.reactor, self.mux, grace)
        self._on_signal(signal.SIGTERM, self.drain.now)
        self._on_signal(signal.SIGINT, self.drain.now)
        done = self.drain.start()
        done.addCallback(lambda _: self._stopped())
        return done

    def _stopped(self) -> Any:
        self.restore_signals()
        if self.access_log is not None:
            self.mux.stats.observers.remove(self.access_log)
            self.access_log.stop()
            self.access_log = None
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
        from portmux.daemon.notify import sd_notify

        sd_notify("RELOADING=1")
        if self.group is not None or self._adopted:
            if [x.endpoint for x in config.listeners] != [x.endpoint for x in self.config.listeners]:
                log.warn(  # noqa: G010
                    "reload: listeners changed; a process group applies that on restart only"
                )
        elif not self._listen_override:
            self._apply_listeners(config)
        if getattr(config, "registry", None) != getattr(self.config, "registry", None):
            log.warn("reload: [registry] changed in the config; restart portmux to apply it")  # noqa: G010
        self.config = config
        self._set_access_log(config)
        self.mux.settings = config.sniff
        self.mux.timeouts = config.timeouts
        self.mux.set_limits(config.limits)
        if self._stored_routes is not None:
            self._stored_routes.set_config(config)
        else:
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
        sd_notify("READY=1")
        return True

    def _apply_listeners(self, config: Any) -> None:
        """Stop listeners gone from the config, start new ones; the others are not touched."""
        wanted = {listener.endpoint: _header_networks(listener) for listener in config.listeners}
        limits = {listener.endpoint: (listener.max_connections, listener.backlog)
                  for listener in config.listeners}
        for description in [d for d in self.listener_services if d not in wanted]:
            listener = self.listener_services.pop(description)
            # Logged once the socket is closed (a port closes a reactor turn later), so the
            # line is true when read: a connect then is refused.
            stopped = maybeDeferred(listener.disownServiceParent)  # stops it
            stopped.addCallbacks(_stopped_listening, _stopping_failed,
                                 callbackArgs=(description,), errbackArgs=(description,))
        for description, trusted in wanted.items():
            current = self.listener_services.get(description)
            if current is not None:
                current.factory.trusted = tuple(trusted)  # type: ignore[union-attr]  # a named listener's factory
                continue
            try:
                self._add_listener(description, tuple(trusted), *limits[description])
            except StartupError as error:  # e.g. the port is taken: keep the others running
                self.listener_services.pop(description).disownServiceParent()  # type: ignore[no-untyped-call]
                log.error("reload: {error}", error=str(error))


def _stopped_listening(_: object, endpoint: str) -> None:
    """A reload's removed listener has closed its socket."""
    log.info("reload: stopped listening on {endpoint}", endpoint=endpoint)


def _stopping_failed(failure: Failure, endpoint: str) -> None:
    """A reload's removed listener failed to stop: logged, the reload goes on."""
    log.failure("reload: stopping {endpoint} failed", failure, endpoint=endpoint)


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
                 factory: Any = None, backlog: int = DEFAULT_BACKLOG) -> None:
        self.reactor = reactor
        # An endpoint object (a process group child's inherited socket) or a string to parse.
        self._endpoint = None if isinstance(description, str) else description
        self.description = description if isinstance(description, str) else _label(description)
        self.backlog = backlog
        self.mux = mux
        self.factory = factory if factory is not None else mux
        self.port: Any = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        if self.port is not None:
            return
        outcome: list[Any] = []
        try:
            endpoint = self._endpoint or parse_server_endpoint(
                self.reactor, with_backlog(self.description, self.backlog)
            )
            endpoint.listen(self.factory).addBoth(outcome.append)
        except (EndpointStringError, OSError) as error:
            raise StartupError(f"cannot listen on {self.description}: {error}") from None
        if not outcome:
            raise StartupError(f"{self.description}: the endpoint did not listen at once")
        result = outcome[0]
        if isinstance(result, Failure):
            raise StartupError(f"cannot listen on {self.description}: {result.getErrorMessage()}")
        self.port = result
        listening = getattr(self.factory, "listening", None)
        if listening is not None:
            listening(result)  # its connection gate pauses and resumes this port
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
