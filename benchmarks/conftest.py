"""Benchmarks: run with `pytest benchmarks -s` (they are not part of the test suite).

Every benchmark prints its measured figure and the ratio to its bound.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import pytest  # noqa: E402


def report(name: str, measured: float, bound: float, unit: str = "s",
           better: str = "lower") -> float:
    """Print one figure and its ratio to the bound; return the ratio."""
    ratio = measured / bound if bound else float("inf")
    print(f"\n[bench] {name}: {measured:.4g} {unit} (bound {bound:.4g} {unit}, "
          f"ratio {ratio:.3f}, {better} is better)")
    return ratio


@pytest.fixture
def fake_openai(monkeypatch):
    from servers import OPENAI_KEY, FakeOpenAI

    from ember import providers

    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
        providers.reset()
        yield server
    providers.reset()


@pytest.fixture
def openai_process(monkeypatch):
    """Start a FakeOpenAI in a subprocess: ``url = openai_process(latency)``."""
    import subprocess

    from servers import OPENAI_KEY

    from ember import providers

    procs = []

    def start(latency: float) -> str:
        proc = subprocess.Popen(
            [sys.executable, os.path.join(os.path.dirname(__file__), "serve.py"),
             "--latency", str(latency)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True)
        procs.append(proc)
        url = proc.stdout.readline().strip()
        monkeypatch.setenv("OPENAI_BASE_URL", url)
        monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
        providers.reset()
        return url

    yield start
    for proc in procs:
        proc.stdin.close()
        proc.wait(timeout=10)
    providers.reset()
