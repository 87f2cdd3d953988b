"""Per-connection accounting from TCP_INFO on real loopback sockets; reason names; histograms."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator

import pytest

from portmux.core import refusal
from portmux.core.accounting import tcp_totals
from portmux.core.preamble import Preamble
from portmux.core.stats import Histogram

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP_INFO byte counters are Linux's")


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        with client, accepted:
            yield client, accepted


@linux
def test_bytes_each_way_and_the_client_closing_first(pair: tuple[socket.socket, socket.socket]) -> None:
    client, ours = pair
    client.sendall(b"x" * 1000)
    assert len(ours.recv(4096)) == 1000
    ours.sendall(b"y" * 300)
    assert len(client.recv(4096)) == 300
    client.close()
    time.sleep(0.05)
    totals = tcp_totals(ours)
    assert totals is not None
    assert (totals.bytes_in, totals.bytes_out) == (1000, 300)  # the FIN is not a byte
    assert totals.ended_by() == "client"


@linux
def test_our_fin_first_and_unsent_bytes_count_as_sent(pair: tuple[socket.socket, socket.socket]) -> None:
    _client, ours = pair
    ours.shutdown(socket.SHUT_WR)
    time.sleep(0.05)
    totals = tcp_totals(ours)
    assert totals is not None and totals.ended_by() == "server"
    assert tcp_totals(socket.socket(socket.AF_UNIX)) is None  # not TCP: no figures, no error


@linux
def test_a_client_closing_with_unread_bytes_resets(pair: tuple[socket.socket, socket.socket]) -> None:
    client, ours = pair
    ours.sendall(b"unread")
    time.sleep(0.05)
    client.close()  # unread data: the kernel sends RST instead of FIN
    time.sleep(0.05)
    totals = tcp_totals(ours)
    assert totals is not None and totals.ended_by() == "reset" and totals.bytes_out == 6


def test_reason_names_are_protocol_neutral() -> None:
    assert refusal.reason_name(refusal.NOT_FOUND, Preamble(protocol="http")) == "no_route"
    assert refusal.reason_name(refusal.NOT_FOUND, Preamble(protocol="tls", sni="a.test")) == "unknown_sni"
    assert refusal.reason_name(refusal.NOT_FOUND, Preamble(protocol="tcpmux", service="x")) == "unknown_service"
    assert refusal.reason_name(refusal.NOT_FOUND, Preamble(protocol="nmf", via="net.tcp://h/x")) == "unknown_service"
    assert refusal.reason_name(refusal.TIMEOUT) == "preamble_timeout"
    assert refusal.reason_name(refusal.TOO_LARGE) == "preamble_too_large"
    assert refusal.reason_name(refusal.BAD_GATEWAY) == "backend_unreachable"


def test_histogram_is_cumulative() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        histogram.observe(value)
    assert histogram.cumulative() == [(0.1, 2), (1.0, 3), (float("inf"), 4)]
    assert histogram.sum == pytest.approx(3.65)
