"""Executor overhead: what the local backend costs per node, and per cached jit call.

- **Per node** on a 10,000-node graph at zero latency: the app-shaped function of
  bench_compile.py (blocks of ensemble + judge, a 2-step chain, 2 sampled votes, a
  duplicate and a dead call), traced and compiled with the default passes as jit does
  (so the votes are one n=2 request and same-frontier calls are fused batches),
  then run by `ember.backends.local.execute` on the `sim` provider with zero latency.
  The time includes everything after compiling: scheduling, dispatch (admission,
  retry loop, coalescing, records), the simulated model producing its answers (its
  text generation is part of the figure: at zero latency nothing else is left) and
  committing the answers to the memo. Bound: 20 µs per node. References: a bare
  asyncio task costs about 7 µs here (printed below, measured); Dask documents
  200 µs-1 ms per task and Ray 0.1-1 ms.
- The same graph without batch fusion (every call its own request), as a figure.
- **Cached-call dispatch**: a jitted call whose graph is cached (an ensemble of 3 and a
  judge: 4 model calls, 2 requests after fusion) at zero latency, end to end
  (signature lookup, the hop to Ember's loop, executing the graph, the check run,
  the run report). Bound: 50 µs per model call.

    pytest benchmarks/bench_executor.py -s -p no:cacheprovider
"""

from __future__ import annotations

import asyncio
import time

from bench_compile import app
from conftest import figure, report

from ember import jit, models
from ember._inspect import trace_graph
from ember._runtime import run_sync
from ember.backends.local import execute
from ember.backends.memo import Memo
from ember.passes import run_passes
from ember.providers import sim

PER_NODE_US = 20.0
CACHED_CALL_US = 50.0
BLOCKS = 475  # about 10,000 nodes after the passes


def _compiled(blocks: int, **options):
    graph, _, complete, _ = trace_graph(app, ("the question", blocks), {})
    assert complete
    return run_passes(graph, **options)[0]


def _timed_execute(graph, question: str) -> tuple[float, Memo]:
    memo = Memo()

    async def go() -> float:
        start = time.perf_counter()
        await execute(graph, [question], memo)
        return time.perf_counter() - start

    return run_sync(go()), memo


def _median_run(graph, rounds: int) -> float:
    # a new question each round: nothing is served from an earlier round
    _timed_execute(graph, "warm-up")
    times = sorted(_timed_execute(graph, f"question {r}")[0] for r in range(rounds))
    return times[len(times) // 2]


def test_bare_asyncio_task_reference():
    async def nothing() -> None:
        return None

    async def go(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            await asyncio.ensure_future(nothing())
        return (time.perf_counter() - start) / n

    run_sync(go(1000))
    figure("reference: one bare asyncio task created and awaited, on Ember's loop",
           run_sync(go(20_000)) * 1e6, "µs", table=("bare asyncio task", "µs"))


def test_executor_overhead_per_node(sim_config):
    sim_config(latency=0.0)
    graph = _compiled(BLOCKS)
    nodes = len(graph.nodes)
    sim.reset_stats()
    wall, memo = _timed_execute(graph, "count")
    requests = sim.stats().requests
    answers = sim.stats().completions
    assert len(memo) > 0 and 9_000 <= nodes <= 11_000
    wall = _median_run(graph, rounds=5)
    label = f"executor, {nodes:,}-node app graph (fused, {requests:,} requests), zero latency"
    report(f"{label}: per node", wall / nodes * 1e6, PER_NODE_US, unit="µs/node", target=1.0,
           table=("fused app graph", "µs/node"))
    figure(f"{label}: per request", wall / requests * 1e6, "µs/request",
           table=("fused app graph", "µs/request"))
    figure(f"{label}: per answer", wall / answers * 1e6, "µs/answer",
           table=("fused app graph", "µs/answer"))
    figure(f"{label}: total", wall * 1e3, "ms", table=("fused app graph", "total ms"))


def test_executor_overhead_per_node_unfused(sim_config):
    sim_config(latency=0.0)
    graph = _compiled(BLOCKS, batch=False)
    nodes = len(graph.nodes)
    sim.reset_stats()
    _timed_execute(graph, "count")
    requests = sim.stats().requests
    wall = _median_run(graph, rounds=3)
    label = f"executor, {nodes:,}-node app graph without batch fusion ({requests:,} requests)"
    figure(f"{label}: per node", wall / nodes * 1e6, "µs/node",
           table=("unfused app graph", "µs/node"))
    figure(f"{label}: per request", wall / requests * 1e6, "µs/request",
           table=("unfused app graph", "µs/request"))
    figure(f"{label}: total", wall * 1e3, "ms", table=("unfused app graph", "total ms"))


def _small(x: str):
    views = [models("sim", f"angle {k}: {x}").text for k in range(3)]
    return models("sim", "judge:\n" + "\n".join(views)).text


def test_cached_call_dispatch(sim_config):
    sim_config(latency=0.0)
    fast = jit(_small)
    fast("warm-up")
    assert fast.entry("warm-up").graph is not None  # later calls replay the cached graph
    times = []
    for r in range(500):
        start = time.perf_counter()
        fast(f"question {r}")
        times.append(time.perf_counter() - start)
    times.sort()
    wall = times[len(times) // 2]
    assert fast.last_run.requests == 2
    report("cached jit call, ensemble of 3 + judge (4 calls, 2 requests), zero latency: "
           "per model call", wall / 4 * 1e6, CACHED_CALL_US, unit="µs/call", target=1.0,
           table=("cached jit call (4 calls)", "µs/call"))
    figure("cached jit call, ensemble of 3 + judge, zero latency: whole call", wall * 1e6,
           "µs", table=("cached jit call (4 calls)", "whole call µs"))
    start = time.perf_counter()
    for r in range(200):
        _small(f"eager {r}")
    eager = (time.perf_counter() - start) / 200
    figure("the same function called eagerly (4 sequential calls), zero latency: whole call",
           eager * 1e6, "µs", table=("eager call (4 calls)", "whole call µs"))
