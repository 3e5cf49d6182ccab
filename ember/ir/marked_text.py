"""`MarkedText`: the text of a model answer not known yet, while tracing.

``.text`` of such an answer is a real ``str`` holding a *marker* (the delimiters below,
the trace's nonce and an index) that `TraceState.atomize` parses back into the traced
value. So f-strings, joins, concatenation and C code (re, json) take it. Its Python-level
methods do what the real text would need: str-returning edits and slices are recorded as
nodes, value-dependent uses (``==``, ``in``, ``len``, ``split``...) are graph breaks.
"""

from __future__ import annotations

from typing import Any, Callable

from . import trace as _t  # (late-bound: the tracer imports this module)
from .graph import Var
from .locations import user_location
from .ops import REPR_SPEC, STR_METHODS
from .types import ResponseT, Str

__all__ = ["MarkedText", "marked_var"]

# ASCII start/end of text: not whitespace or line breaks, so strip() and splitlines()
# keep them; and strings holding markers stay one byte per character
# (a private-use code point made every prompt UCS-2, and each split convert back)
_MARK_OPEN, _MARK_CLOSE = "\x02", "\x03"


class MarkedText(str):
    """The text of a model answer that is not known yet: its marker, a plain ``str`` to
    f-strings, joins, concatenation and C code (re, json). Its str-returning methods
    (`STR_METHODS`) and slices are recorded as nodes, so ``.text.strip()`` or
    ``.text[:500]`` in a prompt plans the prompt eager Python builds. (Applied to the
    marker itself they left it whole, and the plan sent the whole answer: a wasted
    request per call the check run then had to send again.)"""

    __slots__ = ()

    def _derive(self, name: str, args: tuple) -> str:
        state = _t._current()
        var = marked_var(state, self) if state is not None else None
        if var is None:  # kept past its trace (or read in another): a plain str
            return _edit(str(self), name, args)
        for a in args:
            if isinstance(a, _t.Traced) or (isinstance(a, str) and _MARK_OPEN in a):
                # an argument that is itself traced: computed on the real text
                return self._decide(f"`.{name}()` with a traced argument, of",
                                    lambda text: _edit(text, name, args))
        out = state.add("method", [var], {"name": name, "args": args}, Str, user_location(3))
        return MarkedText(_t._mark(_t.TracedStr(state, out), ""))

    # Value-dependent uses: graph breaks that compute on the real text, as on a tracer
    # (on the marker, `"yes" in text` or `text == "yes"` planned the wrong branch; the
    # check run then sent its calls again and made the signature strict, which plans
    # `[models(...).text for ...]` one call at a time). A string holding a marker is
    # Ember's own look-up (atomize, leak checks): answered on the marker itself.
    def _decide(self, reason: str, op: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        state = _t._current()
        var = marked_var(state, self) if state is not None else None
        if var is None:
            return op(str(self), *args, **kwargs)
        value = state.need(_t.wrap(state, var), reason + " a model's answer")
        # (unreached: a MarkedText's answer is unknown in its trace, so need suspends)
        text = value.text if var.type is ResponseT else value  # pragma: no cover
        return op(text, *args, **kwargs)  # pragma: no cover

    def __contains__(self, item: Any) -> bool:
        if not isinstance(item, str) or _MARK_OPEN in item or _MARK_CLOSE in item:
            return str.__contains__(self, item)
        return self._decide("`in` on", str.__contains__, item)

    def __hash__(self) -> int:  # a dict or set look-up (`text in {"yes", "no"}`,
        # `ROUTES.get(text)`) on the placeholder missed silently: a wrong plan
        return self._decide("hashing (a dict or set look-up of)", str.__hash__)

    def __len__(self) -> int:
        return self._decide("len() of", len)

    def __iter__(self) -> Any:
        return self._decide("iterating over", iter)

    def __format__(self, spec: str) -> str:
        if not spec:  # f"{text}": the marker itself (most uses)
            return str.__str__(self)
        state = _t._current()  # f"{text:>40}": padded in the graph, not around the marker
        var = marked_var(state, self) if state is not None else None
        if var is None:
            return str.__format__(self, spec)
        return _t._mark(_t.wrap(state, var), spec)

    def __repr__(self) -> str:  # f"{texts}" of a list of answers, f"{text!r}": in the
        state = _t._current()  # graph, the repr of the real text (as for a tracer)
        var = marked_var(state, self) if state is not None else None
        if var is None:
            return str.__repr__(self)
        if var.type is not Str:  # an answer: the repr of its text, not of the Response
            var = state._text_atom(var, None)
        return _t._mark(_t.TracedStr(state, var), REPR_SPEC)

    # concatenation stays traced text: `"Notes: " + text` was a plain str holding the
    # marker, so len() of it read the marker's length (a loop planned the wrong count)
    def __add__(self, other: Any) -> Any:
        if not isinstance(other, str):
            return NotImplemented
        return self._joined(str.__str__(self) + other)

    def __radd__(self, other: Any) -> Any:
        if not isinstance(other, str):
            return NotImplemented
        return self._joined(other + str.__str__(self))

    def _joined(self, text: str) -> str:
        state = _t._current()
        if state is None or marked_var(state, self) is None:  # kept past its trace
            return text
        atom = state.atomize(text, user_location(3))
        return MarkedText(_t._mark(_t.TracedStr(state, atom), "")) if isinstance(atom, Var) \
            else text

    def __bool__(self) -> bool:  # (not a break: `text or "-"` in a list of calls would
        return True  # run them one by one; an empty answer is caught by the check run)

    def __getitem__(self, key: Any) -> str:
        if key.__class__ is int:  # one character: the slice of it (out of range, the
            key = slice(key, key + 1 if key != -1 else None)  # check run raises)
        if key.__class__ is slice and all(k is None or k.__class__ is int
                                          for k in (key.start, key.stop, key.step)):
            return self._derive("slice", (key.start, key.stop, key.step))
        return str.__getitem__(self, key)  # (a bad index: str's own error)


def _compared(name: str, symbol: str) -> Callable[[MarkedText, Any], Any]:
    op = getattr(str, f"__{name}__")

    def compare(self: MarkedText, other: Any) -> Any:
        if other.__class__ is MarkedText:  # two answers (sorting them): both real
            if str.__eq__(self, other):  # the same answer (a dict look-up)
                return op(self, other)
            other = other._decide(f"`{symbol}` on", str)
        elif not isinstance(other, str) or _MARK_OPEN in other:  # Ember's own look-ups
            return op(self, other)
        return self._decide(f"`{symbol}` on", op, other)
    return compare


for _name, _symbol in (("eq", "=="), ("ne", "!="), ("lt", "<"), ("le", "<="), ("gt", ">"),
                       ("ge", ">=")):
    setattr(MarkedText, f"__{_name}__", _compared(_name, _symbol))
del _symbol


def _valued(name: str) -> Callable[..., Any]:
    """A str method whose result is not a str (``split``, ``startswith``, ``find``...)
    on a `MarkedText`: a break computing it on the real text, and on the real text of
    answers among its arguments. (On the marker it was nearly always wrong:
    ``text.split()[0]`` was the whole answer.)"""
    method = getattr(str, name)

    def valued(self: MarkedText, *args: Any, **kwargs: Any) -> Any:
        args = tuple(tuple(map(_real, a)) if isinstance(a, tuple) else _real(a) for a in args)
        return self._decide(f"`.{name}()` of", method, *args, **kwargs)
    return valued


def _real(value: Any) -> Any:
    return value._decide("an argument of", str) if value.__class__ is MarkedText else value


for _name in ("split", "rsplit", "splitlines", "partition", "rpartition", "startswith",
              "endswith", "find", "rfind", "index", "rindex", "count", "isdigit",
              "isdecimal", "isnumeric", "isalpha", "isalnum", "isspace", "islower",
              "isupper", "istitle"):
    setattr(MarkedText, _name, _valued(_name))


def _edit(text: str, name: str, args: tuple) -> str:
    """What `MarkedText._derive` records, done on a real str."""
    return text[slice(*args)] if name == "slice" else getattr(text, name)(*args)


def _derived(name: str) -> Callable[..., str]:
    return lambda self, *args: self._derive(name, args)


for _name in STR_METHODS:
    setattr(MarkedText, _name, _derived(_name))
del _name


def marked_var(state: _t.TraceState, text: MarkedText) -> Var | None:
    """The var a `MarkedText` of ``state`` stands for; None for another trace's."""
    opening = state._mark_open
    if not str.startswith(text, opening):  # (str's own: not MarkedText's break)
        return None
    return state.marked[int(str.__getitem__(text, slice(len(opening), -1)))]
