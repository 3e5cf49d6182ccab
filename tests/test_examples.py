"""The examples in examples/ run on `sim` and print what they claim; the docs hold up.

Every example runs in its own process (they configure the simulated model, rate
limits and logging globally), from a scratch directory, and its output is checked
against what the example says it shows. The docs tests check that the API reference
covers `ember.__all__`, that the code blocks in docs/ run, and — when mkdocs is
installed (the ``docs`` extra; CI installs only ``test``) — that the site builds in
strict mode.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ember

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DOCS = ROOT / "docs"


def run_example(name: str, *args: str, cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EMBER_CACHE_DIR": str(cwd / "cache")}
    env.pop("EMBER_MODEL", None)
    env.pop("EMBER_SIM_LATENCY", None)
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not found in:\n{text}"
    return float(match.group(1))


# ---- the examples -----------------------------------------------------------------------
def test_quickstart(tmp_path):
    out = run_example("quickstart.py", cwd=tmp_path)
    assert "same answer: True" in out
    assert "analyze: 2 requests, 6 completions" in out  # five experts fused, then the judge
    assert "peak 1 (5 prompts, in batches)" in out  # one batch request of five prompts


def test_ensemble_judge_timeline_shows_five_parallel_slices_then_one(tmp_path):
    path = tmp_path / "timeline.json"
    out = run_example("ensemble_judge.py", str(path), cwd=tmp_path)
    events = json.loads(path.read_text())["traceEvents"]
    slices = sorted((e for e in events if e["ph"] == "X"), key=lambda e: e["ts"])
    assert len(slices) == 6
    experts, judge = slices[:5], slices[5]
    assert len({e["tid"] for e in experts}) == 5  # five lanes at the same time
    assert max(e["ts"] for e in experts) < min(e["ts"] + e["dur"] for e in experts)
    assert all(judge["ts"] >= e["ts"] + e["dur"] - 1 for e in experts)  # then one
    assert judge["args"]["input_tokens"] > max(e["args"]["input_tokens"] for e in experts)
    lanes = [e for e in events if e["ph"] == "M" and e["name"] == "thread_name"]
    assert len(lanes) == 5
    # the report's cost is the sum of the per-call costs (checked here and by the example)
    report_cost = number(r"cost +\$([0-9.]+)", out)
    assert report_cost == pytest.approx(sum(e["args"]["cost_usd"] for e in slices), abs=1e-6)
    assert "per-call costs" in out and out.split("per-call costs")[1].split("\n")[0].endswith(
        "True")
    assert "2 requests, 6 completions" in out
    assert out.count("lane ") == 6


def test_ensemble_judge_default_timeline_path(tmp_path):
    run_example("ensemble_judge.py", cwd=tmp_path)
    assert (tmp_path / "ensemble_judge_timeline.json").exists()


def test_week1_pipeline(tmp_path):
    out = run_example("week1_pipeline.py", cwd=tmp_path)
    n = int(number(r"^(\d+) entities: ", out))
    assert n >= 2
    assert len(re.findall(r"^  \S+: \[\d{4}\]", out, re.M)) == n  # one note per entity
    assert "same result: True" in out
    assert f"enrich: 2 requests, {n + 1} completions" in out  # extract, then all at once
    assert f"({n} prompts, in batches)" in out  # the enrich calls went together
    assert re.search(r"graph break at week1_pipeline\.py:\d+: iterating over a traced value",
                     out)


def test_map_reduce(tmp_path):
    out = run_example("map_reduce.py", cwd=tmp_path)
    assert "map: 8 summaries in input order" in out
    assert number(r"at most (\d+) in flight", out) <= 4
    assert len(re.findall(r" -> \[\d{4}\]", out)) == 8
    assert "jit(map_reduce): same answer; 2 requests, 9 completions" in out


def test_self_consistency(tmp_path):
    out = run_example("self_consistency.py", cwd=tmp_path)
    assert re.search(r"answer: '\w+', chosen by \d+% of 7 samples", out)
    assert "7 samples in 1 request(s)" in out
    assert "fuse: 7 sampled calls -> 1 n-request" in out
    assert "cse: merged 0 llm calls" in out  # sampled calls are never merged


def test_reliability(tmp_path):
    out = run_example("reliability.py", cwd=tmp_path)
    retries = number(r"12 of 12 answers; (\d+) retries, 0 failures", out)
    assert retries >= 1
    assert len(re.findall(r"log: ember INFO .* retrying in", out)) == retries  # one line each
    assert "throttling (HTTP 429)" in out
    assert 0.09 <= number(r"ember\.TimeoutError after ([0-9.]+)s", out) < 0.4
    first = re.search(r"first call: 1 request\(s\), [0-9.]+s, text (.*)", out)
    second = re.search(r"second call: 0 request\(s\), [0-9.]+s, text (.*)", out)
    assert first and second and first.group(1) == second.group(1)
    assert "entries removed by cache_clear(): 1" in out
    assert "at most 2 reached sim at once" in out
    assert not (tmp_path / "cache").exists()  # the example used its own folder


def test_inspect_graph(tmp_path):
    out = run_example("inspect_graph.py", cwd=tmp_path)
    assert "dce: removed 1 llm call" in out
    assert "cse: merged 1 llm call" in out
    assert "fuse: 3 sampled calls -> 1 n-request; 2 calls -> 1 llm_batch" in out
    assert "estimate:\n  3 requests" in out
    assert "critical path  1.60 s" in out  # two model latencies of 0.8 s
    mermaid = out.split("flowchart TD", 1)[1]
    assert "✗ removed" in mermaid and "≡ merged" in mermaid and "⊕ fused n=3" in mermaid


def test_inspect_cli_on_an_example():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "ember.cli", "inspect",
                           "examples.inspect_graph:review", "some text", "--format", "mermaid"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("flowchart TD") and "✗ removed" in proc.stdout


def test_every_example_is_tested():
    tested = {"quickstart.py", "ensemble_judge.py", "week1_pipeline.py", "map_reduce.py",
              "self_consistency.py", "reliability.py", "inspect_graph.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


# ---- the docs ---------------------------------------------------------------------------
def test_api_reference_covers_all_public_names():
    api = (DOCS / "api.md").read_text()
    documented = set(re.findall(r"^::: ember\.(\w+)", api, re.M))
    public = {name for name in ember.__all__ if not name.startswith("_")}
    assert public <= documented, f"missing from docs/api.md: {sorted(public - documented)}"


def test_nav_pages_exist():
    config = (ROOT / "mkdocs.yml").read_text()
    pages = re.findall(r"^\s+- [^:]+: (\S+\.md)\s*$", config, re.M)
    assert pages and all((DOCS / p).exists() for p in pages), pages


def test_docs_install_from_the_checkout_and_show_keyword_only_options():
    from ember.backends.ray import INSTALL_HINT

    texts = {p.name: p.read_text() for p in [*DOCS.glob("*.md"), ROOT / "README.md"]}
    texts["ember.backends.ray.INSTALL_HINT"] = INSTALL_HINT
    for name, text in texts.items():
        # Ember is not on PyPI: its extras install from the checkout (pip install -e)
        assert not re.search(r"pip install [\"']?ember\b", text), name
        # vmap's options are keyword-only: a signature written out marks them with `*`
        assert not re.search(r"vmap\(f, (?!\*)[^)]*=None\)", text), name
    assert 'pip install -e ".[ray]"' in INSTALL_HINT


FENCE = re.compile(r"(<!-- norun -->\s*\n)?^```python[^\n]*\n(.*?)^```", re.M | re.S)


def runnable_blocks(page: Path) -> list[str]:
    """The ```python blocks of a page, except those right after ``<!-- norun -->``
    (they need an API key or a server) and snippet includes of the examples (which
    the tests above run)."""
    return [textwrap.dedent(body) for skip, body in FENCE.findall(page.read_text())
            if not skip and not body.lstrip().startswith("--8<--")]


DOC_PAGES = sorted(p.name for p in DOCS.glob("*.md") if runnable_blocks(p))


@pytest.mark.parametrize("page", DOC_PAGES)
def test_docs_code_blocks_run(page, tmp_path):
    """A page's blocks run in order in one namespace, in a fresh process, on `sim`."""
    blocks = runnable_blocks(DOCS / page)
    script = "\n".join(
        f"print('--- block {i}')\nexec(compile({b!r}, '{page} block {i}', 'exec'), ns)"
        for i, b in enumerate(blocks, 1))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EMBER_CACHE_DIR": str(tmp_path / "cache")}
    for key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "EMBER_SIM_LATENCY", "EMBER_MODEL"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-c", "ns = {'__name__': '__main__'}\n" + script],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{page}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def test_docs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    pytest.importorskip("mkdocstrings_handlers.python")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                           "--site-dir", str(tmp_path / "site")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "WARNING" not in proc.stderr, proc.stderr[-5000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "configure_limits" in api and "Retry transient failures" in api
    examples = (tmp_path / "site" / "examples" / "index.html").read_text()
    assert "--8&lt;--" not in examples and "PERSONAS" in examples  # snippets included
