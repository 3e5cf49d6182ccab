"""`jit`: trace, optimize and run a function's model calls as one graph — soundly.

A jitted call has three phases:

1. **Plan.** The function runs on tracers and records a graph. Where the Python
   needs a value that a model has not produced yet (a graph break), the trace
   suspends; the recorded calls run together, and the function is traced again with
   the finished answers known (suspend-and-replay). A trace with no break is cached
   per input signature and later calls skip tracing and compiling.
2. **Run.** The optimized graph runs on the backend: every call starts as soon as its
   inputs are ready, dead calls are not made, duplicates are sent once, samples fuse.
   Answers go into a memo.
3. **Check.** The Python runs once more on real values, `models()` answering from
   the memo. Its return value is the result. So a jitted function returns exactly
   what the eager one would, even when a traced value leaked into ``len`` or ``re``:
   a call the plan did not foresee is simply sent (and the plan is not trusted again
   for that signature); a call the plan made in vain is counted.

The check run costs microseconds of Python; it makes soundness a property of the
design rather than of the tracer's coverage. Side effects written inline in the
function therefore run on every call, as in eager Python (plus once per trace); an
effectful `ember.op` runs exactly once per call (the check run reuses the graph's run).
A call is a generator of steps; `ember._drivers` runs them from sync or async code.
"""

from __future__ import annotations

import asyncio
import functools
import time
import types
import inspect as _inspect
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Generator

from ._drivers import Step, drive_async, drive_sync
from ._keywords import hint_keywords
from ._latest import own_report, set_own_report
from ._models import CheckRun, NeedAnswers, check_var
from ._report import RunReport
from ._response import Response
from ._signature import signature_of, trace_inputs
from .backends.local import execute, node_request
from .backends.memo import MISSING, Memo
from .backends.record import Recorder, recorder_var
from .backends.policy import current_options
from .errors import TraceError
from .ir.graph import Graph, Lit, Var
from .passes import run_passes
from .ir.locations import exception_site
from .ir.suspects import answers_feeding, unconsumed_reads
from .ir.trace import (UNKNOWN, Break, StopTrace, Suspend, TraceState, current_trace,
                       fields_of, holds_stale, stale_placeholder)

__all__ = ["jit", "Jitted", "CompiledEntry", "MAX_ROUNDS", "signature_of",
           "trace_inputs"]

log = logging.getLogger("ember")

MAX_ROUNDS = 64  # suspend-and-replay rounds before falling back to plain execution
MAX_SIGNATURES = 256  # compiled entries a jitted function keeps (one per input signature)
MAX_KEPT_NODES = 200_000  # a call keeps its rounds' traces until its check, up to this size


@dataclass
class CompiledEntry:
    """What jit keeps per input signature."""

    graph: Graph | None = None  # optimized, replayable with new inputs
    strict: bool = False  # plans were wrong: trace every .text / format() strictly
    # a plan was wrong: reads of values made at these locations are strict (see
    # `_tighten`)
    strict_at: frozenset[str] = frozenset()
    misses: int = 0  # plans found wrong by the check run
    lessons: int = 0  # times strict_at grew
    replay_misses: int = 0  # replayed graphs found wrong
    # no plan can be trusted (the Python made other calls each time it ran: a timestamp
    # in a prompt): the check run alone runs the Python, fetching calls where it reads
    # their answers (re-running it to fetch would never converge)
    changing: bool = False
    retrace: bool = False  # replayed graphs were wrong: trace every call afresh
    traces: int = 0
    calls: int = 0
    breaks: list = field(default_factory=list)
    passes: list = field(default_factory=list)


def _lookup(memo: Memo) -> Callable:
    """Known values of llm nodes during a re-trace: answers already in the memo."""
    counts: dict[str, int] = {}
    found = [0]  # calls answered

    def lookup(node: Any, values: list[Any]) -> Any:
        if node.op != "llm":
            return UNKNOWN
        try:
            request = node_request(node, values[0], values[1], 1)
        except Exception:
            return UNKNOWN
        det = node.param("deterministic")
        out = []
        for _ in range(node.param("n", 1)):
            occ = counts.get(request.key, 0)
            if not det:
                counts[request.key] = occ + 1
            value = memo.peek(request, det, occ)
            if value is MISSING:
                return UNKNOWN
            out.append(value)
        found[0] += 1
        return out[0] if len(out) == 1 else out
    lookup.found = found  # type: ignore[attr-defined]
    return lookup


def _substitute_known(graph: Graph, values: dict[int, Any]) -> Graph:
    """Drop model calls whose answers are known; their uses become literals."""
    sub: dict[int, Lit] = {}
    nodes = []
    for node in graph.nodes:
        if sub:
            inputs = tuple(sub.get(a.id, a) if isinstance(a, Var) else a for a in node.inputs)
            if inputs != node.inputs:
                node = node.replace(inputs=inputs)
        if node.op == "llm" and node.out.id in values:
            v = values[node.out.id]
            sub[node.out.id] = Lit(tuple(v) if isinstance(v, list) else v)
            continue
        nodes.append(node)
    outputs = [sub.get(a.id, a) if isinstance(a, Var) else a for a in graph.outputs]
    return Graph(list(graph.inputs), nodes, outputs, graph.meta)


def _compile(graph: Graph, verify: bool = False) -> tuple[Graph, list]:
    return run_passes(graph, verify=verify)


def _pending_leaves(value: Any, out: list[Response], seen: set[int] | None = None
                    ) -> list[Response]:
    """The pending answers a returned value holds (through lists, tuples, dicts and
    dataclasses, each of those once: a tree of them may point back to its parents)."""
    if isinstance(value, Response):
        if value._thunk is not None:
            out.append(value)
        return out
    if isinstance(value, (str, int, float, bool, type(None))):
        return out
    seen = set() if seen is None else seen
    if id(value) in seen:
        return out
    seen.add(id(value))
    if isinstance(value, (list, tuple)):
        for v in value:
            _pending_leaves(v, out, seen)
    elif isinstance(value, dict):
        for v in value.values():
            _pending_leaves(v, out, seen)
    else:
        for v in fields_of(value) or ():
            _pending_leaves(v, out, seen)
    return out


# ---- the driver ------------------------------------------------------------------------
RunGraph = Callable[[Graph, list, Memo], Awaitable[dict]]


class Jitted:
    """A jitted function. Calling it runs plan, run and check (module docstring)."""

    def __init__(self, fn: Callable, *, fullgraph: bool = False, verify: bool = False) -> None:
        if isinstance(fn, Jitted):
            fn = fn.fn
        if not callable(fn):
            raise TypeError(f"jit() needs a function, got {fn!r}")
        self.fn = fn
        self.fullgraph = fullgraph
        self.verify = verify  # run the IR verifier after every pass (tests)
        self.is_async = _inspect.iscoroutinefunction(fn)
        self.cache: dict[Any, CompiledEntry] = {}
        self._latest: RunReport | None = None
        # name and doc, not the wrapped's __dict__: a wrapped Jitted's or vmap's fn,
        # cache and last_run would replace this one's (jit(vmap(f)) became jit(f))
        functools.update_wrapper(self, fn, updated=())

    def __repr__(self) -> str:
        return f"<jit {getattr(self.fn, '__qualname__', self.fn)!r}>"

    @property
    def last_run(self) -> RunReport | None:
        """What the latest call did: this thread's or task's latest call when it made
        one (calls from several threads or tasks at once each see their own), else
        the latest of any."""
        return own_report(self) or self._latest

    @last_run.setter
    def last_run(self, report: RunReport | None) -> None:
        self._latest = report
        set_own_report(self, report)

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        # a bound method whose attributes (last_run, entry, fn) are the Jitted's
        return self if obj is None else types.MethodType(self, obj)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if current_trace() is not None or check_var.get() is not None:
            return self.fn(*args, **kwargs)  # nested: trace through / answer from the memo
        if self.is_async:
            return self._call_async(args, kwargs)
        rec, token, start = _start_recording()
        try:
            return drive_sync(self._program(args, kwargs))
        finally:
            self.last_run = _finish_recording(rec, token, start, self)

    async def _call_async(self, args: tuple, kwargs: dict) -> Any:
        rec, token, start = _start_recording()
        try:
            return await drive_async(self._program(args, kwargs))
        finally:
            self.last_run = _finish_recording(rec, token, start, self)

    def entry(self, *args: Any, **kwargs: Any) -> CompiledEntry | None:
        """The cache entry for these arguments' signature, if traced."""
        return self.cache.get((signature_of((args, kwargs)), current_options()))

    # The program is a generator of steps, so one driver serves def and async def:
    # ("call", thunk) runs the user's function, ("run", coroutine) runs on the backend.
    def _program(self, args: tuple, kwargs: dict, run_graph: RunGraph | None = None
                 ) -> Generator[Step, Any, Any]:
        """``run_graph(graph, leaves, memo)`` runs a cached graph (default: `execute`;
        vmap's runs the calls it hoisted once for all elements)."""
        run_graph = run_graph or execute
        sig = (signature_of((args, kwargs)), current_options())  # retry/timeout scope too
        entry = self.cache.get(sig)
        if entry is None:
            if len(self.cache) >= MAX_SIGNATURES:  # the oldest goes (a long-lived service)
                self.cache.pop(next(iter(self.cache)), None)
            entry = self.cache[sig] = CompiledEntry()
        entry.calls += 1
        memo = Memo()
        recs = recorder_var.get()  # (this call's own, innermost: graphs for its report)
        run_info = recs[-1] if recs else Recorder()
        plans: list[tuple[TraceState, Graph]] = []  # this call's traces, if it planned
        replayed = entry.graph  # (None: this call plans)
        if entry.changing:
            pass  # the check run does it all
        elif replayed is not None:
            run_info.graphs.append(replayed)
            leaves: list[Any] = []
            trace_inputs((args, kwargs), None, leaves)
            yield "run", run_graph(entry.graph, leaves, memo)
        else:
            yield from self._plan(args, kwargs, entry, memo, run_graph, plans, run_info)
        unplanned: str | None = None  # where the first call the plan missed was made
        fetched: list[tuple[str, int]] = []  # what the last re-check's fetch stored
        for _ in range(MAX_ROUNDS):
            # (a driver that may block makes the check run fetch where it reads)
            check = CheckRun(memo, suspendable=not entry.changing)
            began = time.perf_counter()
            try:
                result = yield "check", (self.fn, check, args, kwargs)
                break
            except NeedAnswers:  # the plan missed a call the Python reads: fetch, re-check
                unplanned = unplanned or check.first_miss or "?"
                if not memo.all_used(fetched):
                    # the Python made other calls than the run before it did (a time or
                    # a random id in a prompt): re-running it would never converge
                    _stop_planning(entry, "the Python made other calls each time it ran "
                                   "(a timestamp or a random id in a prompt?)")
                    continue
                fetched = yield from _fetch(check.fetch_pending(), run_info)
            finally:
                _ran_python(run_info, began, check.fetch_seconds)
        else:  # pragma: no cover - a program that keeps reading new answers
            check = CheckRun(memo, suspendable=False)
            result = yield "check", (self.fn, check, args, kwargs)
        if check.blocked_at:  # (the check run fetched calls the plan missed, blocking)
            unplanned = unplanned or check.blocked_at
            run_info.unplanned_seconds += check.fetch_seconds
        if holds_stale(result):
            raise stale_placeholder(f"in what {getattr(self.fn, '__qualname__', 'it')} returned")
        pending = _pending_leaves(result, [])
        if pending:  # answers returned unread that the plan did not make: it missed them
            unplanned = unplanned or check.first_miss or "?"
            yield from _fetch(_settle(pending), run_info)
        # (a call the plan did not make that the Python never read is a dead call dce
        # removed, not a miss: counting it made every function with one strict)
        if unplanned or memo.unused():
            if plans or replayed is not None:  # (else no plan ran: nothing to learn)
                _tighten(entry, plans, unplanned, replayed)  # (and drops the wrong graph)
            if self.fullgraph:
                where = unplanned or check.first_miss
                raise TraceError(
                    "jit(fullgraph=True): the Python used a model's answer in a way the "
                    "trace could not see (e.g. len(), re or json on the text), so the "
                    f"graph did not match the calls it made; the first unplanned call is at "
                    f"{where or 'an unknown line'}. Decide on the answer in an @ember.op "
                    "function, or drop fullgraph=True.")
        return result

    def _plan(self, args: tuple, kwargs: dict, entry: CompiledEntry, memo: Memo,
              run_graph: RunGraph, plans: list[tuple[TraceState, Graph]],
              run_info: Recorder) -> Generator[Step, Any, None]:
        """Trace, compile and run the function's calls, round by round (a round ends
        where the Python needs an answer); each round's trace goes to ``plans``."""
        concrete = False  # pass argument strings as plain str (after a tracer TypeError)
        breaks: dict[tuple, Break] = {}  # every round's, once each: (loc, reason) -> break
        used = -1  # answers the last round's trace looked up
        for round_no in range(MAX_ROUNDS):
            lookup = _lookup(memo) if len(memo) else None
            state = TraceState(fullgraph=self.fullgraph, strict=entry.strict or entry.strict_at,
                               lookup=lookup)
            leaves: list[Any] = []
            if concrete:
                targs, tkwargs = args, kwargs
            else:
                targs, tkwargs = trace_inputs((args, kwargs), state, leaves)
            entry.traces += 1
            began = time.perf_counter()
            try:
                result = yield "trace", (self.fn, state, targs, tkwargs)
                complete = True
            except Suspend:
                complete, result = False, None
            except TraceError:
                raise
            except StopTrace as stop:  # the check run executes the rest
                if getattr(stop, "misread", False):  # next time, await what was misread
                    _await_misread(entry, state)
                for b in state.breaks:
                    breaks.setdefault((b.loc, b.reason), b)
                entry.breaks = list(breaks.values())
                return
            except (Exception, SystemExit) as exc:
                waiting = _has_unknown_calls(state)
                if waiting and self.fullgraph:
                    raise TraceError(
                        f"jit(fullgraph=True): {type(exc).__name__} at "
                        f"{exception_site(exc) or 'an unknown line'} on an unfinished model "
                        f"answer ({exc}): Python needs the answer's value there (a graph "
                        "break). Convert it first (str(x) for a JSON field), move the code "
                        "into an @ember.op function, or drop fullgraph=True.") from exc
                if waiting:
                    # Python that needs values met placeholders (" | ".join of JSON
                    # fields raises TypeError): a break. The calls recorded so far run,
                    # and the next round traces on with their answers.
                    hint = " (str() of a JSON field keeps the plan whole: a str while " \
                        "planning)" if "Traced" in str(exc) else ""
                    state.breaks.append(Break(exception_site(exc), f"{type(exc).__name__} "
                                              f"on an unfinished answer: {exc}{hint}", False))
                    complete, result = False, None
                elif not concrete and state.inputs:
                    concrete = True  # e.g. "\n".join(traced_args): trace with real strings
                    state.guarded = True
                    continue
                else:
                    return  # the check run raises what eager Python raises
            finally:
                _ran_python(run_info, began)
            found = lookup.found[0] if lookup is not None else 0  # type: ignore[attr-defined]
            if found <= used:  # this trace used none of the answers the last round got:
                return  # the Python changes its calls (a timestamp?); the check run decides
            # (a later round may not meet a break again: its value is known, read for real)
            for b in state.breaks:
                breaks.setdefault((b.loc, b.reason), b)
            entry.breaks = list(breaks.values())
            graph = _substitute_known(state.graph(result), state.values)
            # (for `_tighten`, if the check finds it wrong: with the outputs the Python
            # returned, not the calls an unfinished round runs, which hid every suspect)
            plans.append((state, Graph(graph.inputs, graph.nodes, list(graph.outputs))))
            kept = sum(len(st.nodes) for st, _ in plans)
            while len(plans) > 1 and kept > MAX_KEPT_NODES:  # the oldest rounds go first
                kept -= len(plans.pop(0)[0].nodes)
            if not complete:  # run every call recorded so far
                graph.outputs = [n.out for n in graph.nodes if n.op == "llm"]
            optimized, passes = _compile(graph, self.verify)
            if not any(n.op.startswith("llm") for n in optimized.nodes):
                return  # nothing to send: the check run does the rest
            run = execute
            if complete:
                if round_no == 0 and not state.guarded and not concrete and not entry.retrace:
                    entry.graph = optimized  # cached before it runs: vmap elements reuse it
                    run = run_graph
                entry.passes = passes
            run_info.graphs.append(optimized)
            used = found
            yield "run", run(optimized, leaves, memo)
            if complete:
                return


def _fetch(calls: Awaitable[Any], run_info: Recorder) -> Generator[Step, Any, Any]:
    """Run calls the plan missed (the check run asks for them), timing them for the
    run report's measured bound."""
    start = time.perf_counter()
    done = yield "run", calls
    run_info.unplanned_seconds += time.perf_counter() - start
    return done


def _has_unknown_calls(state: TraceState) -> bool:
    """Did this round record a model call whose answer is not known yet?"""
    values = state.values
    return any(n.op == "llm" and n.out.id not in values for n in state.nodes)


def _tighten(entry: CompiledEntry, plans: list[tuple[TraceState, Graph]],
             missed: str | None, replayed: Graph | None) -> None:
    """A plan was wrong: Python used an answer where the trace could not see (C code
    such as ``re`` or ``json.loads`` read a placeholder). Drop the graph and make the
    suspects' reads strict (see ``ember.ir.suspects``): the reads no recorded op took
    in, else the answers that reached the first call the plan missed (made at
    ``missed``). So a fan-out whose answers went into the graph stays parallel. Every
    read becomes strict when a plan that had its suspects strict already was still
    wrong, after three lessons, or when replayed graphs were wrong twice (the second
    planned after the first was dropped: a replay has no trace to learn from).
    Concurrent calls of one signature may all find one plan wrong: a graph counts
    once, and what another call learned meanwhile is not learned again."""
    entry.misses += 1
    if not plans:  # ``replayed`` was wrong for these arguments
        if entry.graph is replayed:  # (else a concurrent call dropped it already)
            entry.graph = None
            entry.replay_misses += 1
            if entry.replay_misses == 2 and not entry.strict:
                entry.strict = True
                log.info("jit: a cached plan was wrong twice for new arguments; from now on "
                         "this signature is planned strictly")
            elif entry.replay_misses > 2 and not entry.retrace:
                # (the plan read what the arguments do not key: a global, an attribute
                # of an object; a fresh trace reads it anew)
                entry.retrace = True
                log.info("jit: a cached plan was wrong twice for new arguments (did a "
                         "global or an attribute it reads change?); from now on this "
                         "signature is traced on every call")
        return
    entry.graph = None
    was_strict = entry.strict
    traced_with = plans[0][0].strict  # (this call's strictness)
    known = traced_with if isinstance(traced_with, frozenset) else frozenset()
    suspects: set[str] = set()
    for state, graph in plans:
        suspects |= unconsumed_reads(state, graph.outputs)
    if not suspects - known and missed is not None:
        for state, _ in plans:
            suspects |= answers_feeding(state, missed)
    fresh = suspects - known
    if traced_with is True or (not suspects and any(
            n.loc == missed and n.op == "llm" for state, _ in plans for n in state.nodes)):
        # awaiting every answer did not help, or the plan made the call with another
        # prompt that took in no answer (the Python changed it itself: a timestamp, an
        # argument read where the trace could not see): no plan can be trusted
        _stop_planning(entry, f"the plan missed a call at {missed or '?'}"
                       + ("" if traced_with is True else " that took in no model answer"))
        return
    if not fresh:
        entry.strict = True
    elif not fresh <= entry.strict_at:  # (else a call traced meanwhile learned them)
        if entry.lessons >= 3:
            entry.strict = True
        else:
            entry.strict_at = entry.strict_at | fresh
            entry.lessons += 1
            log.info("jit: the plan missed a call at %s (Python used an answer where the "
                     "trace could not see, e.g. re or json.loads on its text); from now on "
                     "answers made at %s are awaited where they are read", missed or "?",
                     ", ".join(sorted(fresh)))
            return
    if entry.strict and not was_strict:
        log.info("jit: the plan missed a call at %s; from now on this signature is planned "
                 "strictly (every answer awaited where it is read)", missed or "?")


def _await_misread(entry: CompiledEntry, state: TraceState) -> None:
    """Untraced code changed a placeholder on its way into a prompt: the texts it read
    (read, and taken in by no recorded op) are awaited where read from then on, as
    after a plan the check run found wrong; else the next trace could plan with a
    placeholder that code happens not to change, and send a wrong prompt."""
    if entry.strict is True:
        return
    fresh = unconsumed_reads(state) - entry.strict_at
    if not fresh:
        return
    if entry.lessons >= 3:
        entry.strict = True
    else:
        entry.strict_at = entry.strict_at | fresh
        entry.lessons += 1


def _stop_planning(entry: CompiledEntry, why: str) -> None:
    if not entry.changing:
        entry.changing = True
        entry.graph = None
        log.info("jit: %s; from now on this signature runs its Python on real values, "
                 "sending the calls it makes together where an answer is read", why)


def _ran_python(run_info: Recorder, began: float, fetching: float = 0.0) -> None:
    """Count one run of the user's Python (a trace round or a check run) that began at
    ``began``, less the seconds it was blocked on fetches."""
    run_info.python_runs += 1
    run_info.python_seconds += max(0.0, time.perf_counter() - began - fetching)


def _critical_path(graph: Graph) -> float:
    estimate = graph.meta.get("estimate")
    return getattr(estimate, "critical_path_seconds", 0.0) or 0.0


def _start_recording() -> tuple[Recorder, Any, float]:
    rec = Recorder()
    return rec, recorder_var.set([*recorder_var.get(), rec]), time.perf_counter()


def _finish_recording(rec: Recorder, token: Any, start: float, jitted: Jitted) -> RunReport:
    recorder_var.reset(token)
    name = getattr(jitted.fn, "__qualname__", "jit")
    bound = sum(_critical_path(graph) for graph in rec.graphs)  # (the estimates')
    return RunReport(rec.calls, time.perf_counter() - start, bound or None, label=name,
                     graphs=tuple(rec.graphs), node_seconds=rec.node_seconds,
                     unplanned_seconds=rec.unplanned_seconds, python_runs=rec.python_runs,
                     python_seconds=rec.python_seconds)


async def _settle(pending: list[Response]) -> None:
    results = await asyncio.gather(*(r._thunk.fetch() for r in pending))
    for r, done in zip(pending, results, strict=True):
        r._thunk = lambda done=done: done
        r._force()


@hint_keywords({"full_graph": "fullgraph", "strict": "fullgraph", "check": "verify",
                "validate": "verify"})
def jit(fn: Callable | None = None, *, fullgraph: bool = False, verify: bool = False) -> Any:
    """Compile a function's model calls into a graph. ``@jit`` or ``jit(fn)``.

    Same results as ``fn``; independent calls run concurrently; dead calls are not made;
    identical deterministic calls are made once; samples fuse. ``fullgraph=True`` turns
    a graph break into a `TraceError` naming the line.
    """
    if fn is None:
        return lambda f: Jitted(f, fullgraph=fullgraph, verify=verify)
    return Jitted(fn, fullgraph=fullgraph, verify=verify)
