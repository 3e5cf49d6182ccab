"""The `ember` command: `ember demo` and `ember inspect module:function`."""

from __future__ import annotations

import itertools
import re
import shutil
import sys

import pytest

import ember
from ember import cli
from ember._inspect import InspectReport
from ember.backends.limits import limiter
from ember.providers import sim

PROGRAM = '''
from ember import models

LIMIT = 3

def analyze(text):
    a = models("sim", f"Summarize: {text}")
    b = models("sim", f"Critique: {text}")
    return models("sim", f"Combine: {a} {b}").text

def per_doc(docs):
    return [models("sim", f"Label: {d}").text for d in docs]

class Tools:
    @staticmethod
    def shout(text):
        return models("sim", f"Shout: {text}").text
'''

_names = itertools.count()


def _reset_limiter():
    # admission state (AIMD cuts after a 429, learned limits) must not leak between tests
    reset = getattr(limiter, "reset", None)
    if reset is not None:
        reset()


@pytest.fixture(autouse=True)
def _reset_sim():
    _reset_limiter()
    yield
    sim.configure(latency=0, error_rate=0, fail_on=None)
    sim.reset_stats()
    _reset_limiter()


@pytest.fixture
def program(tmp_path, monkeypatch):
    """A small module in tmp_path, importable under a fresh name; returns the name."""
    name = f"ember_cli_prog_{next(_names)}"
    (tmp_path / f"{name}.py").write_text(PROGRAM)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield name
    sys.modules.pop(name, None)


# ----------------------------------------------------------------------- demo


def _table(out: str) -> dict[str, list[str]]:
    rows = {}
    for line in out.splitlines():
        for label in ("eager Python", "ember.jit"):
            if line.startswith(label):
                rows[label] = line[len(label):].split()
    return rows


def test_demo_prints_the_table_and_succeeds(capsys):
    assert cli.main(["demo", "--latency", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "Ember demo: 3 documents" in out and "10 ms latency" in out
    assert re.search(r"wall time\s+requests\s+tokens\s+cost \(USD\)", out)
    rows = _table(out)
    wall, requests, tokens, cost = rows["eager Python"]
    assert wall.endswith("s") and requests == "13"  # 3 docs x (3 experts + judge) + summary
    jwall, jrequests, jtokens, jcost = rows["ember.jit"]
    assert int(jrequests) < 13  # batched and parallel
    assert (jtokens, jcost) == (tokens, cost)  # the same work, the same answer
    assert float(cost) > 0
    assert "same answer: yes" in out and "critical-path bound: 0.03s" in out
    assert "summary: " in out


def test_demo_document_count(capsys):
    assert cli.main(["demo", "--latency", "0", "--docs", "1"]) == 0
    out = capsys.readouterr().out
    assert "Ember demo: 1 documents" in out
    assert _table(out)["eager Python"][1] == "5"  # 3 experts + judge + summary


def test_demo_reports_a_mismatch(capsys, monkeypatch):
    import ember._demo as demo

    monkeypatch.setattr(demo, "jit", lambda fn: lambda docs: "something else")
    assert cli.main(["demo", "--latency", "0", "--docs", "1"]) == 1
    assert "same answer: NO" in capsys.readouterr().out


def test_demo_review_is_a_plain_function():
    from ember._demo import DOCUMENTS, review

    out = review(DOCUMENTS[:1])
    assert isinstance(out, str) and out == review(DOCUMENTS[:1])  # sim is deterministic


def test_version(capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.strip() == (
        f"ember {ember.__version__} (Python {sys.version.split()[0]})")


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2
    assert "usage: ember" in capsys.readouterr().err


# -------------------------------------------------------------------- inspect


def test_inspect_text(program, capsys):
    assert cli.main(["inspect", f"{program}:analyze", "hello"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ember.inspect: analyze")
    assert "traced graph:" in out and "optimized graph:" in out and "passes:" in out
    assert "estimate:" in out and "requests" in out
    before = out.split("passes:")[0]
    assert before.count("= llm[") == 3
    assert f"{program}.py:" in out  # nodes point at the user's lines
    assert "llm_batch" in out  # the two independent calls were fused


def test_inspect_dot(program, capsys):
    assert cli.main(["inspect", f"{program}:analyze", "hello", "--format", "dot"]) == 0
    out = capsys.readouterr().out
    assert out.startswith('digraph "analyze" {') and out.rstrip().endswith("}")
    assert "->" in out and "llm sim" in out


def test_inspect_mermaid(program, capsys):
    assert cli.main(["inspect", f"{program}:analyze", "hello", "--format", "mermaid"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("flowchart") and "-->" in out and "llm" in out


def test_inspect_json_arguments(program, capsys):
    assert cli.main(["inspect", f"{program}:per_doc", '["a", "b", "c", "d"]']) == 0
    traced = capsys.readouterr().out.split("passes:")[0]
    assert traced.count("= llm[") == 4  # the argument was parsed as a JSON list


def test_inspect_with_arguments_that_do_not_fit_is_an_error(program, capsys):
    """It printed an empty graph, a TypeError as a 'graph break' and '0 requests', and
    exited 0."""
    assert cli.main(["inspect", f"{program}:analyze"]) == 2
    err = capsys.readouterr().err
    assert "do not fit analyze(text)" in err and "missing a required argument: 'text'" in err
    assert cli.main(["inspect", f"{program}:analyze", "a", "b"]) == 2
    capsys.readouterr()
    assert cli.main(["inspect", f"{program}:analyze", "x", "-o", "/no/such/dir/g.txt"]) == 2
    assert "cannot write /no/such/dir/g.txt: No such file or directory" in capsys.readouterr().err


def test_demo_latency_defaults_to_the_environment(monkeypatch, capsys):
    monkeypatch.setenv("EMBER_SIM_LATENCY", "0.001")
    # (read when the demo runs: the docs' `EMBER_SIM_LATENCY=0.05 ember demo`)
    assert cli.main(["demo", "--docs", "1"]) == 0
    assert "with 1 ms latency" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--help"], ["inspect", "--help"], ["demo", "--help"]])
def test_a_malformed_sim_latency_does_not_break_help(monkeypatch, capsys, argv):
    monkeypatch.setenv("EMBER_SIM_LATENCY", "200ms")
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 0 and "usage: ember" in capsys.readouterr().out


def test_demo_with_a_malformed_sim_latency_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setenv("EMBER_SIM_LATENCY", "200ms")
    with pytest.raises(SystemExit) as info:
        cli.main(["demo"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "EMBER_SIM_LATENCY='200ms'" in err
    assert "such as 0.2" in err and "--latency" in err
    assert cli.main(["demo", "--latency", "0", "--docs", "1"]) == 0  # an explicit one wins


@pytest.mark.parametrize("args,option", [
    (["--latency", "-1"], "--latency"), (["--latency", "nan"], "--latency"),
    (["--latency", "fast"], "--latency"), (["--docs", "0"], "--docs"),
    (["--docs", "-2"], "--docs"), (["--docs", "1.5"], "--docs"),
])
def test_demo_rejects_nonsense_arguments(capsys, args, option):
    with pytest.raises(SystemExit) as info:
        cli.main(["demo", *args])
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"argument {option}: expected a" in err


def test_parse_arg():
    assert cli._parse_arg("42") == 42
    assert cli._parse_arg('{"a": [1, 2]}') == {"a": [1, 2]}
    assert cli._parse_arg("true") is True
    assert cli._parse_arg("hello world") == "hello world"
    assert cli._parse_arg("[unclosed") == "[unclosed"


def test_inspect_dotted_attribute(program, capsys):
    assert cli.main(["inspect", f"{program}:Tools.shout", "hi"]) == 0
    assert "ember.inspect: " in capsys.readouterr().out


def test_inspect_output_file(program, capsys, tmp_path):
    target = tmp_path / "graph.dot"
    assert cli.main(["inspect", f"{program}:analyze", "x", "--format", "dot", "-o", str(target)]) == 0
    assert capsys.readouterr().out == ""
    assert target.read_text().startswith('digraph "analyze"')
    text_file = tmp_path / "report.txt"
    assert cli.main(["inspect", f"{program}:analyze", "x", "--output", str(text_file)]) == 0
    assert text_file.read_text().startswith("ember.inspect: analyze")


def test_inspect_finds_modules_in_the_current_directory(tmp_path, monkeypatch, capsys):
    name = f"ember_cli_cwd_{next(_names)}"
    (tmp_path / f"{name}.py").write_text(PROGRAM)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    try:
        assert cli.main(["inspect", f"{name}:analyze", "x"]) == 0
        assert cli.main(["inspect", f"{name}:analyze", "x"]) == 0
        assert sys.path.count(str(tmp_path)) == 1  # added once, not once per call
    finally:
        sys.modules.pop(name, None)
    assert "ember.inspect: analyze" in capsys.readouterr().out


def test_inspect_takes_a_file_path(tmp_path, monkeypatch, capsys):
    """``ember inspect app.py:analyze`` (a path, as users type it) failed: 'No module
    named app.py'. A file is loaded as a module, from any directory."""
    name = f"ember_cli_file_{next(_names)}"
    folder = tmp_path / "sub"
    folder.mkdir()
    (folder / f"{name}.py").write_text(PROGRAM)
    monkeypatch.chdir(tmp_path)
    try:
        assert cli.main(["inspect", f"sub/{name}.py:analyze", "x"]) == 0
        assert cli.main(["inspect", f"{folder / name}.py:analyze", "x"]) == 0
    finally:
        sys.modules.pop(name, None)
    assert capsys.readouterr().out.count("ember.inspect: analyze") == 2


@pytest.mark.parametrize("target, message", [
    ("no_colon_here", "expected module:function or file.py:function, got 'no_colon_here'"),
    ("{prog}:", "expected module:function"),
    ("ember_no_such_module_xyz:fn", "cannot import 'ember_no_such_module_xyz'"),
    ("{prog}:missing", "has no 'missing'; it has "),
    ("{prog}:analyse", "has no 'analyse'; did you mean 'analyze'?"),
    ("no_such_file.py:fn", "cannot import 'no_such_file.py': ImportError: no file "),
    ("{prog}:Tools.nothing", "has no 'Tools.nothing'"),
    ("{prog}:LIMIT", "is a int, not a function"),
])
def test_bad_target_is_a_clean_exit(program, target, message):
    with pytest.raises(SystemExit) as info:
        cli.main(["inspect", target.format(prog=program), "x"])
    assert isinstance(info.value.code, str) and info.value.code.startswith("ember inspect: ")
    assert message in info.value.code


def test_module_that_fails_to_import_is_a_clean_exit(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "ember_cli_broken.py").write_text("def f(:\n")
    (tmp_path / "ember_cli_raises.py").write_text("raise RuntimeError('no config')\n")
    (tmp_path / "ember_cli_dep.py").write_text("import ember_dependency_not_installed\n")
    for name, why in (("ember_cli_broken", "SyntaxError"), ("ember_cli_raises", "no config"),
                      ("ember_cli_dep", "ember_dependency_not_installed")):
        with pytest.raises(SystemExit) as info:
            cli.main(["inspect", f"{name}:f"])
        assert f"cannot import {name!r}" in info.value.code and why in info.value.code
        sys.modules.pop(name, None)


@pytest.mark.skipif(shutil.which("dot") is not None, reason="graphviz is installed")
def test_svg_without_graphviz(program, capsys):
    assert cli.main(["inspect", f"{program}:analyze", "x", "--format", "svg"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Graphviz is not installed" in captured.err and ".mermaid()" in captured.err


def test_svg_bytes_go_to_stdout_or_a_file(program, capsysbinary, monkeypatch, tmp_path):
    monkeypatch.setattr(InspectReport, "svg", lambda self, view="passes": b"<svg>fake</svg>")
    assert cli.main(["inspect", f"{program}:analyze", "x", "--format", "svg"]) == 0
    assert capsysbinary.readouterr().out == b"<svg>fake</svg>"
    target = tmp_path / "g.svg"
    assert cli.main(["inspect", f"{program}:analyze", "x", "--format", "svg", "-o", str(target)]) == 0
    assert target.read_bytes() == b"<svg>fake</svg>"


def test_help_lists_both_commands(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "demo" in out and "inspect" in out
