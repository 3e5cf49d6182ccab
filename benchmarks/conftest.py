"""Benchmarks (not part of the test suite). The one command that runs them all end to
end (under 10 minutes on 2 cores) and then refreshes docs/performance.md:

    pip install -e '.[test,bench]'    # once: pytest-benchmark, and the LangChain / DSPy peers
    pytest benchmarks -s -p no:cacheprovider && python benchmarks/render.py

The full-scale benchmarks are skipped unless asked for, each in its own process:
bench_reliability.py (about 3 minutes against a 60-requests-per-minute limit) and
bench_vmap_loopback.py (1,000 requests through the SDK; see its docstring):

    pytest benchmarks/bench_reliability.py -s -p no:cacheprovider --full-scale
    pytest benchmarks/bench_vmap_loopback.py -s -p no:cacheprovider --full-scale

Every benchmark prints its figure, and its ratio to the bound, as a ``[bench]`` line.
The figures of a session are also written to ``.benchmarks/figures.json``
(``EMBER_BENCH_JSON`` overrides the path); `render.py` builds docs/performance.md
from that file only, so the doc never shows a figure a benchmark did not print.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import pytest  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FIGURES_PATH = os.environ.get("EMBER_BENCH_JSON") or os.path.join(
    HERE, "..", ".benchmarks", "figures.json")
_figures: list[dict] = []
_where = {"module": "?", "test": "?"}
_modules_run: set[str] = set()


def report(name: str, measured: float, bound: float, unit: str = "s",
           better: str = "lower", *, target: float | None = None,
           table: tuple[str, str] | None = None) -> float:
    """Print one figure and its ratio to the bound; return the ratio.

    ``target``: the ratio the figure should reach (at most, or at least when
    ``better="higher"``); shown as met/missed. ``table=(row, column)`` places the
    figure in a grid when docs/performance.md is rendered.
    """
    ratio = measured / bound if bound else float("inf")
    tail = ""
    if target is not None:
        met = ratio <= target if better == "lower" else ratio >= target
        tail = f", target {'<=' if better == 'lower' else '>='} {target:g}x: " \
               f"{'met' if met else 'MISSED'}"
    print(f"\n[bench] {name}: {measured:.4g} {unit} (bound {bound:.4g} {unit}, "
          f"ratio {ratio:.3f}, {better} is better{tail})")
    _record(name, measured, unit, bound=bound, ratio=ratio, better=better, target=target,
            table=table)
    return ratio


def figure(name: str, value: float | None, unit: str = "", *,
           table: tuple[str, str] | None = None, fmt: str = ".4g") -> None:
    """Print a figure that has no bound (a count, a cost, a reference measurement)."""
    shown = "n/a" if value is None else format(value, fmt)
    print(f"\n[bench] {name}: {shown} {unit}".rstrip())
    _record(name, value, unit, table=table, fmt=fmt)


def _record(name: str, value: float | None, unit: str, **extra: object) -> None:
    _figures.append({"module": _where["module"], "test": _where["test"], "name": name,
                     "value": value, "unit": unit, **extra})


def pytest_collect_file(file_path, parent):
    """``pytest benchmarks`` collects the bench_*.py modules (not test_*.py names)."""
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") \
            and not parent.session.isinitpath(file_path):  # named ones pytest collects itself
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_addoption(parser):
    parser.addoption("--full-scale", action="store_true", default=False,
                     help="also run the full-scale benchmarks (bench_reliability.py, ~3 min)")


def pytest_configure(config):
    config.addinivalue_line("markers", "full_scale: minutes-long benchmark; --full-scale runs it")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--full-scale"):
        return
    skip = pytest.mark.skip(reason="full-scale benchmark: run it with --full-scale")
    for item in items:
        if item.get_closest_marker("full_scale"):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _bench_where(request):
    module = request.node.module.__name__.rsplit(".", 1)[-1]
    _where.update(module=module, test=request.node.name)
    _modules_run.add(module)
    yield


def machine() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count()
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {"nproc": usable, "cpu": cpu, "python": platform.python_version(),
            "platform": platform.platform(), "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "load": load}


def pytest_sessionfinish(session, exitstatus):
    """Merge this session's figures into the figures file: the modules that ran
    replace their earlier figures; others keep theirs."""
    if not _figures and not _modules_run:
        return
    data = {"modules": {}}
    try:
        with open(FIGURES_PATH) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        pass
    modules = data.setdefault("modules", {})
    for module in _modules_run:
        modules[module] = {"machine": machine(), "exitstatus": int(exitstatus),
                           "command": " ".join(["pytest", *session.config.invocation_params.args]),
                           "figures": [f for f in _figures if f["module"] == module]}
    os.makedirs(os.path.dirname(FIGURES_PATH), exist_ok=True)
    with open(FIGURES_PATH, "w") as fh:
        json.dump(data, fh, indent=1)


@pytest.fixture
def sim_config():
    """Configure the sim provider for one benchmark; its settings are restored after."""
    from ember.providers import sim

    saved = dict(vars(sim._config))
    sim.reset_stats()
    yield sim.configure
    for key, value in saved.items():
        setattr(sim._config, key, value)
    sim.SimProvider.rng = __import__("random").Random(saved["seed"])
    sim.reset_stats()


def _no_proxies(mp) -> None:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        mp.delenv(var, raising=False)


@pytest.fixture
def fake_openai(monkeypatch):
    from servers import OPENAI_KEY, FakeOpenAI

    from ember import providers

    _no_proxies(monkeypatch)
    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
        providers.reset()
        yield server
    providers.reset()


def start_server(latency: float):
    """A FakeOpenAI in a subprocess (its Python does not share our GIL): (proc, url)."""
    import subprocess

    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "serve.py"), "--latency", str(latency)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def stop_server(proc) -> None:
    proc.stdin.close()
    proc.wait(timeout=10)


@pytest.fixture
def openai_process(monkeypatch):
    """Start a FakeOpenAI in a subprocess: ``url = openai_process(latency)``."""
    from servers import OPENAI_KEY

    from ember import providers

    procs = []
    _no_proxies(monkeypatch)

    def start(latency: float) -> str:
        proc, url = start_server(latency)
        procs.append(proc)
        monkeypatch.setenv("OPENAI_BASE_URL", url)
        monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
        providers.reset()
        return url

    yield start
    for proc in procs:
        stop_server(proc)
    providers.reset()
