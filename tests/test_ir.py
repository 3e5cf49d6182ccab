"""The IR: verifier, printers (golden), rule tables, tracer edge cases."""

from __future__ import annotations

import pytest

import ember
from ember import models
from ember.ir import (AnyT, Batched, Graph, GraphError, Json, ListT, Lit, Node, ResponseT, Str,
                      Var, check_graph, format_graph, to_dot, to_mermaid)
from ember.ir.types import is_subtype


def small_graph() -> Graph:
    x = Var(Str)
    p = Var(Str)
    r = Var(ResponseT)
    t = Var(Str)
    nodes = [
        Node("format", [x], {"segments": ("Analyze: ", ""), "specs": ("",)}, p, "/app/main.py:3"),
        Node("llm", [p, Lit(None)], {"model": "sim", "params": (), "n": 1,
                                     "deterministic": True}, r, "/app/main.py:3"),
        Node("attr", [r], {"name": "text"}, t, "/app/main.py:4"),
    ]
    return Graph([x], nodes, [t])


GOLDEN = """\
{ lambda a:Str . let
    b:Str = format[segments=('Analyze: ', ''), specs=('',)] a  # main.py:3
    c:Response = llm[deterministic=True, model='sim', n=1] b None  # main.py:3
    d:Str = attr[name='text'] c  # main.py:4
  in (d) }"""


def test_printer_golden():
    assert format_graph(small_graph()) == GOLDEN
    assert str(small_graph()) == GOLDEN


def test_dot_and_mermaid_name_every_node_and_edge():
    g = small_graph()
    dot = to_dot(g, "demo")
    assert dot.startswith('digraph "demo"') and dot.count("->") == 4
    assert "llm sim" in dot and "main.py:3" in dot
    mermaid = to_mermaid(g)
    assert mermaid.startswith("flowchart TD") and mermaid.count("-->") == 4
    assert "[[\"llm sim\"]]" in mermaid


def test_verifier_accepts_a_good_graph():
    assert check_graph(small_graph()) is not None


def test_verifier_rejects_use_before_definition():
    g = small_graph()
    g.nodes[0], g.nodes[1] = g.nodes[1], g.nodes[0]
    with pytest.raises(GraphError, match="before it is defined") as info:
        check_graph(g)
    assert "-->" in str(info.value)  # shows the nodes around the problem


def test_verifier_rejects_redefinition_and_bad_types():
    g = small_graph()
    g.nodes.append(g.nodes[-1])
    with pytest.raises(GraphError, match="redefines"):
        check_graph(g)
    g = small_graph()
    g.nodes[1].out.type = Str
    with pytest.raises(GraphError, match="should produce Response"):
        check_graph(g)
    g = small_graph()
    g.outputs.append(Var(Str))
    with pytest.raises(GraphError, match="never defined"):
        check_graph(g)
    g = small_graph()
    g.inputs.append(g.inputs[0])
    with pytest.raises(GraphError, match="twice"):
        check_graph(g)


def test_node_creation_checks_op_and_params():
    with pytest.raises(GraphError, match="unknown op"):
        Node("frobnicate", [], {}, Var(AnyT))
    with pytest.raises(GraphError, match="hashable"):
        Node("getitem", [Var(Json)], {"key": ["unhashable"]}, Var(Json))


def test_type_rules():
    g = small_graph()
    bad = Node("format", [Var(Str)], {"segments": ("a",), "specs": ("",)}, Var(Str))
    g2 = Graph([bad.inputs[0]], [bad], [])
    with pytest.raises(GraphError, match="one more segment"):
        check_graph(g2)
    assert is_subtype(ResponseT, Str) and is_subtype(Str, AnyT)
    assert is_subtype(ListT(ResponseT), ListT(Str)) and not is_subtype(Json, Str)
    assert str(ListT(Str)) == "List[Str]" and str(Batched(Str)) == "Str[*]"
    assert g.count("llm") == 1 and set(g.users()) and set(g.producers())


def test_inspect_reads_like_a_jaxpr_and_names_source_lines():
    def analyze(text: str):
        opinions = [models("sim", f"Expert {i}: {text}") for i in range(3)]
        return models("sim", "Judge:\n" + "\n".join(o.text for o in opinions))

    report = ember.inspect(analyze, "some text")
    text = str(report)
    assert "{ lambda a:Str . let" in text and "llm" in text
    assert "test_ir.py:" in text
    assert "estimate" in text and "passes:" in text
    assert report.graph.count("llm") + report.graph.count("llm_batch") >= 1
    assert report.before.count("llm") == 4
    assert "digraph" in report.dot() and "flowchart" in report.mermaid()
    assert report.complete and not report.breaks


def test_inspect_lists_breaks():
    def f(x: str):
        r = models("sim", x)
        if "yes" in r.text:
            return models("sim", "more")
        return r

    def g(x: str):
        r = models("sim", x)
        if r.json():
            return r
        return None

    report = ember.inspect(g, "hi")
    assert not report.complete and report.breaks
    assert "bool()" in str(report) and "needs a model answer" in str(report)
    report = ember.inspect(f, "hi")  # `in` on an answer's text is a break too
    assert not report.complete and "`in` on a model's answer" in str(report.breaks[0])
    # (on a string built from answers, e.g. an f-string, it is not: which is why jit
    # checks every answer on real values, see test_jit)
