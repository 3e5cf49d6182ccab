"""The tracer: runs a function on tracers and records a `Graph`.

Values that come from the function's string/Response arguments or from model calls
are *traced*. Structure-preserving uses become nodes (f-strings, ``+``, ``.strip()``,
``.json()``, ``["key"]``, `ember.op` calls, `models()`). A use that needs the value
(``bool``, ``len``, ``==``, ``in``, iteration, other ``str`` methods) is a *graph
break*: when the value is known (an argument, or a model answer finished in an
earlier round) it is supplied and the graph is marked data-dependent; otherwise the
trace suspends (`Suspend`) so the driver can run what was recorded and trace again.

``format(tracer)`` / ``str(tracer)`` / ``.text`` return a real ``str`` holding a
*marker* (ASCII control characters, a per-trace nonce and an index), which `models()`
and `ember.op` parse back into a ``format`` node. An answer's ``.text`` is a
`MarkedText` (ember.ir.marked_text): its edits become nodes and its value-dependent
uses breaks. A marker that reaches C code (``re``, ``json``) or is built into a larger
string would compute on the marker, not the value — so jit never
trusts the trace for the answer: the answer always comes from a check run of the
Python on the real values (see ember/_jit.py), which also detects such leaks.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import threading
from contextvars import ContextVar
from typing import Any, Callable

from ..errors import TraceError
from .collector import pause, resume
from .graph import NO_META, Atom, Graph, Lit, Node, Var, _ids
from .locations import break_site, user_location
from .marked_text import _MARK_CLOSE, _MARK_OPEN, MarkedText, marked_var
from .ops import OPS
from .suspects import origin
from .types import AnyT, ResponseT, Str, Type

__all__ = [
    "TraceState", "Traced", "TracedStr", "TracedResponse", "TracedValue", "Suspend",
    "StopTrace", "UNKNOWN", "current_trace", "trace_var", "user_location", "has_traced",
    "MAX_TRACE_NODES", "MarkedText", "wrap", "PROCESS_MARK", "stale_placeholder",
    "holds_stale",
]

UNKNOWN = object()
_PLAIN_SPECS = ("specs", ("",))  # the specs param of a format node of one plain {x}
_TEXT_OF = (("segments", ("", "")), _PLAIN_SPECS)  # the params of a bare str(x): shared
MAX_TRACE_NODES = 200_000
_MODEL_OPS = frozenset(name for name, d in OPS.items() if d.impl is None)  # sent, not run
_new = object.__new__
_next_id = _ids.__next__
# a trace's marker nonce: a per-process secret and a counter (one urandom per process,
# not one system call per trace)
# ("eE" first: a marker that str.upper, lower or swapcase applied never stays intact,
# even when the random hex happens to hold no letter)
_SECRET = "eE" + os.urandom(6).hex()
_nonces = map(f"{_SECRET}{{:x}}".format, itertools.count())
_next_nonce = _nonces.__next__
# how every marker of this process begins: one in text the Python holds after its
# trace ended is a placeholder that state kept (see `stale_placeholder`)
PROCESS_MARK = _MARK_OPEN + _SECRET
# a marker's tail "<index>" CLOSE, and the index of such a tail's digits, for the first
# indexes of any trace (grown on first use): formatting an int into the marker and
# parsing it back cost about a sixth of a prompt's trace
_TAILS: list[str] = []
_INDEX_OF: dict[str, int] = {}
_TAILS_CAP = 1 << 15
_TAILS_LOCK = threading.Lock()

trace_var: ContextVar[TraceState | None] = ContextVar("ember_trace", default=None)
_current = trace_var.get


def _leaked() -> TraceError:
    """A tracer used outside the trace that made it (JAX calls it a leaked tracer)."""
    return TraceError(
        "A traced value was used outside the jit trace that made it. While jit traces a "
        "function, model answers are placeholders; this one was kept (in a global, a "
        "list, an object attribute or a closure) and read after its trace ended, in "
        "another jitted function, or in a thread that does not carry the trace's context "
        "(asyncio.to_thread does; a bare thread pool does not). Return the value from "
        "the jitted function and use what the call returns.")


def stale_placeholder(where: str) -> TraceError:
    """A placeholder from a finished trace, found ``where`` (in a prompt, in what a
    jitted function returned): state the function keeps caught it while jit traced."""
    return TraceError(
        f"A placeholder for a model's answer was found {where}: it was made while jit "
        "traced a function (answers are placeholders then) and kept in state that "
        "outlives the trace: functools.lru_cache or a memo dict on a helper that calls "
        "models(), an attribute set inside the function (lazy initialisation), a list it "
        "appends answers to (a chat history). jit runs the Python once on placeholders to "
        "plan the calls, so such state must not be filled inside a jitted function: "
        "fill it outside (pass it in, return what to add), or use ember.cache instead of "
        "functools.lru_cache (it is jit-aware). Clear what holds the placeholder "
        "(e.g. helper.cache_clear()) before calling again. Or a thread the trace does not "
        "follow took it: models() called from a ThreadPoolExecutor inside a jitted "
        "function (jit already sends independent calls together: call models() directly, "
        "or map with ember.vmap).")


def holds_stale(value: Any, depth: int = 0) -> bool:
    """Whether a returned value holds a placeholder: its strings, through lists,
    tuples, sets, dicts and the attributes of objects (dataclasses, pydantic models)."""
    if isinstance(value, str):
        return PROCESS_MARK in value
    if depth > 8 or value is None or isinstance(value, (int, float, bytes)):
        return False
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(holds_stale(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return any(holds_stale(k, depth + 1) or holds_stale(v, depth + 1)
                   for k, v in value.items())
    if depth > 3:  # (objects: a few levels, and small ones; a data frame is not looked into)
        return False
    try:
        state = object.__getattribute__(value, "__dict__")
    except Exception:  # (__slots__ or a builtin: not looked into)
        return False
    return (type(state) is dict and len(state) <= 64
            and any(holds_stale(v, depth + 1) for v in state.values()))


def current_trace() -> TraceState | None:
    return trace_var.get()


class tracing:
    """``with tracing(state):`` runs a (sync) trace: ``state`` is the current trace, and
    the cycle collector is paused (see ``ember.ir.collector``: a trace creates no
    reference cycles, memory is still freed by reference counting, and what the trace
    made is promoted to the oldest generation on exit). (A class, not a generator: it
    is entered on every trace.)"""

    __slots__ = ("state", "token")

    def __init__(self, state: TraceState) -> None:
        self.state = state

    def __enter__(self) -> None:
        self.token = trace_var.set(self.state)
        pause()

    def __exit__(self, *exc: Any) -> None:
        resume()
        trace_var.reset(self.token)


class Suspend(BaseException):
    """Internal: the trace needs a value that is not computed yet.

    A BaseException so a user's ``except Exception`` does not swallow it."""


class StopTrace(BaseException):
    """Internal: tracing cannot continue; the driver falls back to running the Python."""


class Break:
    __slots__ = ("loc", "reason", "known")

    def __init__(self, loc: str | None, reason: str, known: bool) -> None:
        self.loc, self.reason, self.known = loc, reason, known

    def __repr__(self) -> str:
        return f"{self.loc or '?'}: {self.reason}"


class TraceState:
    """One tracing pass over a function."""

    def __init__(self, memo: Any = None, *, fullgraph: bool = False,
                 strict: bool | frozenset[str] = False,
                 lookup: Callable[[Node, list[Any]], Any] | None = None) -> None:
        self.nodes: list[Node] = []
        self.inputs: list[Var] = []
        self.values: dict[int, Any] = {}  # var id -> concrete value, when known
        self.marked: list[Var] = []  # marker i stands for marked[i] formatted with specs[i]
        self.specs: list[str] = []
        self.read: list[Var] = []  # answers Python read other than by text (.json(), .usage)
        self.nonce = _next_nonce()  # unguessable, so user text never forges a marker
        self._mark_open = _MARK_OPEN + self.nonce
        self.breaks: list[Break] = []
        self.needed: set[int] = set()  # var ids a graph break asked the value of
        self.guarded = False  # a known value steered the Python: graph is data-dependent
        self.fullgraph = fullgraph
        # .text / str() / format() of unknown values suspend: all (True), or those of
        # the model calls made at these source locations (see ``ember.ir.suspects``)
        self.strict = strict
        self.lookup = lookup  # (llm node, input values) -> concrete result or UNKNOWN
        self.sample_counts: dict[tuple, int] = {}
        self.timeout_entries: dict[int, int] = {}  # ember.timeout region -> calls so far
        # ember.cache key -> the traced result of its first call in this trace: a second
        # call with the same key is a cache hit eagerly, so it gets that result (it
        # was traced again: a sampled call paid twice)
        self.cached: dict[str, Any] = {}
        # Local ops are evaluated on demand (`value_of`): most traced values are never
        # read, and computing every prompt while tracing cost a fifth of the trace.
        self._producer: dict[int, Node] = {}  # var id -> node, indexed on demand
        self._indexed = 0  # nodes[:_indexed] are in _producer
        self._settled: set[int] = set()  # var ids evaluated and found unknown

    # ---- graph building ------------------------------------------------------------
    def input(self, value: Any) -> Any:
        if isinstance(value, str):
            var = Var(Str)
            self.inputs.append(var)
            self.values[var.id] = value
            return TracedStr(self, var)
        from .._response import Response

        if isinstance(value, Response):
            var = Var(ResponseT)
            self.inputs.append(var)
            self.values[var.id] = value
            return TracedResponse(self, var)
        raise TypeError(f"cannot trace {type(value).__name__}")  # pragma: no cover

    def add(self, op: str, inputs: list[Atom], params: dict[str, Any], type_: Type | None = None,
            loc: str | None = None) -> Var:
        if _current() is not self:  # a leaked tracer's .json(), .usage, [key], ...
            raise _leaked()
        out = Var(AnyT)
        node = Node(op, inputs, params, out, loc)
        out.type = type_ or OPS[op].type_rule(node)
        self._push(node)
        return out

    def add_trusted(self, op: str, inputs: tuple[Atom, ...], params: tuple, type_: Type,
                    loc: str | None = None) -> Var:
        """`add` for nodes whose parts the caller vouches for (see `Node.trusted`): the
        tracer's own formats and model calls. Builds the node in place: this is the
        tracer's hot path."""
        out = _new(Var)
        out.id = _next_id()
        out.type = type_
        node = _new(Node)  # (one assignment per slot: a 6-tuple assignment builds a tuple)
        node.op = op
        node.inputs = inputs
        node.params = params
        node.out = out
        node.loc = loc
        node.meta = NO_META
        nodes = self.nodes
        if len(nodes) >= MAX_TRACE_NODES:
            self._too_long()
        nodes.append(node)
        if self.lookup is not None and op in _MODEL_OPS:
            self._look_up(node)
        return out

    def _push(self, node: Node) -> None:
        nodes = self.nodes
        if len(nodes) >= MAX_TRACE_NODES:
            self._too_long()
        nodes.append(node)
        if self.lookup is not None and node.op in _MODEL_OPS:
            self._look_up(node)

    @staticmethod
    def _too_long() -> None:
        raise StopTrace(f"the trace exceeded {MAX_TRACE_NODES} nodes (an unbounded loop "
                        "over model output?)")

    def _look_up(self, node: Node) -> None:
        """A model call's answer, if the lookup knows it. Calls are looked up in trace
        order (a sampled call's occurrence counts); local ops wait until something
        reads their value."""
        for a in node.inputs:
            if a.__class__ is Var:
                self.value_of(a)
        self._evaluate(node)
        if node.out.id not in self.values:
            self._settled.add(node.out.id)  # looked up once: occurrences count

    def _index(self) -> dict[int, Node]:
        """var id -> the node that made it, for every node recorded so far."""
        producer = self._producer
        if self._indexed < len(self.nodes):
            for node in self.nodes[self._indexed:]:
                producer[node.out.id] = node
            self._indexed = len(self.nodes)
        return producer

    def strict_about(self, var: Var) -> bool:
        """Must reading ``var`` unfinished be a break? (Only asked when ``strict``.)"""
        strict = self.strict
        if strict is True:
            return True
        node = origin(self, var)
        return node is not None and node.loc in strict

    def value_of(self, var: Var) -> Any:
        """The concrete value of a traced var (an exception if computing it raised), or
        UNKNOWN. Computes the local ops it depends on, once each."""
        values, settled = self.values, self._settled
        v = values.get(var.id, UNKNOWN)
        if v is not UNKNOWN or var.id in settled:
            return v
        producer = self._index()
        stack = [var.id]  # depth first, without recursion (chains can be long)
        while stack:
            vid = stack[-1]
            node = producer.get(vid)
            if node is None:  # an input without a value
                settled.add(vid)
                stack.pop()
                continue
            more = [a.id for a in node.inputs if a.__class__ is Var and a.id not in values
                    and a.id not in settled]
            if more:
                stack += more
                continue
            stack.pop()
            if vid not in values and vid not in settled:
                self._evaluate(node)
                if vid not in values:
                    settled.add(vid)
        return values.get(var.id, UNKNOWN)

    def _evaluate(self, node: Node) -> None:
        values = self.values
        vals = []
        for a in node.inputs:
            if isinstance(a, Lit):
                vals.append(a.value)
                continue
            v = values.get(a.id, UNKNOWN)
            if v is UNKNOWN:
                return
            if isinstance(v, BaseException):
                values[node.out.id] = v
                return
            vals.append(v)
        impl = OPS[node.op].impl
        if impl is not None and node.op == "call" and node.param("effectful", False):
            return  # an effect runs when the graph runs, never while tracing
        if impl is None:
            if self.lookup is not None:
                v = self.lookup(node, vals)
                if v is not UNKNOWN:
                    values[node.out.id] = v
            return
        try:
            values[node.out.id] = impl(node, *vals)
        except Exception as exc:  # e.g. .json() of prose: raised if the value is used
            values[node.out.id] = exc

    def graph(self, result: Any) -> Graph:
        """The recorded graph, with ``result``'s leaves as its outputs (formatting them
        adds nodes: the collector is paused for those too, as by `tracing`)."""
        inside = trace_var.get() is self  # within `tracing(self)`: paused already
        if not inside:
            pause()
        try:
            outputs: list[Atom] = []
            for leaf in _leaves(result):
                atom = self.atomize(leaf)
                if isinstance(atom, Var):
                    outputs.append(atom)
            # what Python read (text, format, attributes): the check run reads it again,
            # so dce must keep it even when no output needs it
            return Graph(list(self.inputs), list(self.nodes), outputs,
                         {"read": (self.marked, self.read)})
        finally:
            if not inside:
                resume()

    # ---- markers ---------------------------------------------------------------------
    def mark(self, tracer: Traced, spec: str) -> str:
        """A marker standing for ``tracer`` formatted with ``spec`` (see `_mark`)."""
        return _mark(tracer, spec)

    def atomize(self, value: Any, loc: str | None = None) -> Atom:
        """A traced value, a string holding markers, or a constant, as an atom."""
        if isinstance(value, Traced):
            if value._state is not self:
                raise _leaked()
            return value._var
        if value.__class__ is MarkedText:  # x.text itself (a returned answer's text)
            var = marked_var(self, value)
            if var is not None:
                return self._text_atom(var, loc)
            value = str(value)  # another trace's: plain text
        if isinstance(value, str) and _MARK_OPEN in value:
            # split at this trace's markers only (another trace's stay plain text); each
            # piece after the first is "<index>" CLOSE "<text>"
            pieces = value.split(self._mark_open)
            if len(pieces) == 2:  # one marker: the common f"...{x}..."
                index, close, after = pieces[1].partition(_MARK_CLOSE)
                i = _INDEX_OF.get(index) if close else None
                if i is None and close and index.isdecimal():
                    i = int(index)
                if i is not None:
                    atom, spec, before = self.marked[i], self.specs[i], pieces[0]
                    if spec == "" and not before and not after:  # str(x), x.text
                        return self._text_atom(atom, loc)
                    return self.add_trusted("format", (atom,), (
                        ("segments", (before, after)),
                        _PLAIN_SPECS if spec == "" else ("specs", (spec,))), Str, loc)
            if len(pieces) > 1:
                segments, atoms, specs = [pieces[0]], [], []
                for piece in pieces[1:]:
                    index, close, after = piece.partition(_MARK_CLOSE)
                    i = _INDEX_OF.get(index) if close else None
                    if i is None and close and index.isdecimal():
                        i = int(index)
                    if i is not None:
                        atoms.append(self.marked[i])
                        specs.append(self.specs[i])
                        segments.append(after)
                    else:  # not a marker: plain text
                        segments[-1] += self._mark_open + piece
                if atoms:
                    return self.add_trusted("format", tuple(atoms), (
                        ("segments", tuple(segments)), ("specs", tuple(specs))), Str, loc)
        return Lit(value)

    def _text_atom(self, var: Var, loc: str | None) -> Atom:
        """The atom of ``str(var)``: the var itself when it is a string."""
        if var.type is Str or var.type is not ResponseT and var.type == Str:
            return var
        return self.add_trusted("format", (var,), _TEXT_OF, Str, loc)

    # ---- breaks --------------------------------------------------------------------
    def need(self, tracer: Traced, reason: str) -> Any:
        """The concrete value of a tracer, or suspend. Records the graph break."""
        if tracer._state is not self or _current() is not self:
            raise _leaked()
        loc, via = break_site(3)
        if via is not None:  # (a library function the user's line called)
            reason = f"{reason}, inside {via}(){_INSTEAD.get(via, '')}"
        value = self.value_of(tracer._var)
        known = value is not UNKNOWN
        self.needed.add(tracer._var.id)  # (read through a break: not a misread)
        self.breaks.append(Break(loc, reason, known))
        if self.fullgraph:
            raise TraceError(
                f"jit(fullgraph=True): {reason} at {loc or 'an unknown line'} needs a value "
                "that is only known after the model answers (a graph break). Move this "
                "logic into an @ember.op function, return the value and decide outside the "
                "jitted function, or drop fullgraph=True to let jit split the graph here.")
        if not known:
            raise Suspend(reason)
        if isinstance(value, BaseException):
            raise StopTrace(f"the traced value raised {type(value).__name__}")
        self.guarded = True
        return value


# what to write instead of a library call that breaks the graph on an answer's text
_INSTEAD = {"json.loads": " (answer.json() is a node in the graph: no break)"}


def _mark(tracer: Traced, spec: str) -> str:
    """``format(tracer, spec)`` in its trace: a marker that `TraceState.atomize` parses
    back into the traced value (``Traced.__format__`` itself: one call per f-string
    field)."""
    state = tracer._state
    if _current() is not state:
        raise _leaked()
    if state.strict and state.value_of(tracer._var) is UNKNOWN \
            and state.strict_about(tracer._var):
        state.need(tracer, "formatting an unfinished model answer (strict mode)")
    marked = state.marked
    i = len(marked)
    marked.append(tracer._var)
    state.specs.append(spec)
    if i < len(_TAILS):
        return state._mark_open + _TAILS[i]
    if i < _TAILS_CAP:
        with _TAILS_LOCK:  # (traces in other threads may be growing them too)
            more = range(len(_TAILS), min(_TAILS_CAP, 2 * i + 64))
            _INDEX_OF.update((str(k), k) for k in more)
            _TAILS.extend([f"{k}{_MARK_CLOSE}" for k in more])
        return state._mark_open + _TAILS[i]
    return f"{state._mark_open}{i}{_MARK_CLOSE}"


def _text_of(tracer: TracedResponse) -> str:
    """``.text`` / ``str()`` of a model answer in its trace: the real text once it is
    known (the graph then depends on it), else a marker — or, in strict mode, a
    break. (The property's getter itself: every answer's text comes here.)"""
    state, var = tracer._state, tracer._var
    if _current() is not state:
        raise _leaked()
    value = state.values.get(var.id, UNKNOWN)
    if value is UNKNOWN and (state.lookup is not None or var.type is not ResponseT):
        # (without a lookup a model call's answer is unknown: skip the sweep)
        value = state.value_of(var)
    if value is UNKNOWN or isinstance(value, BaseException):
        if state.strict and state.strict_about(var):
            return _mark(tracer, "")
        marked = state.marked  # _mark(tracer, ""), inlined
        i = len(marked)
        if i < len(_TAILS):
            marked.append(var)
            state.specs.append("")
            return MarkedText(state._mark_open + _TAILS[i])
        return MarkedText(_mark(tracer, ""))
    state.guarded = True
    return value.text


def fields_of(value: Any) -> list | None:
    """A dataclass instance's field values (a container of the values it returns)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [getattr(value, f.name, None) for f in dataclasses.fields(value)]
    return None


def _leaves(value: Any, seen: set[int] | None = None):
    """The non-container values of a nested list / tuple / dict / dataclass, in order
    (a container met again, in a tree that points back to its parents, is skipped)."""
    if seen is None:
        seen = {id(value)}
    if isinstance(value, dict):
        value = value.values()
    elif not isinstance(value, (list, tuple)):
        fields = fields_of(value)
        if fields is None:
            yield value
            return
        value = fields
    for v in value:
        if isinstance(v, (list, tuple, dict)) or not isinstance(v, str) and \
                fields_of(v) is not None:  # (answers' texts, the usual leaves: no look)
            if id(v) not in seen:
                seen.add(id(v))
                yield from _leaves(v, seen)
        else:
            yield v


def has_traced(value: Any, state: TraceState) -> bool:
    """Does a (nested) value hold tracers or this trace's markers?"""
    for leaf in _leaves(value):
        if isinstance(leaf, Traced) or (isinstance(leaf, str) and state._mark_open in leaf):
            return True
    return False


# (last: the tracers use this module's markers and state)
from .tracers import Traced, TracedResponse, TracedStr, TracedValue, wrap  # noqa: E402
