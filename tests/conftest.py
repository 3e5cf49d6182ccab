"""Shared pytest fixtures.

The loopback servers that speak the providers' wire formats live in
``tests/servers.py``; their fixtures are made available to every test here.
"""

from servers import anthropic_server, local_server, openai_server  # noqa: F401

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
