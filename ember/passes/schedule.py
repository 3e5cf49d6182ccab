"""Scheduling annotations.

Every node gets ``meta["level"]``: its wavefront, the number of model calls on the
longest path from the inputs to it (first-wave calls are level 1; local ops before
any call are level 0). Levels are for display: the backend starts a node the moment
its inputs are ready and never waits for a whole wave.

Every node gets ``meta["priority"]``: the longest estimated latency (seconds) from
the start of this node to any output, its own latency included. When concurrency is
limited the backend starts the ready node with the highest priority first, which
is the critical-path-first list-scheduling rule.

``graph.meta["estimate"]`` holds the static `Estimate` (see ``estimate.py``).
Structural passes drop it, so it always describes the graph it sits on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..ir.graph import Graph, Node, Var
from .dce import plural
from .estimate import Estimate, Latency, analyze

__all__ = ["schedule", "ScheduleStats"]


@dataclass(frozen=True)
class ScheduleStats:
    levels: int = 0  # waves of model calls
    estimate: Estimate = Estimate()

    @property
    def summary(self) -> str:
        e = self.estimate
        return (f"schedule: {plural(self.levels, 'level')}, {plural(e.requests, 'request')}, "
                f"critical path {e.critical_path_seconds:.2f} s")

    def __str__(self) -> str:
        return self.summary


def schedule(graph: Graph, *, inputs: Sequence[Any] | None = None,
             latency: Latency = None) -> tuple[Graph, ScheduleStats]:
    """Annotate level and priority on new copies of every node; attach the estimate."""
    est, lat, level = analyze(graph, inputs=inputs, latency=latency)
    new: list[Node] = []
    tail: dict[int, float] = {}  # var id -> longest latency from its users to an output
    get = tail.get
    trusted = Node.trusted
    # backward: users before producers
    for node, seconds, lv in zip(reversed(graph.nodes), reversed(lat), reversed(level)):
        p = seconds + get(node.out.id, 0.0)
        for a in node.inputs:
            if isinstance(a, Var) and get(a.id, -1.0) < p:
                tail[a.id] = p
        meta = {**node.meta, "level": lv, "priority": p} if node.meta else \
            {"level": lv, "priority": p}
        new.append(trusted(node.op, node.inputs, node.params, node.out, node.loc, meta))
    new.reverse()
    graph_meta = dict(graph.meta)
    graph_meta["estimate"] = est
    return (Graph(list(graph.inputs), new, list(graph.outputs), graph_meta),
            ScheduleStats(max(level, default=0), est))
