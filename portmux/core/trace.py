# -*- test-case-name: tests.core.test_trace -*-
"""Why a connection went where it went: each probe's verdict, each route's answer, the choice.

``portmux explain`` prints it for bytes given on the command line; for a live
connection from a network listed in ``[sniff] trace`` the multiplexer logs the same
text at debug level when it routes the connection (``log_trace``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from twisted.logger import Logger

from portmux.core import refusal
from portmux.core.interfaces import IProbe
from portmux.core.preamble import NEED_MORE, NO, Preamble, ProbeResult
from portmux.core.routing import Route, Router
from portmux.protocols import refusal_bytes

__all__ = ["RouteAnswer", "Trace", "classify", "describe_preamble", "explain", "log_trace"]

log = Logger(namespace="portmux.trace")
UNKNOWN = Preamble(protocol="unknown")
_HIDDEN = {"protocol", "consumed"}


@dataclass(frozen=True)
class RouteAnswer:
    """One route's answer to the preamble: ``failed`` is the first rejecting key, or None."""

    route: Route
    failed: str | None
    note: str = ""

    def text(self, preamble: Preamble, ip: str) -> str:
        """``yes``, ``no: KEY (wants …, has …)`` or the note of a silent/default route."""
        if self.note:
            return self.note
        if self.failed is None:
            return "yes"
        wanted = self.route.match.to_keys()[self.failed]
        if isinstance(wanted, list):
            wanted = ",".join(wanted)
        has = ip or "no IP" if self.failed == "network" else getattr(preamble, self.failed)
        if isinstance(has, tuple):
            has = ",".join(has) or "none"
        return f"no: {self.failed} (wants {wanted}, has {'none' if has is None else has})"


@dataclass(frozen=True)
class Trace:
    """The whole decision for ``data`` from ``ip``."""

    data: bytes
    ip: str
    verdicts: tuple[tuple[str, ProbeResult], ...]
    preamble: Preamble | None
    """What classification found; None when probes still wanted more bytes."""
    answers: tuple[RouteAnswer, ...]
    chosen: Route | None
    why: str

    def lines(self) -> list[str]:
        """The trace as text lines (what ``portmux explain`` prints)."""
        out = [f"bytes: {len(self.data)} from {self.ip or 'an address without IP'}", "probes:"]
        width = max((len(name) for name, _ in self.verdicts), default=4)
        for index, (name, verdict) in enumerate(self.verdicts, 1):
            out.append(f"  {index:2} {name:<{width}}  {_verdict(verdict)}")
        preamble = self.preamble
        if preamble is None:
            out.append("preamble: none yet (a live connection waits for more bytes, then is refused)")
            return out
        out.append(f"preamble: {describe_preamble(preamble)}")
        out.append("routes:")
        width = max((len(a.route.name) for a in self.answers), default=4)
        for index, answer in enumerate(self.answers, 1):
            out.append(f"  {index:2} {answer.route.name:<{width}}  {answer.text(preamble, self.ip)}")
        if self.chosen is None:
            out.append(f"chosen: none: {self.why}")
        else:
            description = getattr(self.chosen.target, "description", self.chosen.kind)
            out.append(f"chosen: {self.chosen.name} -> {description} ({self.why})")
        return out


def _verdict(verdict: ProbeResult) -> str:
    if verdict is NO:
        return "NO"
    if verdict is NEED_MORE:
        return "NEED_MORE"
    return "match" if isinstance(verdict, Preamble) else repr(verdict)


def describe_preamble(preamble: Preamble) -> str:
    """``nmf via=net.tcp://… mode=duplex``: the protocol, then every field that is set."""
    parts = [preamble.protocol]
    for name, value in preamble._asdict().items():
        if name in _HIDDEN or value in (None, (), False):
            continue
        parts.append(f"{name}={','.join(value) if isinstance(value, tuple) else value}")
    return " ".join(parts)


def classify(probes: Sequence[IProbe], data: bytes) -> tuple[tuple[tuple[str, ProbeResult], ...], Preamble | None]:
    """Every probe's verdict on ``data`` taken as complete, and the preamble the multiplexer takes.

    As at the end of a connection's preamble: the first match in probe order wins;
    no match and no probe wanting more bytes is ``unknown``.
    """
    verdicts: tuple[tuple[str, ProbeResult], ...] = tuple(
        (str(probe.name), cast(ProbeResult, probe.probe(data)))
        for probe in probes
    )
    matches = [v for _, v in verdicts if isinstance(v, Preamble)]
    if matches:
        return verdicts, matches[0]
    if any(v is NEED_MORE for _, v in verdicts) and data:
        return verdicts, None
    return verdicts, UNKNOWN


def _answer(route: Route, preamble: Preamble, ip: str) -> RouteAnswer:
    match = route.match
    if preamble.error is not None:
        return RouteAnswer(route, "protocol", f"no: the preamble is refused ({preamble.error})")
    if match.silent:
        return RouteAnswer(route, None, "silent: only for connections that send nothing")
    if match.default:
        if not match.accepts_peer(ip):
            return RouteAnswer(route, "network", f"no: network (default route; has {ip or 'no IP'})")
        return RouteAnswer(route, None, "default: only when no other route matches")
    return RouteAnswer(route, match.explain(preamble, ip))


def _why_chosen(route: Route, answers: Sequence[RouteAnswer], preamble: Preamble) -> str:
    if route.match.default:
        return "no other route matched; the first default admitting the peer"
    first = next((a.route for a in answers if a.failed is None and not a.note), None)
    if route.match.via is not None and preamble.via is not None:
        return "the Via index: strong, exact, weak host, then the longest path prefix"
    if route.match.service is not None and preamble.service is not None and route is not first:
        return "the newest accepting version of the service"
    return "the first accepting route in order"


def explain(probes: Sequence[IProbe], router: Router, data: bytes, ip: str = "",
            preamble: Preamble | None = None) -> Trace:
    """The trace for ``data`` from ``ip``; ``preamble`` (live connections) overrides classification."""
    verdicts, found = classify(probes, data)
    if preamble is None:
        preamble = found
    if preamble is None:
        return Trace(data, ip, verdicts, None, (), None, "preamble incomplete")
    answers = tuple(_answer(route, preamble, ip) for route in router.routes)
    chosen = router.select(preamble, ip)
    if chosen is None:
        reason = router.refusal_reason(preamble)
        status = refusal.NOT_FOUND if preamble.error is None else refusal.BAD_REQUEST
        answer = refusal_bytes(preamble, status, reason)
        why = f"{reason}; refused with {answer!r} and a close" if answer else f"{reason}; refused with a close"
        return Trace(data, ip, verdicts, preamble, answers, None, why)
    return Trace(data, ip, verdicts, preamble, answers, chosen, _why_chosen(chosen, answers, preamble))


def log_trace(probes: Sequence[IProbe], router: Router, data: bytes, ip: str, peer: str,
              preamble: Preamble) -> None:
    """Log the trace of a live connection at debug level (one event, one line per step)."""
    trace = explain(probes, router, data, ip, preamble)
    log.debug("why this route for {peer}:\n{trace}", peer=peer, trace="\n".join(trace.lines()))
