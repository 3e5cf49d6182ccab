"""Pass-pipeline time per node on app-shaped graphs of 10 .. 10,000 llm calls.

Bound: trace + all passes under 15 µs per node; this measures the passes alone
(default pipeline: dce, cse, fuse, schedule with the estimate) and prints µs/node
and its ratio to the bound.

    python -m pytest benchmarks/bench_passes.py -s
"""

from __future__ import annotations

import pytest
from conftest import report

from ember.backends.policy import CallOptions
from ember.ir import Graph, Lit, ListT, Node, ResponseT, Str, Var
from ember.passes import run_passes

BOUND_US = 15.0
OPTS = CallOptions()


class _Builder:
    def __init__(self) -> None:
        self.x = Var(Str)
        self.nodes: list[Node] = []
        self.samples = 0

    def add(self, op, inputs, params, type_):
        out = Var(type_)
        self.nodes.append(Node(op, [a if isinstance(a, (Var, Lit)) else Lit(a) for a in inputs],
                               params, out, f"app.py:{len(self.nodes)}"))
        return out

    def fmt(self, head, v):
        return self.add("format", [v], {"segments": (head, ""), "specs": ("",)}, Str)

    def llm(self, prompt, sampled=False):
        p = {"model": "sim", "params": (("max_tokens", 256),), "n": 1, "options": OPTS,
             "deterministic": not sampled}
        if sampled:
            p["sample"] = self.samples
            self.samples += 1
        return self.add("llm", [prompt, Lit(None)], p, ResponseT)

    def text(self, r):
        return self.add("attr", [r], {"name": "text"}, Str)


def app_graph(calls: int) -> Graph:
    """Blocks of 13 calls: an ensemble of 4 + judge, a 3-step chain, 3 self-consistency
    samples, a duplicate deterministic call and a dead call."""
    b = _Builder()
    outs: list[Var] = []
    for i in range(max(1, round(calls / 13))):
        x = b.fmt(f"block {i}: ", b.x)
        views = [b.text(b.llm(b.fmt(f"angle {k}: ", x))) for k in range(4)]
        joined = b.add("pack", views, {"kind": "list"}, ListT(Str))
        outs.append(b.llm(b.fmt("judge: ", joined)))
        r = b.llm(b.fmt("step: ", x))
        for _ in range(2):
            r = b.llm(b.fmt("refine: ", b.text(r)))
        outs.append(r)
        b.samples = 0
        samples = [b.llm(b.fmt("vote: ", x), sampled=True) for _ in range(3)]
        outs.append(b.add("pack", samples, {"kind": "list"}, ListT(ResponseT)))
        outs.append(b.llm(b.fmt("angle 0: ", x)))  # duplicate of the first ensemble call
        b.llm(b.fmt("unused: ", x))  # dead
    return Graph([b.x], b.nodes, outs)


@pytest.mark.parametrize("calls", [10, 100, 1_000, 10_000])
def test_pass_pipeline_time_per_node(benchmark, calls):
    graph = app_graph(calls)
    rounds = max(3, 20_000 // len(graph.nodes))
    benchmark.pedantic(run_passes, args=(graph,), rounds=rounds, iterations=1, warmup_rounds=1)
    per_node = benchmark.stats.stats.median / len(graph.nodes) * 1e6
    ratio = report(f"passes on {_llm_calls(graph):,} llm calls / {len(graph.nodes):,} nodes "
                   "(bound: trace + passes)", per_node, BOUND_US, unit="µs/node")
    benchmark.extra_info.update(nodes=len(graph.nodes), us_per_node=per_node, ratio=ratio)


def _llm_calls(graph: Graph) -> int:
    return sum(1 for n in graph.nodes if n.op == "llm")
