"""vmap's batching transform: ``Graph -> Graph`` through per-op batching rules.

The input is the optimized graph of one element; ``mapped`` says which of its inputs
differ per element. Interpreting the graph under the rules (JAX's ``batching.py``
is the model) gives every var one of two forms:

- *batched*: one value per element (``Batched[T]``); its node gets ``lanes=size``.
  An ``llm`` node with lanes is a batched call: ``size`` requests.
- *unbatched*: one value shared by all elements. Its node is computed once for the
  whole map: it is *hoisted* out of the per-element work.

A node with a batched input is batched. A node whose inputs are all unbatched is
hoisted, unless the plain map would run it once per element with different
outcomes: a sampled model call (each element draws its own sample) or an effectful
`ember.op`. Those are batched too (broadcast inputs, one lane per element).

``vmap`` uses the result at run time: the hoisted calls are made once (a rubric
every element is graded against costs one request, not one per element, and is
off every element's critical path), and each element runs the rest in its lane
under the sliding window. `check_batched` verifies a batched graph; `unbatch`
gives back the per-element graph.
"""

from __future__ import annotations

import random

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..ir.graph import Graph, GraphError, Node, Var, check_graph
from ..ir.ops import is_effectful
from ..ir.types import Batched, Type
from .dce import carry_meta
from .estimate import Estimate, estimate
from .fuse import CapsCache

__all__ = ["batch_graph", "check_batched", "unbatch", "VmapStats", "BATCH_RULES",
           "hoisted_nodes", "map_estimate", "split_hoistable"]


@dataclass(frozen=True)
class VmapStats:
    size: int
    hoisted_calls: int  # model-call nodes made once for all elements
    batched_calls: int  # model-call nodes made once per element
    hoisted_nodes: int
    batched_nodes: int
    hoisted_requests: int = 0
    lane_requests: int = 0  # requests per element (after fusion)

    @property
    def requests(self) -> int:
        """Requests for the whole map."""
        return self.hoisted_requests + self.size * self.lane_requests

    @property
    def summary(self) -> str:
        return (f"vmap over {self.size:,} elements: {_calls(self.hoisted_calls)} hoisted "
                f"(made once), {_calls(self.batched_calls)} batched per element; "
                f"{self.requests:,} requests in all")

    def __str__(self) -> str:
        return self.summary


def _calls(n: int) -> str:
    return f"{n} llm call" + ("" if n == 1 else "s")


# ---- rules: does a node with these batched inputs run once per element? ----------------
def _elementwise(node: Node, batched_inputs: list[bool]) -> bool:
    return any(batched_inputs)


def _model_call(node: Node, batched_inputs: list[bool]) -> bool:
    det = node.param("deterministic", False)
    deterministic = all(det) if isinstance(det, tuple) else bool(det)
    return any(batched_inputs) or not deterministic  # each element its own sample


def _op_call(node: Node, batched_inputs: list[bool]) -> bool:
    return any(batched_inputs) or is_effectful(node)  # each element runs its effect


BATCH_RULES: dict[str, Callable[[Node, list[bool]], bool]] = {
    "format": _elementwise, "attr": _elementwise, "method": _elementwise,
    "getitem": _elementwise, "pack": _elementwise,
    "llm": _model_call, "llm_batch": _model_call, "call": _op_call,
}


def batch_graph(graph: Graph, mapped: Sequence[bool], size: int) -> tuple[Graph, VmapStats]:
    """The batched graph of ``size`` elements; ``mapped[i]``: input ``i`` differs per
    element. Node order, ops, params (plus ``lanes``) and locations are kept."""
    if len(mapped) != len(graph.inputs):
        raise GraphError(f"vmap: {len(mapped)} mapped flags for {len(graph.inputs)} inputs")
    new: dict[int, Var] = {}
    caps = CapsCache()

    def fresh(var: Var, batched: bool) -> Var:
        out = new[var.id] = Var(Batched(var.type) if batched else var.type)
        return out

    inputs = [fresh(v, m) for v, m in zip(graph.inputs, mapped)]
    nodes: list[Node] = []
    hoisted_calls = batched_calls = hoisted_nodes = 0
    hoisted_requests = lane_requests = 0
    for node in graph.nodes:
        atoms = [new[a.id] if isinstance(a, Var) else a for a in node.inputs]
        flags = [isinstance(a, Var) and isinstance(a.type, Batched) for a in atoms]
        rule = BATCH_RULES.get(node.op)
        if rule is None:  # pragma: no cover - an op added without a batching rule
            raise GraphError(f"vmap: op {node.op!r} has no batching rule")
        lanes = rule(node, flags)
        params: Any = dict(node.params, lanes=size) if lanes else node.params
        nodes.append(Node(node.op, atoms, params, fresh(node.out, lanes), node.loc,
                          node.meta))
        if node.op.startswith("llm"):
            requests = node_requests(node, caps)
            if lanes:
                batched_calls += 1
                lane_requests += requests
            else:
                hoisted_calls += 1
                hoisted_requests += requests
        hoisted_nodes += not lanes
    outputs = [new[a.id] if isinstance(a, Var) else a for a in graph.outputs]
    stats = VmapStats(size, hoisted_calls, batched_calls, hoisted_nodes,
                      len(nodes) - hoisted_nodes, hoisted_requests, lane_requests)
    # schedule's tables name the old vars: dropped (the element graph keeps them)
    return Graph(inputs, nodes, outputs, {**carry_meta(graph), "vmap": stats}), stats


def node_requests(node: Node, caps: CapsCache) -> int:
    """Round trips of one model-call node, as the static estimate counts them."""
    c = caps(node.param("model", ""))
    if node.op == "llm":
        k = node.param("n", 1)
        return 1 if k == 1 or c.supports_n else k
    return 1 if c.supports_batch else len(node.inputs) // 2


def split_hoistable(graph: Graph, mapped: Sequence[bool]) -> Graph:
    """The element graph with each ``llm_batch`` that fuse made of per-element calls
    and calls that vmap can hoist (deterministic, on unmapped inputs only: a rubric
    next to a per-element summary of the same model) split in two, so the latter are
    made once for the whole map, not once per element. The same graph if none is."""
    batched: set[int] = {v.id for v, m in zip(graph.inputs, mapped) if m}
    nodes: list[Node] = []
    moved: dict[int, tuple[Var, Var, list[int]]] = {}  # batch var -> (hoisted, rest, slots)
    for node in graph.nodes:
        flags = [isinstance(a, Var) and a.id in batched for a in node.inputs]
        if node.op == "getitem" and node.inputs[0].id in moved:
            hoisted, rest, slots = moved[node.inputs[0].id]
            slot = slots[node.param("key")]
            source = hoisted if slot >= 0 else rest
            node = Node("getitem", [source], {"key": slot if slot >= 0 else -slot - 1},
                        node.out, node.loc, node.meta)
            flags = [source is rest]
        elif node.op == "llm_batch" and BATCH_RULES["llm_batch"](node, flags):
            parts = _split_batch(node, flags)
            if parts is not None:
                nodes += parts[:2]
                moved[node.out.id] = (parts[0].out, parts[1].out, parts[2])
                batched.add(parts[1].out.id)
                continue
        if BATCH_RULES[node.op](node, flags):
            batched.add(node.out.id)
        nodes.append(node)
    if not moved:
        return graph
    return Graph(list(graph.inputs), nodes, list(graph.outputs), carry_meta(graph))


def _split_batch(node: Node, flags: list[bool]) -> tuple[Node, Node, list[int]] | None:
    """(hoistable members' batch, the others', each member's slot: i in the first, or
    -1 - i in the second), or None when the members are not mixed."""
    det = node.param("deterministic", ())
    once = [det[j] is True and not flags[2 * j] and not flags[2 * j + 1]
            for j in range(len(node.inputs) // 2)]
    if all(once) or not any(once):
        return None
    parts: list[Node] = []
    slots = [0] * len(once)
    locs = node.meta.get("locs") or ()
    for hoist in (True, False):
        members = [j for j, o in enumerate(once) if o is hoist]
        for k, j in enumerate(members):
            slots[j] = k if hoist else -1 - k
        params = dict(node.params, deterministic=tuple(det[j] for j in members))
        meta = dict(node.meta, locs=tuple(locs[j] for j in members)) if locs else node.meta
        inputs = [a for j in members for a in node.inputs[2 * j:2 * j + 2]]
        parts.append(Node("llm_batch", inputs, params, Var(node.out.type), node.loc, meta))
    return parts[0], parts[1], slots


def hoisted_nodes(graph: Graph, mapped: Sequence[bool]) -> list[int]:
    """Indices of the nodes of a per-element graph that `batch_graph` hoists."""
    batched, _ = batch_graph(graph, mapped, 2)
    return [i for i, n in enumerate(batched.nodes) if n.param("lanes") is None]


def unbatch(graph: Graph) -> Graph:
    """One element's graph: ``Batched[T]`` becomes ``T`` and ``lanes`` goes."""
    new: dict[int, Var] = {}

    def elem(var: Var) -> Var:
        t: Type = var.type
        out = new[var.id] = Var(t.elem if isinstance(t, Batched) else t)  # type: ignore[attr-defined]
        return out

    inputs = [elem(v) for v in graph.inputs]
    nodes = []
    for node in graph.nodes:
        atoms = [new.get(a.id, a) if isinstance(a, Var) else a for a in node.inputs]
        params = {k: v for k, v in node.params if k != "lanes"}
        nodes.append(Node(node.op, atoms, params, elem(node.out), node.loc, node.meta))
    outputs = [new.get(a.id, a) if isinstance(a, Var) else a for a in graph.outputs]
    return Graph(inputs, nodes, outputs, carry_meta(graph))


def check_batched(graph: Graph) -> Graph:
    """Verify a batched graph: its element graph verifies (`check_graph`), and a
    node has ``lanes`` exactly when its output is batched, which it must be when an
    input is batched or its batching rule says so."""
    check_graph(unbatch(graph))
    sizes = set()
    for i, node in enumerate(graph.nodes):
        lanes = node.param("lanes")
        flags = [isinstance(a, Var) and isinstance(a.type, Batched) for a in node.inputs]
        expected = BATCH_RULES[node.op](node, flags)
        if (lanes is not None) != isinstance(node.out.type, Batched) or \
                (lanes is not None) != expected:
            raise GraphError(f"vmap: node {i} ({node.op}) has lanes={lanes} and output type "
                             f"{node.out.type}, but its batching rule says "
                             f"{'batched' if expected else 'unbatched'}")
        if lanes is not None:
            sizes.add(lanes)
    if len(sizes) > 1:
        raise GraphError(f"vmap: nodes disagree on the batch size: {sorted(sizes)}")
    return graph


MAP_SAMPLE = 1_000  # elements whose own estimates a map's estimate averages


def map_estimate(graph: Graph, mapped: Sequence[bool], size: int, window: int | None,
                 inputs: Sequence[Any] | None = None,
                 elements: Sequence[Sequence[Any]] | None = None,
                 hoist: bool = True) -> Estimate:
    """The static estimate of a whole map: the hoisted calls once (none without
    ``hoist``), the rest ``size`` times; the critical path takes ``ceil(size / window)``
    lanes one after another.
    Tokens and cost are each element's own with ``elements`` (every element's input
    values, in the graph's input order; a sample of at most `MAP_SAMPLE`, scaled, for
    longer maps), else ``inputs``' for every element."""
    examples = list(elements) if elements else [inputs]
    if len(examples) > MAP_SAMPLE:  # (random, not evenly spaced: periodic data aliases)
        picked = random.Random(len(examples)).sample(range(len(examples)), MAP_SAMPLE)
        examples = [examples[i] for i in sorted(picked)]
    keep = set(hoisted_nodes(graph, mapped)) if hoist else set()
    hoisted = estimate(Graph(list(graph.inputs), [n for i, n in enumerate(graph.nodes)
                                                  if i in keep], []), inputs=examples[0])
    each = [estimate(graph, inputs=example) for example in examples]
    per_element = each[0]

    def total(field: str) -> Any:
        once, values = getattr(hoisted, field), [getattr(e, field) for e in each]
        if once is None or any(v is None for v in values):
            return None
        mean = sum(values) / len(values)
        value = once + size * (mean - once)
        return round(value) if isinstance(once, int) else value

    waves = -(-size // (window or size))
    lane_path = per_element.critical_path_seconds - hoisted.critical_path_seconds
    return Estimate(
        total("requests"), total("calls"), total("completions"), total("input_tokens"),
        total("input_tokens_min"), total("output_tokens_max"), total("output_tokens_min"),
        total("cost_min"), total("cost_max"),
        hoisted.critical_path_seconds + waves * max(0.0, lane_path), per_element.unpriced,
        per_element.critical_path_worst_case, per_element.uncapped)
