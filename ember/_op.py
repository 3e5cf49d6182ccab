"""`ember.op`: a plain Python function as one opaque graph node (like torch.fx.wrap)."""

from __future__ import annotations

import functools
from typing import Any, Callable

from .ir.graph import Lit
from .ir.trace import StopTrace, TraceState, current_trace, has_traced, user_location, wrap

__all__ = ["op"]


def op(fn: Callable | None = None, *, effectful: bool = False) -> Any:
    """Mark a Python function as one opaque graph node that runs on real values.

    Inside a trace, calling it with traced arguments records a ``call`` node instead of
    running it (like ``torch.fx.wrap``), so its inner Python is no graph break.
    ``effectful=True`` keeps it even when its result is unused.
    """
    if fn is None:
        return lambda f: op(f, effectful=effectful)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        state = current_trace()
        if state is None:
            return fn(*args, **kwargs)
        if not has_traced((args, kwargs), state):
            return fn(*args, **kwargs)
        loc = user_location(2)
        names = tuple(kwargs)
        atoms = [_op_atom(state, a, loc) for a in (*args, *kwargs.values())]
        params = {"fn": fn, "kwargs": names}
        if effectful:
            params["effectful"] = True
        var = state.add("call", atoms, params, None, loc)
        return wrap(state, var)

    wrapper.__ember_op__ = True  # type: ignore[attr-defined]
    return wrapper


def _op_atom(state: TraceState, value: Any, loc: str | None) -> Any:
    if isinstance(value, (list, tuple)):
        atoms = [_op_atom(state, v, loc) for v in value]
        if isinstance(value, tuple) and all(isinstance(a, Lit) for a in atoms):
            return Lit(tuple(a.value for a in atoms))
        kind = "tuple" if isinstance(value, tuple) else "list"
        return state.add("pack", atoms, {"kind": kind}, None, loc)
    if isinstance(value, dict):
        atoms = [_op_atom(state, v, loc) for v in value.values()]
        return state.add("pack", atoms, {"kind": "dict", "keys": tuple(value)}, None, loc)
    atom = state.atomize(value, loc)
    if isinstance(atom, Lit):
        try:
            hash(atom.value)
        except TypeError:
            raise StopTrace("an unhashable constant passed to an ember.op") from None
    return atom
