"""Shared pytest fixtures.

The loopback servers that speak the providers' wire formats live in
``tests/servers.py``; their fixtures are made available to every test here.
"""

from servers import anthropic_server, local_server, openai_server  # noqa: F401

import sys  # noqa: E402
import threading  # noqa: E402

import pytest  # noqa: E402

from ember.providers import sim  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_sim():
    """Every test starts with an instant, error-free simulated model and zeroed stats."""
    sim.configure(latency=0.0, error_rate=0.0, fail_on=None, context_window=128_000, seed=0)
    sim.reset_stats()
    yield
    sim.configure(latency=0.0, error_rate=0.0, fail_on=None, context_window=128_000, seed=0)
    sim.reset_stats()


@pytest.fixture
def racing():
    """``racing(work, threads)``: run ``work()`` in that many threads at once, switching
    between them every microsecond, so a race in shared state shows."""

    def run(work, threads: int) -> None:
        start = threading.Barrier(threads)

        def worker():
            start.wait()
            work()

        pool = [threading.Thread(target=worker) for _ in range(threads)]
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)
        try:
            for t in pool:
                t.start()
            for t in pool:
                t.join()
        finally:
            sys.setswitchinterval(interval)

    return run
