"""The graph: flat, typed, A-normal form (a jaxpr for LLM programs).

A `Graph` has input `Var`s, `Node`s in topological order, and outputs. A `Node` has
an op from the closed set in `ops.OPS`, inputs (vars or literals), hashable params,
one output var, and the user's source location.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Iterable, Mapping

from ..errors import EmberError
from .types import Type

__all__ = ["Var", "Lit", "Node", "Graph", "check_graph", "GraphError", "Atom", "fresh_var"]

_ids = itertools.count()
_new = object.__new__
# the meta of a node no pass annotated: shared and read-only (a dict per node cost an
# allocation per traced value; passes give a node new meta by making a new node)
NO_META: Mapping[str, Any] = MappingProxyType({})


class GraphError(EmberError):
    """The verifier found an ill-formed graph (a bug in a pass or the tracer)."""


class Var:
    __slots__ = ("id", "type")

    def __init__(self, type: Type, id: int | None = None) -> None:
        self.id = next(_ids) if id is None else id
        self.type = type

    def __repr__(self) -> str:
        return f"%{self.id}"


def fresh_var(type: Type) -> Var:
    return Var(type)


@dataclass(frozen=True, slots=True)
class Lit:
    """A literal input: a Python value, hashable unless an `ember.op` was given one
    (passes leave a node holding an unhashable one unmerged). Its ``id`` is None (no
    var has that id), so a sweep keyed by var id can look up any atom without checking
    its kind."""

    value: Any
    id: ClassVar[None] = None

    def __repr__(self) -> str:
        return repr(self.value)


Atom = Var | Lit


class Node:
    __slots__ = ("op", "inputs", "params", "out", "loc", "meta")

    def __init__(self, op: str, inputs: Iterable[Atom], params: dict[str, Any] | tuple,
                 out: Var, loc: str | None = None, meta: Mapping[str, Any] | None = None) -> None:
        if op not in OPS:
            raise GraphError(f"unknown op {op!r}; ops are {', '.join(sorted(OPS))}")
        self.op = op
        self.inputs = tuple(inputs)
        items = tuple(sorted(params.items())) if isinstance(params, dict) else tuple(params)
        try:
            hash(items)
        except TypeError as exc:
            raise GraphError(f"params of a {op!r} node must be hashable: {exc}") from None
        self.params = items
        self.out = out
        self.loc = loc
        # annotations passes add and declare (fuse: the fused calls' locations)
        self.meta = meta if meta is not None else NO_META

    @classmethod
    def trusted(cls, op: str, inputs: tuple[Atom, ...], params: tuple, out: Var,
                loc: str | None = None, meta: Mapping[str, Any] | None = None) -> Node:
        """A node from parts its builder vouches for: a known op, a tuple of inputs and
        params as name-sorted, hashable pairs. Skips the constructor's checks, whose
        hash of the params alone costs ~1 µs on a model call's (tracer and passes)."""
        node = _new(cls)
        node.op = op
        node.inputs = inputs
        node.params = params
        node.out = out
        node.loc = loc
        node.meta = NO_META if meta is None else meta
        return node

    def param(self, name: str, default: Any = None) -> Any:
        for k, v in self.params:
            if k == name:
                return v
        return default

    def replace(self, **changes: Any) -> Node:
        fields = {"op": self.op, "inputs": self.inputs, "params": self.params,
                  "out": self.out, "loc": self.loc, "meta": dict(self.meta)}
        fields.update(changes)
        return Node(**fields)

    def __repr__(self) -> str:
        from .printing import format_node

        return format_node(self)


@dataclass(slots=True)  # (no per-graph __dict__: passes make one graph each)
class Graph:
    inputs: list[Var]
    nodes: list[Node]
    outputs: list[Atom]
    meta: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        from .printing import format_graph

        return format_graph(self)

    def count(self, op: str) -> int:
        return sum(1 for n in self.nodes if n.op == op)

    def producers(self) -> dict[int, Node]:
        return {n.out.id: n for n in self.nodes}

    def users(self) -> dict[int, list[Node]]:
        out: dict[int, list[Node]] = {}
        for n in self.nodes:
            for a in n.inputs:
                if isinstance(a, Var):
                    out.setdefault(a.id, []).append(n)
        return out


def check_graph(graph: Graph) -> Graph:
    """Verify: every var is defined once before use; node types follow the op's type rule."""
    defined: dict[int, Var] = {}
    for v in graph.inputs:
        if v.id in defined:
            raise GraphError(f"input {v} is listed twice")
        defined[v.id] = v
    for i, node in enumerate(graph.nodes):
        for a in node.inputs:
            if isinstance(a, Var) and a.id not in defined:
                raise GraphError(f"node {i} uses {a} before it is defined" + _around(graph, i))
            if isinstance(a, Var) and defined[a.id] is not a and defined[a.id].type != a.type:
                raise GraphError(f"node {i}: {a} has two types" + _around(graph, i))
        if node.out.id in defined:
            raise GraphError(f"node {i} redefines {node.out}" + _around(graph, i))
        try:
            expected = OPS[node.op].type_rule(node)
        except GraphError as exc:
            raise GraphError(f"node {i}: {exc.message}" + _around(graph, i)) from None
        if expected != node.out.type:
            raise GraphError(f"node {i}: {node.op} should produce {expected}, its output is "
                             f"typed {node.out.type}" + _around(graph, i))
        defined[node.out.id] = node.out
    for a in graph.outputs:
        if isinstance(a, Var) and a.id not in defined:
            raise GraphError(f"output {a} is never defined")
    return graph


def _around(graph: Graph, i: int) -> str:
    from .printing import format_node

    lo, hi = max(0, i - 2), min(len(graph.nodes), i + 3)
    lines = [("--> " if j == i else "    ") + format_node(graph.nodes[j]) for j in range(lo, hi)]
    return "\n" + "\n".join(lines)


from .ops import OPS  # noqa: E402  (ops' type rules refer back to Var)
