"""A process group's /metrics numbers: summed per label, histograms bucket-wise, an ended member's totals kept.

Real Multiplexers and prometheus_client's own registry, encoder and parser; the
processes themselves are tests/daemon/test_group_metrics.py's.
"""

from __future__ import annotations

from typing import Any

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from portmux.core.mux import Multiplexer
from portmux.daemon.admin.metric_counts import metric_counts, summed
from portmux.daemon.admin.metrics import MetricsPage, registry_for
from portmux.daemon.group_metrics import GroupCounts, OwnCounts


def busy(accepted: int, sniff: float, sniffing: int = 0) -> Multiplexer:
    """A multiplexer whose listener ``main`` accepted ``accepted`` connections, all routed to ``web``."""
    mux = Multiplexer(reactor)
    listener = mux.stats.for_listener("main")
    listener.accepted = mux.stats.accepted = accepted
    listener.routed["web"] = accepted
    listener.refusals[("no_route", "")] = 1
    mux.stats.sniffing = sniffing
    for _ in range(accepted):
        mux.stats.sniff_seconds.observe(sniff)
    mux.stats.connected("tcp:127.0.0.1:1", 0.002)
    return mux


def parsed(mux: Multiplexer, view: dict[str, Any] | None) -> dict[str, list[Any]]:
    text = generate_latest(registry_for(mux, view)).decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def value(found: dict[str, list[Any]], family: str, sample: str, **labels: str) -> float:
    matching = [s.value for s in found[family]
                if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(matching) == 1, (sample, labels, found[family])
    return float(matching[0])


def test_counts_add_up_per_label_and_bucket_wise() -> None:
    fast, slow = metric_counts(busy(3, 0.0004)), metric_counts(busy(2, 0.3))
    total = summed([fast, slow])
    assert total["accepted"] == {"main": 5}
    assert total["connections"] == {"main": {"web": 5}}
    assert total["refusals"] == {"main": {"no_route": {"": 2}}}
    assert total["sniff_seconds"]["buckets"]["0.0005"] == 3
    assert total["sniff_seconds"]["buckets"]["0.5"] == 5
    assert total["sniff_seconds"]["buckets"]["+Inf"] == 5
    assert total["connect_seconds"]["tcp:127.0.0.1:1"]["buckets"]["+Inf"] == 2
    assert fast["accepted"] == {"main": 3}  # summing changes none of the parts


def test_the_group_view_keeps_an_ended_members_totals_but_not_its_gauges() -> None:
    parent = busy(1, 0.001)
    counts = GroupCounts(parent)
    first = counts.started(1)
    child = OwnCounts(busy(4, 0.001, sniffing=2))
    counts.reported(1, first, child.take())
    view = counts.view(2)
    assert view["counts"]["accepted"] == {"main": 5} and view["counts"]["sniffing"] == 2
    assert view["members"] == {"1": {"accepted": 1, "open": 0}, "2": {"accepted": 4, "open": 0}}

    older = {"seq": 0, "counts": metric_counts(busy(1, 0.001))}
    counts.reported(1, first, older)  # an older report (the other pipe) changes nothing
    assert counts.view(2)["counts"]["accepted"] == {"main": 5}

    counts.ended(1, first)
    ended = counts.view(1)
    assert ended["counts"]["accepted"] == {"main": 5}  # its totals stay: no counter goes back
    assert ended["counts"]["sniffing"] == 0  # its gauges left with it
    assert ended["members"]["2"] == {"accepted": 4}
    counts.reported(1, first, child.take())  # late news of the dead one: ignored
    assert counts.view(1)["counts"]["accepted"] == {"main": 5}

    second = counts.started(1)
    counts.reported(1, second, OwnCounts(busy(2, 0.001)).take())  # the replacement counts from 0 again
    again = counts.view(2)
    assert again["counts"]["accepted"] == {"main": 7}
    assert again["members"]["2"]["accepted"] == 6


def test_the_collector_renders_the_groups_sums_and_bounded_per_process_series() -> None:
    parent = busy(1, 0.001)
    counts = GroupCounts(parent)
    counts.reported(1, counts.started(1), OwnCounts(busy(4, 0.3)).take())
    found = parsed(parent, dict(counts.view(2), answering=1))
    assert value(found, "portmux_accepted_connections", "portmux_accepted_connections_total", listener="main") == 5
    assert value(found, "portmux_connections", "portmux_connections_total", route="web") == 5
    assert value(found, "portmux_sniff_seconds", "portmux_sniff_seconds_count") == 5
    assert value(found, "portmux_sniff_seconds", "portmux_sniff_seconds_bucket", le="0.001") == 1
    assert value(found, "portmux_sniff_seconds", "portmux_sniff_seconds_bucket", le="0.5") == 5
    assert value(found, "portmux_processes", "portmux_processes") == 2
    assert value(found, "portmux_group_answering_process", "portmux_group_answering_process") == 1
    members = [s for s in found["portmux_group_accepted_connections"] if s.name.endswith("_total")]
    assert {s.labels["process"]: s.value for s in members} == {"1": 1, "2": 4}
    alone = parsed(parent, None)  # one process: its own live counts, no group families
    assert value(alone, "portmux_accepted_connections", "portmux_accepted_connections_total", listener="main") == 1
    assert "portmux_processes" not in alone


def test_metrics_without_the_parents_answer_is_a_503_and_one_log_line() -> None:
    mux = Multiplexer(reactor)
    mux.shared("group-metrics", lambda _: []).append(lambda: defer.fail(TimeoutError("no answer in 5 s")))
    lines: list[str] = []
    observer = lambda event: lines.append(formatEvent(event))
    globalLogPublisher.addObserver(observer)
    try:
        request = DummyRequest([b""])
        request.site = type("Site", (), {"portmux_mux": mux})()  # type: ignore[attr-defined]
        assert MetricsPage().render_GET(request) is NOT_DONE_YET
    finally:
        globalLogPublisher.removeObserver(observer)
    assert request.responseCode == 503 and request.finished
    assert b"unavailable" in b"".join(request.written)
    assert [line for line in lines if "/metrics" in line] == ["/metrics: no group totals: no answer in 5 s"]
