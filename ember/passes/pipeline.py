"""Run passes in order and record what each one did.

``DEFAULT_PASSES = (dce, cse, fuse, schedule)``:

- dce first, so later passes never spend time (or fusion slots) on dead calls;
- cse before fuse, so duplicate deterministic calls are merged, not batched twice;
- fuse after both, on the calls that will really be sent;
- schedule last: levels, priorities and the estimate describe the final graph.

No second dce is needed: cse drops a merged node whose inputs its representative
still uses, and fusion only regroups live calls, so neither leaves dead nodes behind
(the property tests check this).

The cycle collector is paused while the passes run: they create no reference
cycles (memory is still freed by reference counting), and on graphs of 10,000 calls
its repeated full-heap scans otherwise cost as much as the passes themselves. On
resuming, what they made goes straight to the oldest generation (see
``ember.ir.collector``).

A pass's stats may have ``counts(calls, completions)``: the model calls and answers
after the pass from those before it, so the pipeline need not count them again
(``verify=True`` counts anyway and checks the two agree). For the default passes the
counts are not even worked out until a `PassResult`'s are read (``inspect`` prints
them; jit never reads them): see `_Counts`.

Options go to the passes that accept them by name, e.g.
``run_passes(g, batch=False, latency=0.5, inputs=[...])``; an option no pass takes
is an error.
"""

from __future__ import annotations

import inspect
import time
from typing import Any, Callable, Sequence

from ..ir.collector import pause, resume
from ..ir.graph import Graph, GraphError, check_graph
from .cse import cse
from .dce import count_calls, dce
from .fuse import fuse
from .schedule import schedule

__all__ = ["DEFAULT_PASSES", "PassResult", "run_passes", "Pass"]

Pass = Callable[..., "tuple[Graph, Any]"]
DEFAULT_PASSES: tuple[Pass, ...] = (dce, cse, fuse, schedule)


class PassResult:
    """What one pass did: its stats, nodes before and after, model calls (``llm`` and
    ``llm_batch`` nodes) and the answers they give before and after, and its time."""

    __slots__ = ("_done", "_counts", "_row")

    def __init__(self, name: str, stats: Any, nodes_before: int, nodes_after: int,
                 calls_before: int, calls_after: int, completions_before: int,
                 completions_after: int, seconds: float) -> None:
        self._done = (name, stats, nodes_before, nodes_after, seconds)
        self._counts: Any = (calls_before, calls_after, completions_before, completions_after)
        self._row = -1

    def _read(self) -> tuple[int, int, int, int]:
        return self._counts if self._row < 0 else self._counts.row(self._row)

    name = property(lambda self: self._done[0], doc="the pass's name")
    stats = property(lambda self: self._done[1], doc="what the pass reports")
    nodes_before = property(lambda self: self._done[2])
    nodes_after = property(lambda self: self._done[3])
    seconds = property(lambda self: self._done[4], doc="the pass's wall time")
    calls_before = property(lambda self: self._read()[0], doc="model-call nodes before")
    calls_after = property(lambda self: self._read()[1], doc="model-call nodes after")
    completions_before = property(lambda self: self._read()[2], doc="answers before")
    completions_after = property(lambda self: self._read()[3], doc="answers after")

    @property
    def summary(self) -> str:
        return getattr(self.stats, "summary", str(self.stats))

    def __str__(self) -> str:
        return (f"{self.summary}  [{self.nodes_before} -> {self.nodes_after} nodes, "
                f"{self.calls_before} -> {self.calls_after} llm calls, "
                f"{self.seconds * 1e3:.2f} ms]")

    def __repr__(self) -> str:
        return (f"PassResult(name={self.name!r}, stats={self.stats!r}, nodes_before="
                f"{self.nodes_before}, nodes_after={self.nodes_after}, calls_before="
                f"{self.calls_before}, calls_after={self.calls_after}, completions_before="
                f"{self.completions_before}, completions_after={self.completions_after}, "
                f"seconds={self.seconds!r})")


_new = object.__new__


class _Counts:
    """The default pipeline's model calls and answers around each pass, worked out when
    first read (inspect prints them; a jit compile never reads them, and counting
    cost as much as a small pass): counted on the final graph (held until then; jit
    keeps it anyway), then undone pass by pass. Each default pass's ``counts`` is a shift (after = before + counts(0, 0)),
    so undoing it is a subtraction."""

    __slots__ = ("_graph", "_stats", "_rows")

    def __init__(self, graph: Graph, stats: list[Any]) -> None:
        self._graph, self._stats = graph, stats
        self._rows: list[tuple[int, int, int, int]] | None = None

    def row(self, i: int) -> tuple[int, int, int, int]:
        rows = self._rows
        if rows is None:  # (two threads may both work them out: the same rows)
            calls, done = count_calls(self._graph)
            rows = []
            for stats in reversed(self._stats):
                shift_calls, shift_done = stats.counts(0, 0)
                rows.append((calls - shift_calls, calls, done - shift_done, done))
                calls, done = calls - shift_calls, done - shift_done
            rows.reverse()
            self._rows, self._graph = rows, None
        return rows[i]


_accepts: dict[Any, frozenset[str]] = {}


def _options_of(fn: Pass) -> frozenset[str]:
    names = _accepts.get(fn)
    if names is None:
        params = inspect.signature(fn).parameters.values()
        names = frozenset(p.name for p in params if p.kind is p.KEYWORD_ONLY)
        _accepts[fn] = names
    return names


def run_passes(graph: Graph, passes: Sequence[Pass] | None = None, *, verify: bool = False,
               **options: Any) -> tuple[Graph, list[PassResult]]:
    """Run ``passes`` (default `DEFAULT_PASSES`) in order; with ``verify=True`` check the
    graph after every pass. Returns the final graph and one `PassResult` per pass."""
    passes = DEFAULT_PASSES if passes is None else tuple(passes)
    if options:
        unused = set(options) - set().union(*(_options_of(p) for p in passes))
        if unused:
            raise TypeError(f"run_passes: no pass takes option(s) {', '.join(sorted(unused))}")
    if not verify and (passes is DEFAULT_PASSES or all(p in _SHIFTING for p in passes)):
        return _run_deferred(graph, passes, options)
    results: list[PassResult] = []
    nodes = len(graph.nodes)
    calls, done = count_calls(graph)
    pause()
    try:
        for p in passes:
            graph, stats, seconds = _apply(p, graph, options)
            n2 = len(graph.nodes)
            counts = getattr(stats, "counts", None)  # the pass knows what it changed
            if counts is None or verify:
                c2, d2 = count_calls(graph)
            else:
                c2, d2 = counts(calls, done)
            if verify:
                check_graph(graph)
                if counts is not None and counts(calls, done) != (c2, d2):
                    raise GraphError(f"{getattr(p, '__name__', p)}: its stats count "
                                     f"{counts(calls, done)} (calls, completions), the graph "
                                     f"has {(c2, d2)}")
            results.append(PassResult(getattr(p, "__name__", None) or repr(p), stats, nodes,
                                      n2, calls, c2, done, d2, seconds))
            nodes, calls, done = n2, c2, d2
    finally:
        resume()
    return graph, results


def _apply(p: Pass, graph: Graph, options: dict[str, Any]) -> tuple[Graph, Any, float]:
    """One pass, given the options it takes: (graph, stats, seconds)."""
    t0 = time.perf_counter()
    if options:
        graph, stats = p(graph, **{k: v for k, v in options.items() if k in _options_of(p)})
    else:
        graph, stats = p(graph)
    return graph, stats, time.perf_counter() - t0


_SHIFTING = frozenset(DEFAULT_PASSES)  # passes whose stats' counts are shifts (see _Counts)


def _run_deferred(graph: Graph, passes: tuple[Pass, ...], options: dict[str, Any]
                  ) -> tuple[Graph, list[PassResult]]:
    """`run_passes` for the default passes: their counts are worked out when read. (The
    timing of `_apply` inlined: on a small graph its calls were a fifth of this.)"""
    results: list[PassResult] = []
    stats_of: list[Any] = []
    nodes = len(graph.nodes)
    clock = time.perf_counter
    pause()
    try:
        for p in passes:
            if options:
                kwargs = {k: v for k, v in options.items() if k in _options_of(p)}
                t0 = clock()
                graph, stats = p(graph, **kwargs)
            else:
                t0 = clock()
                graph, stats = p(graph)
            seconds = clock() - t0
            n2 = len(graph.nodes)
            result = _new(PassResult)  # (three slots, no __init__: four of these a compile)
            result._done, result._row = (p.__name__, stats, nodes, n2, seconds), len(results)
            results.append(result)
            stats_of.append(stats)
            nodes = n2
    finally:
        resume()
    counts = _Counts(graph, stats_of)
    for result in results:
        result._counts = counts
    return graph, results
