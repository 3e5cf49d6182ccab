"""Issue 9 acceptance: a 1,000-element vmap on a local Ray (2 CPUs) against a 50 ms
loopback server in its own process gives the local backend's results; its wall time
and overhead ratio versus the local backend are reported.

    pytest benchmarks/bench_ray.py -s -p no:cacheprovider
"""

from __future__ import annotations

import sys
import time

import pytest
from conftest import figure, report

from ember import models, vmap
from ember.backends.limits import limiter

ray = pytest.importorskip("ray")

N, LATENCY = 1000, 0.05
M = "openai/gpt-4o-mini"


def analyze(text: str) -> str:
    # max_tokens keeps the token reservation small, as a real job should
    return models(M, f"Analyze: {text}", max_tokens=16).text


def _timed(fn, xs, rounds: int = 2) -> tuple[list, float]:
    best, out = float("inf"), None
    for _ in range(rounds):
        start = time.perf_counter()
        out = fn(xs)
        best = min(best, time.perf_counter() - start)
    return out, best


def test_vmap_1000_on_local_ray_vs_local_backend(openai_process):
    from ember.backends import ray as ember_ray

    openai_process(LATENCY)
    limiter.reset()
    xs = [f"document {i}" for i in range(N)]
    want = [f"echo: Analyze: {x}" for x in xs]

    local = vmap(analyze)
    local(xs[:8])  # import the SDK and open connections outside the timing
    got_local, local_wall = _timed(local, xs)

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # actors can't import us
    cluster = ember_ray.Cluster(env=["OPENAI_BASE_URL", "OPENAI_API_KEY"])
    try:
        started = time.perf_counter()
        remote = vmap(analyze, backend=cluster)
        remote(xs[:8])  # start the actors, import the SDK in them
        startup = time.perf_counter() - started
        got_ray, ray_wall = _timed(remote, xs)
        report_ = remote.last_run
    finally:
        cluster.close()
        ray.shutdown()

    assert got_local == got_ray == want
    assert report_.requests == N
    figure("ray: actors", cluster.actors, "", fmt="d")
    figure("ray: cluster start + first element", startup, "s")
    figure("vmap N=1000 L=50ms local backend wall", local_wall, "s")
    figure("vmap N=1000 L=50ms Ray backend wall", ray_wall, "s")
    bound = -(-N // 64) * LATENCY  # the provider's default concurrency, 64, cluster-wide
    report("vmap N=1000 L=50ms Ray backend vs its bound", ray_wall, bound)
    report("vmap N=1000 L=50ms Ray overhead (Ray wall / local wall)", ray_wall, local_wall)
