"""Graph pictures mark what the passes did: removed, merged and fused nodes."""

from __future__ import annotations

import pytest

import ember
from ember import cli, models
from ember.ir.printing import pass_effects


def program(q):
    a = models("sim", f"facts about {q}")
    b = models("sim", f"facts about {q}")  # a duplicate: merged by cse
    models("sim", f"unused {q}")  # dead: removed by dce
    votes = [models("openai/gpt-4o-mini", f"vote {q}", temperature=1.0) for _ in range(3)]
    return a.text + b.text + "".join(v.text for v in votes)


def batched(qs):
    return [models("sim", f"summarize {q}").text for q in qs]


def _by_kind(report):
    out: dict[str, list[str]] = {}
    llm = {n.out.id for n in report.before.nodes if n.op == "llm"}
    for vid, (kind, note) in report.effects().items():
        if vid in llm:
            out.setdefault(kind, []).append(note)
    return out


def test_effects_name_each_pass():
    report = ember.inspect(program, "x")
    kinds = _by_kind(report)
    assert len(kinds["removed"]) == 1 and "dce" in kinds["removed"][0]
    assert len(kinds["merged"]) == 1 and "cse" in kinds["merged"][0]
    assert kinds["fused"] == ["fused by fuse into one request with n=3"] * 3
    # a call nobody touched is unmarked
    assert sum(map(len, kinds.values())) == sum(n.op == "llm" for n in report.before.nodes) - 1


def test_batches_are_marked_as_fused():
    report = ember.inspect(batched, ["a", "b", "c", "d"])
    assert _by_kind(report) == {"fused": ["fused by fuse into one batch of 4"] * 4}
    assert "⊕ fused batch of 4" in report.mermaid()


def test_dot_and_mermaid_show_marks_and_legend():
    report = ember.inspect(program, "x")
    dot = report.dot()
    assert dot.count("✗ removed") == 2 + 1  # the dead call, its prompt, the legend
    assert 'tooltip="fused by fuse into one request with n=3"' in dot
    assert "cluster_legend" in dot and "⊕ fused n=3" in dot
    mer = report.mermaid()
    assert "classDef removed" in mer and "classDef merged" in mer and "classDef fused" in mer
    fused_line = next(line for line in mer.splitlines() if line.startswith("  class ")
                      and line.endswith(" fused"))
    assert len(fused_line.split()[1].split(",")) == 3
    # the plain views carry no marks
    for view in ("optimized", "traced"):
        assert "✗" not in report.dot(view) and "classDef" not in report.mermaid(view)
    assert report.dot("optimized").count("llm ") < report.dot("traced").count("llm ")
    with pytest.raises(ValueError, match="view must be"):
        report.dot("nope")


def test_a_graph_without_effects_is_unmarked():
    report = ember.inspect(lambda q: models("sim", q).text, "x")
    assert report.effects() == {} and "cluster_legend" not in report.dot()
    assert pass_effects(report.before, report.before) == {}


def test_cli_views(tmp_path, monkeypatch, capsys):
    (tmp_path / "picmod.py").write_text(
        "from ember import models\n"
        "def prog(q):\n"
        "    models('sim', 'dead ' + q)\n"
        "    return models('sim', q).text\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cli.main(["inspect", "picmod:prog", "x", "--format", "mermaid"]) == 0
    assert "✗ removed" in capsys.readouterr().out
    assert cli.main(["inspect", "picmod:prog", "x", "--format", "dot", "--view",
                     "optimized"]) == 0
    out = capsys.readouterr().out
    assert "removed" not in out and out.count("llm sim") == 1


def test_an_async_function_is_inspected_from_inside_a_running_loop():
    """Jupyter and web handlers run a loop: inspect traced nothing there (0 requests,
    'asyncio.run() cannot be called from a running event loop')."""
    import asyncio

    async def review(text):
        draft = await ember.amodels("sim", f"Draft: {text}")
        return (await ember.amodels("sim", f"Improve: {draft.text}")).text

    async def main():
        return ember.inspect(review, "x")

    report = asyncio.run(main())
    assert report.complete and report.estimate.requests == 2

