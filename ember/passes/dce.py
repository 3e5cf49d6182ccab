"""Dead-code elimination: drop every node that cannot reach an output.

Model calls are dropped like anything else (an unused call still costs money).
Effectful nodes (``ops.is_effectful``: an impure op, or ``effectful=True`` in a
``call``'s params) are kept with everything they need.

Also home of the small counting helpers the other passes share.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

from ..ir.graph import Graph, Node, Var
from ..ir.ops import OPS, is_effectful

__all__ = ["dce", "DceStats", "CALL_OPS", "completions", "count_calls", "plural",
           "carry_meta", "Interner"]

CALL_OPS = frozenset(name for name, d in OPS.items() if d.calls_model)  # model-call ops


class Interner:
    """Small ids for equal hashable values, found by identity first. A model call's
    params hold its `CallOptions`, whose hash runs in Python (~2 µs), and the tracer
    shares one params tuple among the calls of one ``models()`` line: a pass keys
    such values by id and hashes each distinct object once. Holds what it saw (so
    no id is reused while it lives); make one per pass run."""

    __slots__ = ("by_id", "_by_value")

    def __init__(self) -> None:
        # id -> (value, its key): what it saw, for callers that look up a hit without
        # a call (``by_id.get(id(v))``)
        self.by_id: dict[int, tuple[Any, int]] = {}
        self._by_value: dict[Any, int] = {}

    def __call__(self, value: Any) -> int:
        hit = self.by_id.get(id(value))
        if hit is not None:
            return hit[1]
        key = self._by_value.setdefault(value, len(self._by_value))
        self.by_id[id(value)] = (value, key)
        return key


def completions(node: Node) -> int:
    """Answers a model-call node produces: ``n`` for ``llm``, one per pair for ``llm_batch``."""
    if node.op == "llm":
        return node.param("n", 1)
    if node.op == "llm_batch":
        return len(node.inputs) // 2
    return 0


def count_calls(graph: Graph) -> tuple[int, int]:
    """(model-call nodes, completions) in a graph."""
    calls = done = 0
    call_ops = CALL_OPS
    n_of: dict[int, int] = {}  # id(params) -> n: the calls of a models() line share params
    for node in graph.nodes:
        op = node.op
        if op in call_ops:
            calls += 1
            if op == "llm":
                k = n_of.get(id(node.params))
                if k is None:
                    k = n_of[id(node.params)] = node.param("n", 1)
                done += k
            else:
                done += completions(node)
    return calls, done


_ANALYSES = frozenset({"estimate", "level", "priority"})  # schedule's, of one shape


def carry_meta(graph: Graph) -> dict:
    """Graph meta for a rewritten graph: analyses of the old shape (schedule's) dropped."""
    meta = graph.meta
    if _ANALYSES.isdisjoint(meta):  # (the usual case: schedule runs last)
        return dict(meta)
    return {k: v for k, v in meta.items() if k not in _ANALYSES}


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@dataclass(frozen=True)
class DceStats:
    removed_nodes: int = 0
    removed_calls: int = 0  # model-call nodes among them
    kept_effectful: int = 0  # nodes kept only because they are effectful
    removed_completions: int = 0  # answers those calls would have produced

    def counts(self, calls: int, completions: int) -> tuple[int, int]:
        """(model-call nodes, completions) after the pass, from those before it."""
        return calls - self.removed_calls, completions - self.removed_completions

    @property
    def summary(self) -> str:
        if not self.removed_nodes:
            return "dce: nothing removed"
        return (f"dce: removed {plural(self.removed_calls, 'llm call')}, "
                f"{plural(self.removed_nodes, 'node')}")

    def __str__(self) -> str:
        return self.summary


_ID = operator.attrgetter("id")


def dce(graph: Graph) -> tuple[Graph, DceStats]:
    """Keep the nodes that outputs or effectful nodes (transitively) need, and the
    values the traced Python read (``meta["read"]``: jit's check run reads them again,
    so a call whose answer's text was read is not dead even if no output needs it)."""
    live: set[int] = {a.id for a in graph.outputs if isinstance(a, Var)}
    for read in graph.meta.get("read", ()):
        live.update(map(_ID, read))
    keep: list[Node] = []
    removed = calls = done = effectful_only = 0
    gone: list[int] = []  # ids of removed nodes' outputs, for inspect's pictures
    for node in reversed(graph.nodes):  # one backward sweep: users come after producers
        if node.out.id in live:
            pass
        elif is_effectful(node):
            effectful_only += 1
        else:
            removed += 1
            if node.op in CALL_OPS:
                calls += 1
                done += completions(node)
            gone.append(node.out.id)
            continue
        keep.append(node)
        for a in node.inputs:
            live.add(a.id)  # (a literal adds None: no node's id)
    if not removed:
        out = Graph(list(graph.inputs), list(graph.nodes), list(graph.outputs), dict(graph.meta))
    else:
        keep.reverse()
        meta = carry_meta(graph)
        meta["removed"] = (*meta.get("removed", ()), *gone)
        out = Graph(list(graph.inputs), keep, list(graph.outputs), meta)
    return out, DceStats(removed, calls, effectful_only, done)
