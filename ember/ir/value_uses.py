"""`ValueUses`: the uses of a traced value that need the value itself.

Each is a graph break: ``self._need(reason)`` (a `Traced` method) returns the value when
it is known, or suspends the trace so that the calls recorded so far run first. Then the
use is computed on the real value, as eager Python would. Comparisons, ``bool``, ``len``,
iteration, hashing, conversions and every arithmetic operator (a missing one raised
TypeError, which stopped the trace with no break named).
"""

from __future__ import annotations

import math
import operator
from typing import Any, Callable

__all__ = ["ValueUses"]


class ValueUses:
    """Mixed into `Traced`: its value-dependent dunders."""

    __slots__ = ()
    _need: Callable[[str], Any]  # (Traced's)

    def __bool__(self) -> bool:
        return bool(self._need("bool() / if / while on a traced value"))

    def __len__(self) -> int:
        return len(self._need("len() of a traced value"))

    def __iter__(self):
        return iter(self._need("iterating over a traced value"))

    def __contains__(self, item: Any) -> bool:
        return item in self._need("`in` on a traced value")

    def __eq__(self, other: Any) -> bool:  # type: ignore[override]
        return self._need("== on a traced value") == other

    def __ne__(self, other: Any) -> bool:  # type: ignore[override]
        return self._need("!= on a traced value") != other

    def __lt__(self, other: Any) -> bool:
        return self._need("< on a traced value") < other

    def __le__(self, other: Any) -> bool:
        return self._need("<= on a traced value") <= other

    def __gt__(self, other: Any) -> bool:
        return self._need("> on a traced value") > other

    def __ge__(self, other: Any) -> bool:
        return self._need(">= on a traced value") >= other

    def __hash__(self) -> int:
        return hash(self._need("hashing a traced value"))

    def __int__(self) -> int:
        return int(self._need("int() of a traced value"))

    def __float__(self) -> float:
        return float(self._need("float() of a traced value"))

    def __index__(self) -> int:
        return self._need("using a traced value as an index").__index__()


def _breaking(name: str, reason: str, fn: Callable[..., Any]) -> None:
    """Operator ``name`` on a tracer, and its reflected form for binary ones: a graph
    break computing on the tracer's value. (A missing operator raised TypeError, which
    stopped the trace with no break named, and jit then re-planned on every call.)"""
    reason += " a traced value"
    setattr(ValueUses, f"__{name}__", lambda self, *other: fn(self._need(reason), *other))
    if name in _BINARY:
        setattr(ValueUses, f"__r{name}__", lambda self, other: fn(other, self._need(reason)))


_BINARY = {"add": ("+", operator.add), "sub": ("-", operator.sub), "mul": ("*", operator.mul),
           "truediv": ("/", operator.truediv), "floordiv": ("//", operator.floordiv),
           "mod": ("%", operator.mod), "pow": ("**", pow), "divmod": ("divmod()", divmod),
           "and": ("&", operator.and_), "or": ("|", operator.or_), "xor": ("^", operator.xor),
           "lshift": ("<<", operator.lshift), "rshift": (">>", operator.rshift),
           "matmul": ("@", operator.matmul)}
for _name, (_symbol, _fn) in _BINARY.items():
    _breaking(_name, f"`{_symbol}` on", _fn)
for _name, _fn in (("neg", operator.neg), ("pos", operator.pos), ("abs", abs),
                   ("invert", operator.invert), ("round", round), ("trunc", math.trunc),
                   ("floor", math.floor), ("ceil", math.ceil), ("complex", complex),
                   ("reversed", reversed)):
    _breaking(_name, f"{_name}() of", _fn)
del _name, _symbol, _fn
