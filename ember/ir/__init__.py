"""Ember's graph IR: types, graph and verifier, op rule tables, tracer, printers."""

from .graph import Atom, Graph, GraphError, Lit, Node, Var, check_graph
from .ops import OPS, OpDef
from .printing import format_graph, to_dot, to_mermaid
from .types import AnyT, Batched, Json, ListT, ResponseT, Str, Type

__all__ = [
    "Atom", "Graph", "GraphError", "Lit", "Node", "Var", "check_graph", "OPS", "OpDef",
    "format_graph", "to_dot", "to_mermaid", "AnyT", "Batched", "Json", "ListT",
    "ResponseT", "Str", "Type",
]
