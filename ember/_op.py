"""`ember.op`: a plain Python function as one opaque graph node (like torch.fx.wrap)."""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

from ._models import check_var
from .backends.local import _Once, _snapshot
from .backends.memo import MISSING
from .ir.graph import Lit, Var
from .ir.trace import (_MARK_CLOSE, _MARK_OPEN, StopTrace, TraceState, current_trace,
                       has_traced, user_location, wrap)

__all__ = ["op"]


def op(fn: Callable | None = None, *, effectful: bool = False) -> Any:
    """Mark a Python function as one opaque graph node that runs on real values.

    Inside a trace, calling it with traced arguments records a ``call`` node instead of
    running it (like ``torch.fx.wrap``), so its inner Python is no graph break.
    ``effectful=True`` keeps it even when its result is unused, and a jitted call runs
    it once, as eager Python does: where the graph ran it, the check run reuses that
    run's result (or exception) instead of running it again.
    """
    if fn is None:
        return lambda f: op(f, effectful=effectful)
    if not callable(fn):
        raise TypeError(f"op() needs a function, got {fn!r}")

    @functools.wraps(fn, updated=())
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        state = current_trace()
        if state is None:
            check = check_var.get() if effectful else None
            if check is not None:  # jit's check run: the graph may have run it already
                values = [*args, *kwargs.values()]
                done = check.memo.take_effect(fn, values, check)
                if done is MISSING:  # (kept, taken: a check run that starts over reuses it)
                    before = _snapshot(values)
                    try:
                        done = fn(*args, **kwargs)
                    except Exception as exc:
                        done = exc
                    if inspect.iscoroutine(done):  # (awaited once, however often read)
                        done = _Once(done)
                    check.memo.put_effect(fn, before, done, -1, taker=check)
                if isinstance(done, BaseException):
                    raise done
                return done
            return fn(*args, **kwargs)
        if not effectful and not has_traced((args, kwargs), state):
            return fn(*args, **kwargs)
        loc = user_location(2)
        names = tuple(kwargs)
        atoms = [_op_atom(state, a, loc) for a in (*args, *kwargs.values())]
        if effectful and any(isinstance(a, Lit) and _marked(a.value) for a in atoms):
            # a model answer's text was cut or changed before it got here (a leaked
            # marker): never run an effect on that; the check run calls it for real
            raise StopTrace("a changed model answer reached an effectful ember.op")
        params = {"fn": fn, "kwargs": names}
        if effectful:
            params["effectful"] = True
        var = state.add("call", atoms, params, None, loc)
        if not effectful:  # (the check run calls it on the real values: they are read)
            state.read.extend(a for a in atoms if isinstance(a, Var))
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
    # (a constant Python cannot hash, a set or a dataclass, is a literal all the same:
    # the passes leave a node holding one unmerged, and a replayed graph hands the op
    # the object it was traced with, of equal content: the signature keys it so)
    return state.atomize(value, loc)


def _marked(value: Any) -> bool:
    """Does a constant hold marker characters (a whole or a cut marker)?"""
    if isinstance(value, str):
        return _MARK_OPEN in value or _MARK_CLOSE in value
    if isinstance(value, (tuple, list)):
        return any(_marked(v) for v in value)
    if isinstance(value, dict):
        return any(_marked(v) for v in value.values())
    return False
