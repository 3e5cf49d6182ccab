"""The tracers: what a traced function gets in place of strings, answers and JSON
values while jit plans it. Structure-preserving uses record graph nodes; uses that
need the value are graph breaks (`ValueUses`). Re-exported by ``ember.ir.trace``,
whose markers and trace state they use."""

from __future__ import annotations

from typing import Any

from .._schema import Schema
from .graph import Var
from .locations import user_location
from .marked_text import _MARK_OPEN, MarkedText
from .ops import REPR_SPEC, RESPONSE_ATTRS, STR_METHODS
from .trace import UNKNOWN, TraceState, _current, _mark, _text_of, has_traced
from .types import AnyT, Json, ListT, ResponseT, Str
from .value_uses import ValueUses

__all__ = ["Traced", "TracedStr", "TracedResponse", "TracedValue", "wrap"]


class Traced(ValueUses):
    """A value inside a trace. Structure-preserving uses record nodes; value-dependent
    uses are graph breaks (`ValueUses`)."""

    __slots__ = ("_state", "_var")

    def __init__(self, state: TraceState, var: Var) -> None:
        self._state = state
        self._var = var

    def _need(self, reason: str) -> Any:
        return self._state.need(self, reason)

    __format__ = _mark

    def __str__(self) -> str:
        return self._state.mark(self, "")

    def __repr__(self) -> str:
        # Inside its trace, repr() is a value like str(): ``f"{answers}"`` of a list
        # formats each element with repr(), and the graph must build the same prompt
        # as eager Python. Elsewhere (a debugger, an error message) it describes itself.
        if _current() is self._state:
            return self._state.mark(self, REPR_SPEC)
        return f"<traced {self._var.type} {self._var!r}>"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._need(f"`.{name}` on a traced value"), name)


class TracedStr(Traced):
    """A traced string: ``+``, f-strings and pure ``str`` methods are recorded."""

    __slots__ = ()

    def _method(self, name: str, *args: Any) -> TracedStr:
        st = self._state
        if any(isinstance(a, Traced) or (isinstance(a, str) and _MARK_OPEN in a) for a in args):
            return getattr(self._need(f"`.{name}()` with a traced argument"), name)(*args)
        var = st.add("method", [self._var], {"name": name, "args": args}, Str, user_location(3))
        return TracedStr(st, var)

    def __add__(self, other: Any) -> TracedStr:
        return _concat(self._state, self, other)

    def __radd__(self, other: Any) -> TracedStr:
        return _concat(self._state, other, self)

    def __getattr__(self, name: str) -> Any:
        if name in STR_METHODS:
            return lambda *args: self._method(name, *args)
        return Traced.__getattr__(self, name)


def _concat(state: TraceState, left: Any, right: Any) -> Any:
    if not isinstance(left, (str, Traced)) or not isinstance(right, (str, Traced)):
        return NotImplemented
    left_s = left if isinstance(left, str) else state.mark(left, "")
    right_s = right if isinstance(right, str) else state.mark(right, "")
    atom = state.atomize(left_s + right_s, user_location(3))
    return TracedStr(state, atom) if isinstance(atom, Var) else atom.value


class TracedResponse(Traced):
    """A model answer inside a trace."""

    __slots__ = ()

    text = property(_text_of, doc="the answer's text (a marker while it is unknown)")
    __str__ = _text_of

    def json(self, schema: Any = None) -> TracedValue:
        st = self._state
        st.read.append(self._var)
        args = () if schema is None else (Schema(schema) if isinstance(schema, dict)
                                          else schema,)  # (params are hashable)
        var = st.add("method", [self._var], {"name": "json", "args": args}, Json,
                     user_location(2))
        return _known(st, var)

    def __getattr__(self, name: str) -> Any:
        if name in RESPONSE_ATTRS:
            st = self._state
            st.read.append(self._var)
            var = st.add("attr", [self._var], {"name": name}, None, user_location(2))
            return _known(st, var)
        raise AttributeError(
            f"A Response has no attribute {name!r}; use .text, .json(), .usage, .cost, "
            ".model, .latency or .finish_reason.")


class TracedValue(Traced):
    """A traced JSON value or attribute: ``[key]`` is recorded, and so is a field of a
    pydantic model (``.json(Rating).score``); other uses break."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        fields = {} if name.startswith("_") else _fields_of(self._state, self._var)
        field = fields.get(name)
        if field is None:
            if name == "get" and not fields:  # data.get("key", default): a node
                return lambda *args: self._get(args)
            return Traced.__getattr__(self, name)
        st = self._state
        if field.annotation is str:  # a str, like an answer's .text (join, f-strings, re)
            var = st.add("attr", [self._var], {"name": name, "type": "str"}, Str,
                         user_location(2))
            return MarkedText(_mark(TracedStr(st, var), ""))
        var = st.add("attr", [self._var], {"name": name}, None, user_location(2))
        return TracedValue(st, var)

    def _get(self, args: tuple) -> Any:
        """``data.get(key[, default])`` of a JSON value (a break if an argument is traced
        or unhashable, or the call is malformed: the real ``get`` then says so)."""
        try:
            hash(args)
            ok = 1 <= len(args) <= 2 and not has_traced(args, self._state)
        except TypeError:
            ok = False
        if not ok:
            return self._need("`.get()` with these arguments on a traced value").get(*args)
        st = self._state
        var = st.add("method", [self._var], {"name": "get", "args": args}, Json,
                     user_location(3))
        return TracedValue(st, var)

    def __getitem__(self, key: Any) -> TracedValue:
        if isinstance(key, Traced):
            key = key._need("indexing with a traced key")
        try:
            hash(key)
        except TypeError:
            return self._need("indexing a traced value with an unhashable key")[key]
        st = self._state
        t = self._var.type
        out_t = t.elem if isinstance(t, ListT) else (Json if t == Json else AnyT)
        var = st.add("getitem", [self._var], {"key": key}, out_t, user_location(2))
        return TracedValue(st, var)


def _fields_of(state: TraceState, var: Var) -> dict[str, Any]:
    """The fields of the pydantic model a traced value is validated into: that of
    ``.json(Model)``, or the annotation of the model field it was read from. Empty
    when unknown (a dict from ``.json()``, a list, a union): its attributes break."""
    node = state._index().get(var.id)
    cls: Any = None
    if node is None:
        return {}
    if node.op == "method" and node.param("name") == "json":
        cls = (node.param("args") or (None,))[0]
    elif node.op == "attr" and node.inputs[0].__class__ is Var:
        field = _fields_of(state, node.inputs[0]).get(node.param("name"))
        cls = getattr(field, "annotation", None)
    fields = getattr(cls, "model_fields", None) if isinstance(cls, type) else None
    return fields if isinstance(fields, dict) else {}


def _known(state: TraceState, var: Var) -> Any:
    """A traced value of an answer, or the value itself once the answer is known (in a
    later round): Python then works on real data (``" | ".join`` of JSON fields), as
    ``.text`` of a known answer is its text. (Without a lookup no answer is known.)"""
    if state.lookup is not None:
        value = state.value_of(var)
        if value is not UNKNOWN and not isinstance(value, BaseException):
            state.guarded = True  # (the graph depends on the value: not replayed)
            return value
    return TracedValue(state, var)


def wrap(state: TraceState, var: Var) -> Traced:
    """The tracer class for a var's type."""
    if var.type == ResponseT:
        return TracedResponse(state, var)
    if var.type == Str:
        return TracedStr(state, var)
    return TracedValue(state, var)
