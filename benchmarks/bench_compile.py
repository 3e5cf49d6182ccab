"""Trace + compile time per node vs graph size (10 .. 10,000 model calls).

Bound: 15 µs per IR node for tracing a Python function into a graph and running the
default passes on it, growing linearly (per-node time at 10,000 calls within 1.5x of
that at 100). References on this kind of machine: torch.fx's symbolic trace costs
about 29 µs per node, ``jax.make_jaxpr`` about 33 µs per op.

The traced function is app-shaped: blocks of 10 calls (an ensemble of 3 and its judge,
a 2-step chain, 2 sampled votes, a duplicate deterministic call, a dead call), so
every pass has work to do. Tracing is `ember._inspect.trace_graph` (what jit's plan
phase does, without running anything); compiling is `ember.passes.run_passes` with
the default pipeline (dce, cse, fuse, schedule), as jit runs it. Two of schedule's
products are worked out when first read, which jit never does: the display-only
wavefront levels (about 0.4 µs per node when `inspect` shows them) and the estimate's
tokens, requests and cost (its critical path, which jit reads, is schedule's own). The
estimate's cost on first read is timed apart and printed too, as is dropping the
graphs at the end of a round (jit keeps its graphs), and, as a reference, one plain
sweep over the same nodes (`plain_sweep`): its per-node time grows 2-4x from 100 to
10,000 calls on this VM, as the graph outgrows the CPU caches, which is what the
growth figure of any linear pass includes. The four sizes are measured
interleaved (see the test). A second test counts the bytecodes trace + compile execute
per node at each size: work, which neither the caches nor this VM's phases change.
(bench_passes.py times the passes alone on hand-built graphs.)

Why 10 calls cost more per node than 100 (13.6 against 9.2 µs at machine speed 8.3 ms;
the bound was missed in some of this VM's slow phases, ~11 ms): measured on 2026-12-02 with
cachegrind's simulated caches and branch predictor, which count the same on every run
(``PYTHONHASHSEED=0``; per node, differences of k and 4k graphs). Instructions per node
are 1.25x those at 100 calls, and bytecodes 1.15x: per-graph work (four passes'
setup, stats and graphs; the trace's state and inputs; pausing the collector) is 10%
of a 25-node graph and 16% of its simulated cycles. The rest is the same Python
running in short bursts: first-level instruction-cache misses per node are 1.5x,
data-cache misses 1.55x and branch mispredictions 1.48x those at 100 calls (each pass
runs 25 iterations, then the next pass's code evicts it). Removing the pipeline's whole
bookkeeping (timing, results, the collector pause) saves 2.8% of the simulated cycles;
no single change reaches 5%.
"""

from __future__ import annotations

import sys
import time

from conftest import figure, report

from ember import jit, models
from ember._inspect import trace_graph
from ember.passes import run_passes

BOUND_US = 15.0
M = "sim"


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


SIZES = (10, 100, 1_000, 10_000)  # model calls
ROUNDS_PER_CYCLE = {10: 40, 100: 4, 1_000: 1, 10_000: 1}
CYCLES = 11  # the 10,000-call size runs once per cycle


def calibration() -> float:
    """Seconds for a fixed pure-Python workload (dict inserts, small tuples, a sum over
    a generator): how fast this machine is at the moment, printed with the figures."""
    t0 = time.perf_counter()
    table: dict[int, tuple[int, int]] = {}
    for i in range(20_000):
        table[i] = (i, i & 7)
    total = sum(a + b for a, b in table.values())
    assert total > 0
    return time.perf_counter() - t0


def plain_sweep(nodes: list) -> int:
    """The least a linear pass does: fetch each node, its output var and its inputs, and
    key a table by var id. Its per-node time at each size is printed as a reference: the
    growth from 100 to 10,000 calls it shows is the caches', not an algorithm's."""
    seen = set()
    for node in nodes:
        seen.add(node.out.id)
        for a in node.inputs:
            seen.add(a.id)
    return len(seen)


def test_trace_and_compile_per_node(benchmark):
    """All sizes measured interleaved: each cycle runs a few rounds of every size. This
    VM's speed swings by up to 1.6x within a second, so sizes measured one after the
    other compared different machine states (the growth ratio most of all); interleaved,
    every size samples the same mixture, and each figure is the median round."""
    timings: dict[int, list[tuple[float, float]]] = {calls: [] for calls in SIZES}
    reads: dict[int, list[float]] = {calls: [] for calls in SIZES}  # the estimate, read
    frees: dict[int, list[float]] = {calls: [] for calls in SIZES}  # dropping the graphs
    sweeps: dict[int, list[float]] = {calls: [] for calls in SIZES}  # plain_sweep
    speed: list[float] = []

    def cycle():
        speed.append(calibration())
        for calls in SIZES:
            args = ("the question", calls // 10)
            for _ in range(ROUNDS_PER_CYCLE[calls]):
                t0 = time.perf_counter()
                traced, state, _, _ = trace_graph(app, args, {})
                t1 = time.perf_counter()
                graph = run_passes(traced)[0]
                t2 = time.perf_counter()
                assert graph.meta["estimate"].requests > 0
                reads[calls].append(time.perf_counter() - t2)
                timings[calls].append((t1 - t0, t2 - t1))
                # freed outside the timing (and timed apart): dropping a graph is neither
                # tracing nor compiling (jit keeps its graphs); freed by the next round's
                # trace, the 10- and 100-call rounds paid for it and the larger ones not
                t3 = time.perf_counter()
                del traced, state, graph
                frees[calls].append(time.perf_counter() - t3)
            # the reference sweep, on a graph of this size that was just traced and compiled
            traced = trace_graph(app, args, {})[0]
            graph = run_passes(traced)[0]
            t0 = time.perf_counter()
            plain_sweep(traced.nodes)
            sweeps[calls].append(time.perf_counter() - t0)
            del traced, graph

    cycle()  # imports, first-use caches and allocator arenas outside the timing
    for rounds in (*timings.values(), *reads.values(), *frees.values(), *sweeps.values(),
                   speed):
        rounds.clear()
    benchmark.pedantic(cycle, rounds=CYCLES, iterations=1, warmup_rounds=0)
    per_node: dict[int, float] = {}
    swept: dict[int, float] = {}
    for calls in SIZES:
        graph = trace_graph(app, ("the question", calls // 10), {})[0]
        nodes = len(graph.nodes)
        assert sum(1 for n in graph.nodes if n.op == "llm") == calls
        rounds = sorted(timings[calls], key=sum)
        assert len(rounds) == CYCLES * ROUNDS_PER_CYCLE[calls]
        trace_s, compile_s = rounds[len(rounds) // 2]  # the median round
        per_node[calls] = (trace_s + compile_s) / nodes * 1e6
        label = f"trace+compile, {calls:,} calls / {nodes:,} nodes"
        report(f"{label}: per node", per_node[calls], BOUND_US, unit="µs/node", target=1.0,
               table=(f"{calls:,} calls", "trace+compile µs/node"))
        figure(f"{label}: trace per node", trace_s / nodes * 1e6, "µs/node",
               table=(f"{calls:,} calls", "trace µs/node"))
        figure(f"{label}: compile per node", compile_s / nodes * 1e6, "µs/node",
               table=(f"{calls:,} calls", "compile µs/node"))
        read = sorted(reads[calls])[len(rounds) // 2]
        figure(f"{label}: the estimate's tokens and cost, on first read, per node",
               read / nodes * 1e6, "µs/node", table=(f"{calls:,} calls", "estimate read µs/node"))
        free = sorted(frees[calls])[len(rounds) // 2]
        figure(f"{label}: dropping the traced and compiled graphs, per node",
               free / nodes * 1e6, "µs/node", table=(f"{calls:,} calls", "drop µs/node"))
        swept[calls] = sorted(sweeps[calls])[CYCLES // 2] / nodes * 1e6
        figure(f"{label}: reference, one plain sweep over the nodes, per node", swept[calls],
               "µs/node", table=(f"{calls:,} calls", "plain sweep µs/node"))
        figure(f"{label}: per model call", (trace_s + compile_s) / calls * 1e6, "µs/call",
               table=(f"{calls:,} calls", "trace+compile µs/call"))
        figure(f"{label}: total", (trace_s + compile_s) * 1e3, "ms",
               table=(f"{calls:,} calls", "total ms"))
    figure("machine speed: a fixed pure-Python workload, median of the cycles (this VM "
           "swings ~1.6x; compare runs by it)", sorted(speed)[len(speed) // 2] * 1e3, "ms")
    report("trace+compile growth: per-node time at 10,000 calls / at 100 calls",
           per_node[10_000] / per_node[100], 1.0, unit="x", target=1.5)
    figure("reference: the same growth for one plain sweep over the nodes (what this "
           "machine's caches add to any linear pass)", swept[10_000] / swept[100], "x")
    # loose (a shared VM varies 2x): the ratios are the figures
    assert max(per_node.values()) <= 6 * BOUND_US


def _bytecodes(fn, *args) -> int:
    """Python bytecodes ``fn(*args)`` executes (sys.settrace's opcode events): a count of
    work that cache sizes and this VM's phases do not change. A call into C (a dict
    insert, ``sorted``) counts as one."""
    count = 0

    def tracer(frame, event, arg):
        nonlocal count
        frame.f_trace_opcodes = True
        if event == "opcode":
            count += 1
        return tracer

    sys.settrace(tracer)
    try:
        fn(*args)
    finally:
        sys.settrace(None)
    return count


def test_trace_and_compile_work_per_node():
    """Linear in work, not only in time: the bytecodes trace + compile execute per node,
    at each size. Time per node also rises at the larger sizes (the graph outgrows the
    caches: see the growth figure above); this count shows how much of the rise is
    the algorithm's."""
    trace_and_compile(1)  # first-use caches
    per_node: dict[int, float] = {}
    for calls in SIZES:
        nodes = len(trace_graph(app, ("the question", calls // 10), {})[0].nodes)
        per_node[calls] = _bytecodes(trace_and_compile, calls // 10) / nodes
        figure(f"trace+compile, {calls:,} calls / {nodes:,} nodes: bytecodes per node",
               per_node[calls], "bytecodes/node",
               table=(f"{calls:,} calls", "trace+compile bytecodes/node"))
    report("trace+compile work growth: bytecodes per node at 10,000 calls / at 100 calls",
           per_node[10_000] / per_node[100], 1.0, unit="x", target=1.1)


def test_compile_cold_per_node():
    """Where the time growth comes from: the passes on a graph that is not in the
    caches (a 64 MB copy runs in between), against the same graph straight after its
    trace (as in the main test). At 10,000 calls the graph (~10 MB of objects) never
    fits, so there the two agree; a small graph is still cached after its trace."""
    src = bytes(64 << 20)
    evict = bytearray(len(src))
    times: dict[tuple[str, int], list[float]] = {}
    for _ in range(9):
        for calls in (100, 10_000):
            traced = trace_graph(app, ("the question", calls // 10), {})[0]
            nodes = len(traced.nodes)
            t0 = time.perf_counter()
            graph = run_passes(traced)[0]
            t1 = time.perf_counter()
            del graph
            evict[:] = src
            t2 = time.perf_counter()
            graph = run_passes(traced)[0]
            t3 = time.perf_counter()
            del graph, traced
            times.setdefault(("after its trace", calls), []).append((t1 - t0) / nodes * 1e6)
            times.setdefault(("cold", calls), []).append((t3 - t2) / nodes * 1e6)
    for state in ("after its trace", "cold"):
        per_node = {calls: sorted(times[state, calls])[4] for calls in (100, 10_000)}
        for calls, value in per_node.items():
            figure(f"compile {state}, {calls:,} calls: per node", value, "µs/node",
                   table=(f"{calls:,} calls", f"compile {state} µs/node"))
        figure(f"compile {state}: per-node time at 10,000 calls / at 100 calls",
               per_node[10_000] / per_node[100], "x")


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
