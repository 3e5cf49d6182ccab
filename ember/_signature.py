"""Input signatures (jit's cache keys) and the tracers a call's arguments become.

A signature is the structure of the arguments and the values a trace reads as
constants: strings and answers are traced (any text fits one signature), numbers and
other objects are keyed by value, an object without a value key by identity (held
weakly where it can be: a session or callback per request kept its payload alive).
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any

from ._response import Response
from .ir.trace import TraceState

__all__ = ["signature_of", "trace_inputs"]


def signature_of(value: Any) -> Any:
    """The structure and static values of arguments: the graph cache key."""
    if isinstance(value, str):
        return "S"
    if isinstance(value, Response):
        return "R"
    if isinstance(value, (bool, int, float, type(None))):
        return (type(value).__name__, value)
    if isinstance(value, list):
        return ("list", tuple(signature_of(v) for v in value))
    if isinstance(value, tuple):
        return ("tuple", tuple(signature_of(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((k, signature_of(v)) for k, v in value.items()))
    return _static(value)


def _static(value: Any) -> Any:
    """The key of a value the trace reads as a constant (a field of a config object):
    by value, strings included. Dataclasses and pydantic models by their fields, so
    one mutated, or a new one that reuses a freed one's id, is not keyed as the old
    (its graph would send the old prompts: paid for, then sent again by the check)."""
    if isinstance(value, (str, bool, int, float, type(None), bytes)):
        return value.__class__, value
    if isinstance(value, Response):
        return "R", value.text
    if isinstance(value, (list, tuple)):
        return value.__class__, tuple(_static(v) for v in value)
    if isinstance(value, dict):
        return dict, tuple((k, _static(v)) for k, v in value.items())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return value.__class__, tuple((f.name, _static(getattr(value, f.name)))
                                      for f in dataclasses.fields(value))
    model_fields = getattr(value.__class__, "model_fields", None)  # pydantic
    if isinstance(model_fields, dict) and hasattr(value, "model_dump"):
        return value.__class__, tuple((k, _static(getattr(value, k))) for k in model_fields)
    cls = value.__class__
    if cls.__hash__ is object.__hash__ and cls.__eq__ is object.__eq__ or cls.__hash__ is None:
        # keyed by identity: held weakly where it can be (a session or callback per
        # request kept its whole payload alive in up to MAX_SIGNATURES entries)
        try:
            return ("id", cls.__name__, id(value), _Weak(weakref.ref(value)))
        except TypeError:
            pass
    try:
        hash(value)
        return ("obj", value)
    except TypeError:  # (the entry keeps the object: its id is not reused meanwhile)
        return ("id", cls.__name__, id(value), _Held(value))


class _Held:
    """An object kept by a signature, equal to any other (the id beside it decides)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Held)

    def __hash__(self) -> int:
        return 0


class _Weak:
    """An object a signature refers to weakly: equal only to the same live object (an
    object made later at a dead one's id is another object)."""

    __slots__ = ("ref",)

    def __init__(self, ref: weakref.ref) -> None:
        self.ref = ref

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Weak) and self.ref() is not None and \
            self.ref() is other.ref()

    def __hash__(self) -> int:
        return 0


def trace_inputs(value: Any, state: TraceState | None, leaves: list[Any]) -> Any:
    """Replace strings and Responses by tracers (collecting the concrete leaves)."""
    cls = value.__class__
    if cls in _SCALARS:
        return value
    if cls is tuple:  # (args, kwargs) on every call, then args: scalars stay as they are
        return tuple([v if v.__class__ in _SCALARS else trace_inputs(v, state, leaves)
                      for v in value])
    if cls is dict and not value:  # no kwargs
        return {}
    if isinstance(value, (str, Response)):
        leaves.append(value)
        return state.input(value) if state is not None else value
    if isinstance(value, list):
        return [trace_inputs(v, state, leaves) for v in value]
    if isinstance(value, tuple):
        return tuple([trace_inputs(v, state, leaves) for v in value])
    if isinstance(value, dict):
        return {k: trace_inputs(v, state, leaves) for k, v in value.items()}
    return value


_SCALARS = frozenset({int, float, bool, type(None), bytes})  # never traced: as they are
