# -*- test-case-name: tests.targets.test_health -*-
"""Active health checks of a proxy route's backends: TCP connect, or HTTP ``GET path``.

Each backend is checked every ``interval``; ``fall`` failures in a row mark it down
and ``rise`` successes mark it up again. The checker keeps its ProxyTarget's
``backends`` (the rotation round robin and failover use) to the ones that are up,
so the data path pays nothing; with none up the target refuses at once (503).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger(namespace="portmux")

__all__ = ["BackendState", "HealthCheck", "HealthChecker"]


@dataclass(frozen=True)
class HealthCheck:
    """How to check: every ``interval`` s, within ``timeout`` s; ``rise``/``fall`` in a row."""

    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    http_path: str | None = None
    """With a path, send ``GET path HTTP/1.0`` and expect ``http_status``; else connect only."""
    http_status: int = 200
    http_host: str = "localhost"


@dataclass
class BackendState:
    """One backend's health as last seen."""

    name: str
    up: bool = True
    successes: int = 0
    failures: int = 0
    last_check: float | None = None
    last_result: str = "not checked yet"
    checks: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "up": self.up,
            "last_check": self.last_check,
            "last_result": self.last_result,
            "checks": self.checks,
        }


class _HTTPProbe(Protocol):
    """Sends one GET and reads the status line of the answer."""

    def __init__(self, check: HealthCheck) -> None:
        self.check = check
        self.buffer = b""
        self.result: Deferred[str] = Deferred(self._give_up)

    def _give_up(self, _: Deferred[str]) -> None:
        """Timed out: close the check's connection."""
        transport: Any = self.transport
        if transport is not None:
            transport.loseConnection()

    def connectionMade(self) -> None:
        request = f"GET {self.check.http_path} HTTP/1.0\r\nHost: {self.check.http_host}\r\n"
        transport: Any = self.transport
        transport.write((request + "User-Agent: portmux-health\r\n\r\n").encode())

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if b"\n" not in self.buffer and len(self.buffer) < 1024:
            return
        line = self.buffer.split(b"\n", 1)[0].decode("latin-1").strip()
        parts = line.split()
        transport: Any = self.transport
        transport.loseConnection()
        if self.result.called:
            return
        if len(parts) >= 2 and parts[0].startswith("HTTP/") and parts[1] == str(self.check.http_status):
            self.result.callback(f"HTTP {parts[1]}")
        else:
            self.result.errback(Failure(ValueError(f"answered {line[:60]!r}")))

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.result.called:
            self.result.errback(Failure(ValueError("closed before a status line")))


class _OneCheck(Factory):
    """Hands the endpoint one check protocol, without a log line per check."""

    noisy = False

    def __init__(self, probe: Protocol) -> None:
        self.probe = probe

    def buildProtocol(self, addr: Any) -> Protocol:
        return self.probe


class HealthChecker:
    """Checks one ProxyTarget's backends and keeps its rotation to the healthy ones."""

    def __init__(self, reactor: Any, check: HealthCheck, label: str = "proxy") -> None:
        self.reactor = reactor
        self.check = check
        self.label = label
        self.states: dict[str, BackendState] = {}
        self._target: Any = None
        self._loop: LoopingCall | None = None
        self._running: dict[str, Deferred[Any]] = {}

    def start(self, target: Any) -> None:
        """Begin checking ``target``'s backends (all start up, as they were configured)."""
        self._target = target
        if target.reactor is None:
            target.bind(self.reactor)
        for backend in target.all_backends:
            self.states.setdefault(backend.name, BackendState(backend.name))
        self._loop = LoopingCall(self.check_all)
        self._loop.clock = self.reactor
        self._loop.start(self.check.interval, now=True)

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        for running in list(self._running.values()):
            running.cancel()

    def check_all(self) -> None:
        """Start one check per backend not already being checked."""
        for backend in self._target.all_backends:
            if backend.name not in self._running:
                self._check(backend)

    def _check(self, backend: Any) -> None:
        if self.check.http_path is not None:
            probe: Protocol = _HTTPProbe(self.check)
        else:
            probe = Protocol()
        connecting = backend.endpoint.connect(_OneCheck(probe))
        if isinstance(probe, _HTTPProbe):
            def answered(_: Any) -> Deferred[str]:
                return probe.result

            outcome: Deferred[Any] = connecting.addCallback(answered)
        else:
            def connected(protocol: Any) -> str:
                protocol.transport.loseConnection()
                return "connected"

            outcome = connecting.addCallback(connected)
        outcome.addTimeout(self.check.timeout, self.reactor)
        self._running[backend.name] = outcome
        outcome.addCallbacks(
            lambda result: self._record(backend.name, True, str(result)),
            lambda failure: self._record(backend.name, False, _why(failure)),
        )

    def _record(self, name: str, ok: bool, result: str) -> None:
        self._running.pop(name, None)
        state = self.states.get(name)
        if state is None or self._loop is None:
            return
        state.checks += 1
        state.last_check = self.reactor.seconds()
        state.last_result = result
        if ok:
            state.successes, state.failures = state.successes + 1, 0
            if not state.up and state.successes >= self.check.rise:
                state.up = True
                log.info("health: {label} backend {backend} is UP ({result})",
                         label=self.label, backend=name, result=result)
                self._apply()
        else:
            state.failures, state.successes = state.failures + 1, 0
            if state.up and state.failures >= self.check.fall:
                state.up = False
                log.warn("health: {label} backend {backend} is DOWN ({result})",  # noqa: G010
                         label=self.label, backend=name, result=result)
                self._apply()

    def _apply(self) -> None:
        """Put only the healthy backends in the target's rotation."""
        target = self._target
        target.backends = tuple(b for b in target.all_backends if self.states[b.name].up)
        if not target.backends:
            log.warn("health: {label}: every backend is down; refusing with 503",  # noqa: G010
                     label=self.label)

    def describe(self) -> list[dict[str, Any]]:
        """Each backend's state, JSON-ready."""
        return [state.as_dict() for state in self.states.values()]


def _why(failure: Failure) -> str:
    from twisted.internet.defer import CancelledError, TimeoutError

    if failure.check(TimeoutError, CancelledError):
        return "timed out"
    return failure.getErrorMessage() or type(failure.value).__name__
