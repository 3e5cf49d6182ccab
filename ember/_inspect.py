"""`ember.inspect(fn, *example_args)`: the graph before and after the passes.

Nothing is sent: the function is traced on the example arguments; a graph break that
needs a model's answer ends the trace there and is listed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Callable

from ._jit import Jitted, trace_inputs
from .ir.graph import Graph
from .ir.printing import format_graph, pass_effects, to_dot, to_mermaid
from .ir.locations import exception_site
from .ir.trace import Break, StopTrace, Suspend, TraceState, tracing

__all__ = ["inspect", "InspectReport", "trace_graph"]


@dataclass
class InspectReport:
    name: str
    before: Graph
    graph: Graph  # after the passes
    passes: list = field(default_factory=list)
    breaks: list = field(default_factory=list)
    complete: bool = True  # False when a graph break stopped the trace
    note: str | None = None
    batched: Graph | None = None  # vmap: the batched graph of the whole map
    map_estimate: Any = None  # vmap: the static estimate of the whole map
    # the trace read values that steered it (an ember.cache hit, a known answer): the
    # graph holds for these arguments only, so a map plans every element on its own
    guarded: bool = False

    @property
    def estimate(self) -> Any:
        return self.graph.meta.get("estimate")

    def effects(self) -> dict[int, tuple[str, str]]:
        """What the passes did to each traced node: var id -> (kind, note)."""
        return pass_effects(self.before, self.graph)

    def dot(self, view: str = "passes") -> str:
        """Graphviz DOT. ``view="passes"`` (default): the traced graph with the nodes the
        passes removed, merged or fused marked; ``"optimized"``: the graph that runs;
        ``"traced"``: the graph before the passes, unmarked."""
        graph, effects = self._view(view)
        return to_dot(graph, self.name, effects)

    def mermaid(self, view: str = "passes") -> str:
        """Mermaid flowchart text; ``view`` as for `dot`."""
        graph, effects = self._view(view)
        return to_mermaid(graph, effects)

    def _view(self, view: str) -> tuple[Graph, dict | None]:
        if view == "passes":
            return self.before, self.effects()
        if view in ("optimized", "traced"):
            return (self.graph if view == "optimized" else self.before), None
        raise ValueError(f"view must be 'passes', 'optimized' or 'traced', not {view!r}")

    def svg(self, view: str = "passes") -> bytes:
        """The graph drawn by Graphviz (``dot`` must be installed); ``view`` as for `dot`."""
        import shutil
        import subprocess

        exe = shutil.which("dot")
        if exe is None:
            raise RuntimeError("Graphviz is not installed (no `dot` on PATH); use .mermaid() "
                               "or .dot() instead, or install graphviz.")
        return subprocess.run([exe, "-Tsvg"], input=self.dot(view).encode(), check=True,
                              capture_output=True).stdout

    def __str__(self) -> str:
        lines = [f"ember.inspect: {self.name}", "", "traced graph:", format_graph(self.before), ""]
        if self.passes:
            lines.append("passes:")
            for p in self.passes:
                lines.append(f"  {p}")
            lines.append("")
        lines += ["optimized graph:", format_graph(self.graph), ""]
        if self.batched is not None:
            lines += ["batched graph (vmap):", format_graph(self.batched),
                      str(self.batched.meta["vmap"]), ""]
        elif self.map_estimate is not None:  # (guarded: nothing hoisted)
            lines += ["vmap: the trace read values that steered it (an ember.cache hit, a "
                      "known answer): every element plans its own graph, nothing is made "
                      "once for all", ""]
        if self.breaks:
            lines.append("graph breaks:")
            for b in self.breaks:
                state = "value known" if b.known else "needs a model answer"
                lines.append(f"  {b.loc or '?'}: {b.reason} ({state})")
            lines.append("")
        if not self.complete:
            lines.append("the trace stopped at the first break that needs a model answer; "
                         "jit runs what comes before it, then traces on.")
        if self.note:
            lines.append(self.note)
        if self.map_estimate is not None:
            lines += ["estimate (one element):", _indent(str(self.estimate)),
                      "estimate (the whole map):", _indent(str(self.map_estimate))]
        elif self.estimate is not None:
            lines += ["estimate:" if self.complete else "estimate (only the calls traced "
                      "before the break: what follows it is not counted):",
                      _indent(str(self.estimate))]
        return "\n".join(lines).rstrip() + "\n"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # IPython
        p.text(str(self))


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


# results that are surely not coroutines (the ABC check for one costs ~2 µs per trace)
_PLAIN_RESULTS = frozenset({list, tuple, dict, str, type(None)})


def trace_graph(fn: Callable, args: tuple, kwargs: dict) -> tuple[Graph, TraceState, bool, str | None]:
    """Trace without running anything. Returns (graph, state, complete, note)."""
    if isinstance(fn, Jitted):
        fn = fn.fn
    state = TraceState()
    leaves: list[Any] = []
    targs, tkwargs = trace_inputs((args, kwargs), state, leaves)
    complete, note, result = True, None, None
    with tracing(state):  # (the outputs' format nodes are made in it too)
        try:
            result = fn(*targs, **tkwargs)
            if result.__class__ not in _PLAIN_RESULTS and asyncio.iscoroutine(result):
                result = _run_coroutine(result)
        except Suspend:
            complete = False
        except StopTrace as exc:
            complete, note = False, f"tracing stopped: {exc}"
        except Exception as exc:
            waiting = any(n.op == "llm" for n in state.nodes)
            then = ("runs the calls recorded before it, then traces on with their answers"
                    if waiting else "runs such code on real values")
            complete, note = False, f"tracing stopped: {type(exc).__name__}: {exc} (jit {then})"
            if waiting:  # (a break, as jit counts it: listed with the others)
                state.breaks.append(Break(exception_site(exc), f"{type(exc).__name__} on an "
                                          f"unfinished answer: {exc}", False))
        graph = state.graph(result)
    if not complete:
        graph.outputs = [n.out for n in graph.nodes if n.op == "llm"]
    return graph, state, complete, note


def _run_coroutine(coro: Any) -> Any:
    """Run a traced ``async def`` to its end (its model calls are recorded, not sent):
    here, or, when this thread runs an event loop (Jupyter, a web handler), in a
    thread of its own, carrying the trace's context."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures
    import contextvars

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(contextvars.copy_context().run, asyncio.run, coro).result()


def inspect(fn: Callable, *example_args: Any, **example_kwargs: Any) -> InspectReport:
    """Trace ``fn`` on example arguments and show the graph before/after the passes,
    the graph breaks and a static estimate (requests, tokens, cost, critical path)."""
    from ._vmap import Mapped
    from .passes import run_passes

    if isinstance(fn, Mapped):
        return _inspect_map(fn, example_args, example_kwargs)
    _check_arguments(fn, example_args, example_kwargs)
    graph, state, complete, note = trace_graph(fn, example_args, example_kwargs)
    optimized, passes = run_passes(graph, verify=True, inputs=state_inputs(state))
    name = getattr(getattr(fn, "fn", fn), "__qualname__", repr(fn))
    return InspectReport(name, graph, optimized, passes, list(state.breaks), complete, note,
                         guarded=state.guarded)


def _check_arguments(fn: Callable, args: tuple, kwargs: dict) -> None:
    """Example arguments that do not fit the function are the caller's mistake, not a
    graph break: a TypeError naming the signature."""
    import inspect as pyinspect
    import types

    if isinstance(fn, types.MethodType):  # (a jitted method, bound: self comes first)
        fn, args = fn.__func__, (fn.__self__, *args)
    target = getattr(fn, "fn", fn)
    try:
        signature = pyinspect.signature(target)
    except (TypeError, ValueError):  # a builtin or C callable: nothing to check
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        name = getattr(target, "__qualname__", repr(target))
        raise TypeError(f"inspect: the example arguments do not fit {name}{signature}: "
                        f"{exc}") from None


def _inspect_map(mapped: Any, args: tuple, kwargs: dict) -> InspectReport:
    """``inspect(vmap(f), xs)``: the first element's graphs, then the batched graph and
    the whole map's estimate (what is hoisted is counted once)."""
    from ._vmap import _axes, _leaf_mask, _split
    from .passes.vmap import batch_graph, check_batched, map_estimate, split_hoistable

    elements = _split(args, mapped.in_axes, mapped.name)
    if not elements:
        raise ValueError(f"inspect(vmap({mapped.name}), ...) needs at least one element to "
                         "trace; the lists given are empty")
    report = inspect(mapped.jitted.fn, *elements[0], **kwargs)
    report.name = f"vmap({report.name})"
    mask = _leaf_mask(elements[0], _axes(args, mapped.in_axes), kwargs)
    if report.complete and len(mask) == len(report.graph.inputs):
        graph = report.graph if report.guarded else split_hoistable(report.graph, mask)
        if not report.guarded:  # (else nothing is hoisted: each element plans its own)
            report.batched = check_batched(batch_graph(graph, mask, len(elements))[0])
        report.map_estimate = map_estimate(graph, mask, len(elements),
                                           mapped.batch_size, hoist=not report.guarded,
                                           elements=[_leaves_of(e, kwargs) for e in elements])
    return report


def _leaves_of(args: tuple, kwargs: dict) -> list[Any]:
    """An element's input values, in the order its trace makes the graph's inputs."""
    leaves: list[Any] = []
    trace_inputs((args, kwargs), None, leaves)
    return leaves


def state_inputs(state: TraceState) -> list[Any]:
    return [state.values.get(v.id) for v in state.inputs]
