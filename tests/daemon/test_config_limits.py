"""[limits], [timeouts], [[listen]] max_connections/backlog and a proxy route's timeouts."""

from __future__ import annotations

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import TestCase

from portmux.core.limits import Limits, Timeouts, automatic_max_connections
from portmux.daemon.config import ConfigError, default_config, parse_config
from portmux.daemon.endpoints import with_backlog

BASE = '[[listen]]\nendpoint = "tcp:0:interface=127.0.0.1"\n'
ROUTE = '[[route]]\nname = "p"\nmatch = {}\nproxy = { endpoints = ["tcp:127.0.0.1:1"], timeouts = { tunnel = 7, server_fin = 2 } }\n'


def parse(text: str):  # type: ignore[no-untyped-def]
    return parse_config(BASE + text, "test.toml", MemoryReactorClock())


def test_defaults() -> None:
    config = parse(ROUTE)
    assert config.timeouts == Timeouts()
    assert config.limits.max_connections == automatic_max_connections() > 0
    assert config.limits.max_per_source == 0
    listener = config.listeners[0]
    assert (listener.max_connections, listener.backlog) == (0, 511)
    assert default_config(MemoryReactorClock()).timeouts == Timeouts()


def test_tables_are_read() -> None:
    config = parse(
        "[limits]\nmax_connections = 100\nmax_per_source = 5\nnew_per_source_rate = 2.5\n"
        "source_prefix_v4 = 24\n[timeouts]\ntunnel = 0\nclient_idle = 9\nserver_fin = 1.5\n"
        + ROUTE
    )
    assert config.limits == Limits(100, 5, 2.5, 0, 24, 64)
    assert config.timeouts == Timeouts(client_idle=9.0, tunnel=0.0, server_fin=1.5)
    target = config.routes[0].target
    assert target.overrides == {"tunnel": 7.0, "server_fin": 2.0}
    assert target.timeouts_for(type("M", (), {"timeouts": config.timeouts})()) == Timeouts(
        client_idle=9.0, tunnel=7.0, server_fin=2.0
    )


def test_sniffing_keys() -> None:
    config = parse("[limits]\nmax_sniffing = 300\nevict_sniffing_after = 0.5\n" + ROUTE)
    assert (config.limits.max_sniffing, config.limits.evict_sniffing_after) == (300, 0.5)
    assert parse(ROUTE).limits.evict_sniffing_after == Limits().evict_sniffing_after > 0


def test_listener_keys() -> None:
    config = parse_config(
        '[[listen]]\nendpoint = "tcp:0"\nmax_connections = 10\nbacklog = 1024\n' + ROUTE,
        "t.toml", MemoryReactorClock(),
    )
    assert (config.listeners[0].max_connections, config.listeners[0].backlog) == (10, 1024)


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ("[limits]\nmax_per_source = -1\n", "limits.max_per_source", "must be 0 (off) or more"),
        ("[limits]\nmax_sniffing = -1\n", "limits.max_sniffing", "must be 0 (off) or more"),
        ("[limits]\nevict_sniffing_after = -0.5\n", "limits.evict_sniffing_after", "must be 0 (off) or more"),
        ("[limits]\nsource_prefix_v4 = 33\n", "limits.source_prefix_v4", "prefix length from 0 to 32"),
        ("[timeouts]\nconnect = 0\n", "timeouts.connect", "greater than 0"),
        ("[timeouts]\ntunnel = -3\n", "timeouts.tunnel", "must be 0 (off) or more"),
        ("[timeouts]\nnap = 3\n", "timeouts.nap", ""),
    ],
)
def test_bad_values_are_reported_at_their_key(text: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse(text + ROUTE)
    assert key in str(raised.value) and message in str(raised.value)


def test_bad_proxy_timeout_is_reported_at_its_key() -> None:
    with pytest.raises(ConfigError) as raised:
        parse('[[route]]\nname = "p"\nmatch = {}\nproxy = { endpoints = ["tcp:127.0.0.1:1"], timeouts = { server_fin = -1 } }\n')
    assert "route[0].proxy.timeouts.server_fin" in str(raised.value)


def test_backlog_is_added_to_endpoints_that_take_one() -> None:
    assert with_backlog("tcp:8080:interface=127.0.0.1", 511) == "tcp:8080:interface=127.0.0.1:backlog=511"
    assert with_backlog("unix:/run/p.sock", 7) == "unix:/run/p.sock:backlog=7"
    assert with_backlog("tcp:80:backlog=9", 511) == "tcp:80:backlog=9"
    assert with_backlog("systemd:domain=INET:index=0", 511) == "systemd:domain=INET:index=0"


class ServiceWiringTests(TestCase):
    """The daemon applies [[listen]] backlog/max_connections and [limits]/[timeouts]."""

    def test_listener_backlog_and_limits_reach_the_listening_socket(self) -> None:
        import shutil
        import subprocess

        from twisted.internet import reactor

        from portmux.daemon.service import PortmuxService

        if shutil.which("ss") is None:
            pytest.skip("ss (iproute2) is not installed")
        text = ('[[listen]]\nendpoint = "tcp:0:interface=127.0.0.1"\nbacklog = 77\nmax_connections = 3\n'
                "[limits]\nmax_connections = 40\n[timeouts]\ntunnel = 5\n" + ROUTE)
        service = PortmuxService(reactor, lambda: parse_config(text, "t.toml", reactor))
        service.privilegedStartService()
        self.addCleanup(service.restore_signals)
        import signal

        # SIGHUP's default ends the process: taken before a port is bound (and logged)
        assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, signal.SIG_IGN, None)
        listener = next(iter(service))
        self.addCleanup(listener.port.stopListening)
        port = listener.port.getHost().port
        out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True,
                             text=True, check=True).stdout.split()
        assert out[2] == "77"  # a listening socket's Send-Q is its backlog
        mux = service.mux
        assert mux.admission.limits.max_connections == 40
        assert mux.timeouts.tunnel == 5.0
        gate = mux.admission.gates[0]
        assert gate.max_connections == 3 and gate.ports == [listener.port]
