"""Common-subexpression elimination: merge identical nodes.

Two nodes are identical when they have the same op, params and inputs (after the
inputs themselves were merged). One forward sweep with a hash table keyed by that
triple, so the pass is linear in the graph size.

Model calls merge only when they are deterministic (``deterministic=True`` on an
``llm`` node; every element of an ``llm_batch``): a sampled call is a distinct
sample, and merging two would silently break self-consistency and ensembles.
Effectful nodes never merge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..ir.graph import Graph, Lit, Node, Var
from ..ir.ops import OPS
from .dce import CALL_OPS, Interner, carry_meta, completions, plural

__all__ = ["cse", "CseStats", "mergeable"]

_LIT = object()  # tags literal keys apart from var ids
_EFFECTFUL = ("effectful", True)  # in a node's params: an effectful `call`
_DETERMINISTIC = ("deterministic", True)  # in an llm node's params: mergeable
_new = object.__new__
# pure ops that call no model: they merge unless their params say effectful
_PLAIN = frozenset(name for name, d in OPS.items() if d.pure and not d.calls_model)


@dataclass(frozen=True)
class CseStats:
    merged_nodes: int = 0
    merged_calls: int = 0  # model-call nodes among them
    merged_completions: int = 0  # answers of those calls (their representatives give them)

    def counts(self, calls: int, completions: int) -> tuple[int, int]:
        """(model-call nodes, completions) after the pass, from those before it."""
        return calls - self.merged_calls, completions - self.merged_completions

    @property
    def summary(self) -> str:
        if not self.merged_nodes:
            return "cse: nothing merged"
        return (f"cse: merged {plural(self.merged_calls, 'llm call')}, "
                f"{plural(self.merged_nodes, 'node')}")

    def __str__(self) -> str:
        return self.summary


def mergeable(node: Node) -> bool:
    op = node.op
    if not OPS[op].pure or node.param("effectful", False):  # ops.is_effectful, inlined
        return False
    if op not in CALL_OPS:
        return True
    if op == "llm":
        return node.param("deterministic", False) is True
    if op == "llm_batch":
        flags = node.param("deterministic", ())
        return bool(flags) and all(f is True for f in flags)
    return False


def cse(graph: Graph) -> tuple[Graph, CseStats]:
    subst: dict[int, Var] = {}  # merged var id -> the representative's var
    table: dict[tuple, Var] = {}
    nodes: list[Node] = []
    keep = nodes.append
    merged = merged_calls = merged_done = 0
    intern = Interner()  # model calls' params (see Interner)
    interned = intern.by_id.get  # its identity hits, without a call
    plain, calls, lit_tag = _PLAIN, CALL_OPS, _LIT
    none_key = (_LIT, type(None), None)
    for node in graph.nodes:
        ins = node.inputs
        if subst:
            for a in ins:
                if a.id in subst:  # (a literal's id is None: never in subst)
                    ins = tuple([subst.get(b.id, b) if b.__class__ is Var else b for b in ins])
                    user = _new(Node)  # (a copy with the new inputs)
                    user.op, user.inputs, user.params = node.op, ins, node.params
                    user.out, user.loc, user.meta = node.out, node.loc, node.meta
                    node = user
                    break
        op = node.op
        params: Any = node.params
        if op in plain:  # mergeable(), inlined
            if _EFFECTFUL in params:
                keep(node)
                continue
        elif op == "llm":  # params sorted by name: "deterministic" comes first
            head = params[0] if params else ("", None)
            if head[1] is not True or head[0] != "deterministic":  # a sample
                if head[0] == "deterministic" or not mergeable(node):
                    keep(node)
                    continue
            hit = interned(id(params))  # (the calls of a models() line share params)
            params = intern(params) if hit is None else hit[1]  # see Interner
        elif op in calls and mergeable(node):
            params = intern(params)
        else:
            keep(node)
            continue
        # same op, params and inputs -> same value. A var stands for itself (vars hash
        # and compare by identity); literals are type-tagged because 1, 1.0 and True
        # format differently. One or two inputs (most nodes) skip the generic build.
        if len(ins) == 1:
            a = ins[0]
            key = (op, params, a if a.__class__ is Var else (lit_tag, a.value.__class__, a.value))
        elif len(ins) == 2:
            a, b = ins
            key = (op, params,
                   a if a.__class__ is Var else (lit_tag, a.value.__class__, a.value),
                   b if b.__class__ is Var else none_key if b.value is None
                   else (lit_tag, b.value.__class__, b.value))  # (None: no system)
        else:
            key = (op, params, *[a if a.__class__ is Var else (lit_tag, a.value.__class__, a.value)
                                 for a in ins])
        try:
            rep = table.setdefault(key, node.out)  # one hash of the key
        except TypeError:  # an unhashable literal: leave the node alone
            keep(node)
            continue
        if rep is not node.out:
            subst[node.out.id] = rep
            merged += 1
            if op in calls:
                merged_calls += 1
                merged_done += completions(node)
            continue
        keep(node)
    if not merged:
        return (Graph(list(graph.inputs), nodes, list(graph.outputs), dict(graph.meta)),
                CseStats())
    outputs: list[Var | Lit] = [subst.get(a.id, a) if a.__class__ is Var else a
                                for a in graph.outputs]
    meta = carry_meta(graph)  # who was merged into whom, for inspect's pictures
    meta["merged"] = {**meta.get("merged", {}), **{k: v.id for k, v in subst.items()}}
    return (Graph(list(graph.inputs), nodes, outputs, meta),
            CseStats(merged, merged_calls, merged_done))
