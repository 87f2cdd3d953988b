# -*- test-case-name: tests.daemon.test_group_metrics -*-
"""A process group's ``/metrics`` totals, kept by the parent so they never go backwards.

Every child sends its own numbers (``metric_counts``, numbered by a sequence) with
its counter report each second, and with each ``/metrics`` question it asks the
parent over the group channel.  The parent keeps each child's newest numbers, adds
an ended child's last totals (its gauges dropped) to its slot for good, and answers
every question from that one place: its own live numbers plus the children's.  So
whichever process is scraped, each total is at least what any earlier scrape saw.
"""

from __future__ import annotations

import copy
from typing import Any

from portmux.core.stats import add_into
from portmux.daemon.admin.metric_counts import metric_counts, retired, summed

__all__ = ["GroupCounts", "OwnCounts", "ended_status"]


class OwnCounts:
    """This process's numbers, each taking numbered one higher than the last."""

    def __init__(self, mux: Any) -> None:
        self.mux = mux
        self.seq = 0

    def take(self) -> dict[str, Any]:
        self.seq += 1
        return {"seq": self.seq, "counts": metric_counts(self.mux)}


class GroupCounts:
    """The parent's record: each running child's newest numbers and every ended child's totals, by slot."""

    def __init__(self, mux: Any) -> None:
        self.mux = mux
        self._generation: dict[int, int] = {}  # slot → which spawn of it is current
        self._latest: dict[int, tuple[int, dict[str, Any]]] = {}  # slot → (seq, counts)
        self._retired: dict[int, dict[str, Any]] = {}  # slot → its ended children's totals, added up

    def started(self, slot: int) -> int:
        """A child was spawned in ``slot``: the generation its reports must carry."""
        generation = self._generation[slot] = self._generation.get(slot, 0) + 1
        return generation

    def reported(self, slot: int, generation: int, report: Any) -> None:
        """Keep ``report`` (``OwnCounts.take()``) if it is the current child's newest; ignore the rest."""
        if generation != self._generation.get(slot) or not isinstance(report, dict):
            return
        seq, counts = report.get("seq"), report.get("counts")
        if not isinstance(seq, int) or not isinstance(counts, dict):
            return
        known = self._latest.get(slot)
        if known is None or seq > known[0]:
            self._latest[slot] = (seq, counts)

    def ended(self, slot: int, generation: int) -> None:
        """The child of ``generation`` exited: its totals stay in the slot, its gauges leave."""
        if generation != self._generation.get(slot):
            return
        self._generation[slot] = generation + 1  # nothing it sent late is taken any more
        entry = self._latest.pop(slot, None)
        if entry is not None:
            add_into(self._retired.setdefault(slot, {}), retired(entry[1]))

    def view(self, running: int) -> dict[str, Any]:
        """The group's sums, each member's ``process`` numbers (by process number) and ``running`` members."""
        own = metric_counts(self.mux)
        parts, members = [own], {"1": own["process"]}
        for slot in sorted({*self._latest, *self._retired}):
            latest = self._latest.get(slot)
            part = summed([self._retired.get(slot, {}), latest[1] if latest else {}])
            parts.append(part)
            members[str(slot + 1)] = part.get("process", {})
        return {"counts": summed(parts), "members": members, "processes": running}


def ended_status(snapshot: dict[str, Any]) -> dict[str, Any]:
    """A status-page snapshot (``Stats.snapshot(local=True)``) of an ended process: its totals only
    (nothing is being sniffed or open there any more)."""
    kept = copy.deepcopy(snapshot)
    kept.pop("sniffing", None)
    for route in kept.get("routes", {}).values():
        if isinstance(route, dict):
            route.pop("active", None)
    return kept
