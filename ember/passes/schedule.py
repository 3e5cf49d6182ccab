"""Scheduling annotations.

``graph.meta["level"]`` holds each node's wavefront: the number of model calls on the
longest path from the inputs to it (first-wave calls are level 1; local ops before
any call are level 0 and left out of the table). Levels are for display: the backend
starts a node the moment its inputs are ready and never waits for a whole wave. So
the table (`Levels`) is worked out when something first reads it (``inspect``, the
graph's printout, ``ScheduleStats.levels``), not on every compile: jit never does.

``graph.meta["priority"]`` holds, for each model call, the longest estimated latency
(seconds) from its start to any output, its own latency included. When concurrency
is limited the backend starts the ready call with the highest priority first, which
is the critical-path-first list-scheduling rule.

Both are graph-level tables keyed by output var id, not per-node meta: the pass keeps
the node objects of its input (annotating each node would mean copying it, which
cost a third of the pass); `level_of` and `priority_of` read them.

``graph.meta["estimate"]`` holds the static `Estimate` (see ``estimate.py``) as a
`LazyEstimate`: its critical path is the highest priority, known already, and its
tokens, requests and cost are worked out when first read (``inspect``, the pass's
summary), not on every compile: jit reads only the critical path.
Structural passes drop it, so it always describes the graph it sits on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

from ..ir.graph import Graph, Node
from .dce import plural
from .estimate import Estimate, LazyEstimate, Latency, priorities
from .fuse import call_levels

__all__ = ["schedule", "ScheduleStats", "Levels", "level_of", "priority_of"]


class Levels(Mapping[int, int]):
    """var id -> wavefront (levels above 0) of a node list, computed on first read."""

    __slots__ = ("_nodes", "_table")

    def __init__(self, nodes: list[Node]) -> None:
        self._nodes = nodes
        self._table: dict[int, int] | None = None

    @property
    def table(self) -> dict[int, int]:
        table = self._table
        if table is None:  # (two threads may both compute it: the same table)
            table = self._table = {k: v for k, v in call_levels(self._nodes).items() if v}
        return table

    def __getitem__(self, key: int) -> int:
        return self.table[key]

    def __iter__(self) -> Iterator[int]:
        return iter(self.table)

    def __len__(self) -> int:
        return len(self.table)

    def __repr__(self) -> str:
        return f"Levels({self.table!r})"


def level_of(graph: Graph, node: Node) -> int | None:
    """A node's wavefront in a scheduled graph (None before `schedule` ran)."""
    levels = graph.meta.get("level")
    return None if levels is None else levels.get(node.out.id, 0)


def priority_of(graph: Graph, node: Node) -> float:
    """A model call's priority in a scheduled graph (0.0 for other nodes, and before
    `schedule` ran)."""
    return graph.meta.get("priority", {}).get(node.out.id, 0.0)


@dataclass(frozen=True)
class ScheduleStats:
    estimate: Estimate = Estimate()
    table: Mapping[int, int] = field(default_factory=dict, repr=False, compare=False)

    @property
    def levels(self) -> int:
        """Waves of model calls (the highest level)."""
        return max(self.table.values(), default=0)

    def counts(self, calls: int, completions: int) -> tuple[int, int]:
        """(model-call nodes, completions) after the pass: unchanged."""
        return calls, completions

    @property
    def summary(self) -> str:
        e = self.estimate
        return (f"schedule: {plural(self.levels, 'level')}, {plural(e.requests, 'request')}, "
                f"critical path {e.critical_path_seconds:.2f} s")

    def __str__(self) -> str:
        return self.summary


def schedule(graph: Graph, *, inputs: Sequence[Any] | None = None,
             latency: Latency = None) -> tuple[Graph, ScheduleStats]:
    """Attach levels, priorities and the estimate to the graph's meta."""
    priority, critical = priorities(graph.nodes, latency)
    est = LazyEstimate(graph, inputs, critical, latency is not None)
    nodes = list(graph.nodes)
    level = Levels(nodes)
    meta = dict(graph.meta)
    meta["estimate"], meta["level"], meta["priority"] = est, level, priority
    return (Graph(list(graph.inputs), nodes, list(graph.outputs), meta),
            ScheduleStats(est, level))
