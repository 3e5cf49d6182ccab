"""Which reads of model answers to blame when a plan turns out wrong.

While planning, an unfinished answer's text is a placeholder. Recorded ops (f-strings,
``.strip()``, slices) carry it faithfully into the graph; C code (``re``,
``json.loads``) reads the placeholder itself and may plan the wrong prompt or branch.
jit's check run finds such a plan wrong; these functions name the suspects, as the
source locations of the model calls whose reads should from then on wait for the
answer (strict reads), so that every other read stays optimistic.
"""

from __future__ import annotations

from typing import Any, Iterable

from .graph import Node, Var
from .ops import OPS

__all__ = ["origin", "unconsumed_reads", "answers_feeding"]

_MODEL_OPS = frozenset(name for name, d in OPS.items() if d.impl is None)  # sent, not run


def origin(state: Any, var: Var) -> Node | None:
    """The model call a traced value comes from: its producer, or the first var
    input's, back to a model call (``.json()["key"]`` of an answer: the answer's)."""
    producer = state._index()
    node = producer.get(var.id)
    while node is not None and node.op not in _MODEL_OPS:
        first = next((a for a in node.inputs if a.__class__ is Var), None)
        node = producer.get(first.id) if first is not None else None
    return node


def unconsumed_reads(state: Any, outputs: Iterable[Any] = ()) -> set[str]:
    """Where the model calls were made whose text Python read (a marker was handed out)
    but no recorded op took in: that text went where the trace cannot see, such as
    ``re`` or ``json.loads``. The first suspects."""
    taken = {a.id for node in state.nodes for a in node.inputs}
    taken.update(a.id for a in outputs)
    taken.update(state.needed)  # (a break awaited it: read for real, not a placeholder)
    return {node.loc for var in set(state.marked) if var.id not in taken
            and (node := origin(state, var)) is not None and node.loc is not None}


def answers_feeding(state: Any, loc: str) -> set[str]:
    """Where the model calls were made whose answers the calls made at ``loc`` take in
    (through local ops): the suspects when a plan sent a wrong prompt there and no
    read went unseen (the placeholder passed through C code whole)."""
    producer = state._index()
    stack = [a for n in state.nodes if n.loc == loc and n.op in _MODEL_OPS for a in n.inputs]
    seen: set[int] = set()
    found: set[str] = set()
    while stack:
        a = stack.pop()
        node = producer.get(a.id)  # (a literal's id is None: no producer)
        if node is None or a.id in seen:
            continue
        seen.add(a.id)
        if node.op in _MODEL_OPS:
            if node.loc is not None:
                found.add(node.loc)
        else:
            stack += node.inputs
    return found
