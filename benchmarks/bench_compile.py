"""Trace + compile time per node vs graph size (10 .. 10,000 model calls).

Bound: 15 µs per IR node for tracing a Python function into a graph and running the
default passes on it, growing linearly (per-node time at 10,000 calls within 1.5x of
that at 100). References on this kind of machine: torch.fx's symbolic trace costs
about 29 µs per node, ``jax.make_jaxpr`` about 33 µs per op.

The traced function is app-shaped: blocks of 10 calls (an ensemble of 3 and its judge,
a 2-step chain, 2 sampled votes, a duplicate deterministic call, a dead call), so
every pass has work to do. Tracing is `ember._inspect.trace_graph` (what jit's plan
phase does, without running anything); compiling is `ember.passes.run_passes` with
the default pipeline (dce, cse, fuse, schedule + estimate), as jit runs it.
(bench_passes.py times the passes alone on hand-built graphs.)
"""

from __future__ import annotations

import time

import pytest
from conftest import figure, report

from ember import jit, models
from ember._inspect import trace_graph
from ember.passes import run_passes

BOUND_US = 15.0
M = "sim"
_per_node: dict[int, float] = {}


def app(x: str, blocks: int):
    outs = []
    for i in range(blocks):
        views = [models(M, f"block {i} angle {k}: {x}").text for k in range(3)]
        outs.append(models(M, "judge:\n" + "\n".join(views)).text)
        step = models(M, f"block {i} step: {x}")
        outs.append(models(M, f"refine: {step.text}").text)
        outs += [models(M, f"block {i} vote: {x}", temperature=0.7).text for _ in range(2)]
        outs.append(models(M, f"block {i} angle 0: {x}").text)  # duplicate: cse merges it
        models(M, f"block {i} unused: {x}")  # dead: dce drops it
    return outs


def trace_and_compile(blocks: int):
    graph, _, complete, _ = trace_graph(app, ("the question", blocks), {})
    assert complete
    return graph, run_passes(graph)[0]


@pytest.mark.parametrize("calls", [10, 100, 1_000, 10_000])
def test_trace_and_compile_per_node(benchmark, calls):
    blocks = calls // 10
    trace_and_compile(1)  # imports and first-use caches outside the timing
    rounds = max(3, 3_000 // calls)
    timings: list[tuple[float, float]] = []

    def once():
        t0 = time.perf_counter()
        graph, _, _, _ = trace_graph(app, ("the question", blocks), {})
        t1 = time.perf_counter()
        run_passes(graph)
        timings.append((t1 - t0, time.perf_counter() - t1))
        return graph

    graph = benchmark.pedantic(once, rounds=rounds, iterations=1, warmup_rounds=1)
    nodes = len(graph.nodes)
    n_calls = sum(1 for n in graph.nodes if n.op == "llm")
    assert n_calls == calls
    timings.sort(key=sum)
    trace_s, compile_s = timings[len(timings) // 2]  # the median round
    per_node = (trace_s + compile_s) / nodes * 1e6
    _per_node[calls] = per_node
    label = f"trace+compile, {calls:,} calls / {nodes:,} nodes"
    report(f"{label}: per node", per_node, BOUND_US, unit="µs/node", target=1.0,
           table=(f"{calls:,} calls", "trace+compile µs/node"))
    figure(f"{label}: trace per node", trace_s / nodes * 1e6, "µs/node",
           table=(f"{calls:,} calls", "trace µs/node"))
    figure(f"{label}: compile per node", compile_s / nodes * 1e6, "µs/node",
           table=(f"{calls:,} calls", "compile µs/node"))
    figure(f"{label}: per model call", (trace_s + compile_s) / calls * 1e6, "µs/call",
           table=(f"{calls:,} calls", "trace+compile µs/call"))
    figure(f"{label}: total", (trace_s + compile_s) * 1e3, "ms",
           table=(f"{calls:,} calls", "total ms"))
    if calls == 10_000 and 100 in _per_node:
        report("trace+compile growth: per-node time at 10,000 calls / at 100 calls",
               per_node / _per_node[100], 1.0, unit="x", target=1.5)
    assert per_node <= 6 * BOUND_US  # loose (a shared VM varies 2x): the ratio is the figure


def test_jit_first_call_per_node(sim_config):
    """Reference: jit's own first call (plan, compile, run, check) at zero latency."""
    sim_config(latency=0.0)
    calls = 1_000
    fast = jit(app)
    jit(app)("warm", 1)
    start = time.perf_counter()
    out = fast("the question", calls // 10)
    wall = time.perf_counter() - start
    assert len(out) == calls // 10 * 5
    nodes = len(trace_and_compile(calls // 10)[0].nodes)
    figure(f"jit first call (trace, compile, run, check) on {calls:,} calls, zero latency: "
           "per traced node", wall / nodes * 1e6, "µs/node")
