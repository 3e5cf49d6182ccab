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
(``verify=True`` counts anyway and checks the two agree).

Options go to the passes that accept them by name, e.g.
``run_passes(g, batch=False, latency=0.5, inputs=[...])``; an option no pass takes
is an error.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
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


@dataclass(slots=True)  # not frozen: a frozen init costs ~2 µs, on every compile
class PassResult:
    name: str
    stats: Any
    nodes_before: int
    nodes_after: int
    calls_before: int  # model-call nodes
    calls_after: int
    completions_before: int
    completions_after: int
    seconds: float

    @property
    def summary(self) -> str:
        return getattr(self.stats, "summary", str(self.stats))

    def __str__(self) -> str:
        return (f"{self.summary}  [{self.nodes_before} -> {self.nodes_after} nodes, "
                f"{self.calls_before} -> {self.calls_after} llm calls, "
                f"{self.seconds * 1e3:.2f} ms]")


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
    results: list[PassResult] = []
    nodes = len(graph.nodes)
    calls, done = count_calls(graph)
    pause()
    clock = time.perf_counter
    try:
        for p in passes:
            t0 = clock()
            if options:
                graph, stats = p(graph, **{k: v for k, v in options.items()
                                           if k in _options_of(p)})
            else:
                graph, stats = p(graph)
            seconds = clock() - t0
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
