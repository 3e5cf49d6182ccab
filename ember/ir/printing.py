"""Printers: jaxpr-style text (one line per node, sorted params, source line as a
comment), Graphviz DOT and Mermaid."""

from __future__ import annotations

import os
from typing import Any, Callable

from .graph import Graph, Node, Var

__all__ = ["format_graph", "format_node", "to_dot", "to_mermaid"]

_HIDDEN_PARAMS = {"options"}  # shown only when not default


def _letters(i: int) -> str:
    s = ""
    while True:
        s = chr(ord("a") + i % 26) + s
        i = i // 26 - 1
        if i < 0:
            return s


def _param_repr(value: Any) -> str:
    if callable(value):
        return getattr(value, "__qualname__", repr(value))
    if isinstance(value, str) and len(value) > 48:
        return repr(value[:45] + "...")
    if isinstance(value, tuple) and len(value) > 6:
        return "(" + ", ".join(_param_repr(v) for v in value[:6]) + ", ...)"
    return repr(value)


def _params(node: Node) -> str:
    shown = []
    for k, v in node.params:
        if k in _HIDDEN_PARAMS:
            from ..backends.policy import CallOptions

            if v == CallOptions():
                continue
            v = _options_repr(v)
            shown.append(f"{k}={v}")
            continue
        if k == "params" and not v:
            continue
        shown.append(f"{k}={_param_repr(v)}")
    return "[" + ", ".join(shown) + "]" if shown else ""


def _options_repr(options: Any) -> str:
    from ..backends.policy import DEFAULT_RETRY

    parts = []
    if options.retry != DEFAULT_RETRY:
        parts.append(f"retry={options.retry.max_attempts}")
    if options.timeout is not None:
        parts.append(f"timeout={options.timeout:g}s")
    return "{" + ", ".join(parts) + "}"


def _loc(node: Node) -> str:
    if not node.loc:
        return ""
    path, _, line = node.loc.rpartition(":")
    return f"  # {os.path.basename(path)}:{line}"


def format_node(node: Node, name: Callable[[Any], str] = repr) -> str:
    args = " ".join(name(a) if isinstance(a, Var) else repr(a.value) for a in node.inputs)
    tags = ""
    if node.meta.get("level") is not None:
        tags = f"  ; level {node.meta['level']}"
    return (f"{name(node.out)}:{node.out.type} = {node.op}{_params(node)} {args}".rstrip()
            + tags + _loc(node))


def format_graph(graph: Graph) -> str:
    names: dict[int, str] = {}

    def name(v: Var) -> str:
        if v.id not in names:
            names[v.id] = _letters(len(names))
        return names[v.id]

    ins = " ".join(f"{name(v)}:{v.type}" for v in graph.inputs)
    lines = [f"{{ lambda {ins} . let"]
    for node in graph.nodes:
        lines.append("    " + format_node(node, name))
    outs = ", ".join(name(a) if isinstance(a, Var) else repr(a.value) for a in graph.outputs)
    lines.append(f"  in ({outs}) }}")
    return "\n".join(lines)


def _label(node: Node) -> str:
    if node.op in ("llm", "llm_batch"):
        model = node.param("model")
        n = node.param("n", 1)
        return f"{node.op} {model}" + (f" n={n}" if n > 1 else "")
    if node.op in ("attr", "method"):
        return f".{node.param('name')}"
    if node.op == "call":
        return _param_repr(node.param("fn"))
    return node.op


def _edges(graph: Graph):
    produced = {n.out.id for n in graph.nodes}
    for i, node in enumerate(graph.nodes):
        for a in node.inputs:
            if isinstance(a, Var):
                yield ("n" + str(a.id) if a.id in produced else "in" + str(a.id)), f"n{node.out.id}"


def to_dot(graph: Graph, title: str = "ember") -> str:
    lines = [f'digraph "{title}" {{', "  rankdir=TB;", '  node [fontname="Helvetica"];']
    for i, v in enumerate(graph.inputs):
        lines.append(f'  in{v.id} [label="input {i}: {v.type}", shape=oval];')
    for node in graph.nodes:
        shape = "box, style=filled, fillcolor=\"#ffe0b2\"" if node.op.startswith("llm") else "box"
        loc = f"\\n{_loc(node)[4:]}" if node.loc else ""
        lines.append(f'  n{node.out.id} [label="{_label(node)}{loc}", shape={shape}];')
    for src, dst in _edges(graph):
        lines.append(f"  {src} -> {dst};")
    for i, a in enumerate(graph.outputs):
        if isinstance(a, Var):
            lines.append(f'  out{i} [label="output {i}", shape=oval];')
            src = f"n{a.id}" if any(n.out.id == a.id for n in graph.nodes) else f"in{a.id}"
            lines.append(f"  {src} -> out{i};")
    lines.append("}")
    return "\n".join(lines)


def to_mermaid(graph: Graph) -> str:
    lines = ["flowchart TD"]
    for i, v in enumerate(graph.inputs):
        lines.append(f'  in{v.id}(["input {i}: {v.type}"])')
    for node in graph.nodes:
        label = _label(node).replace('"', "'")
        if node.op.startswith("llm"):
            lines.append(f'  n{node.out.id}[["{label}"]]')
        else:
            lines.append(f'  n{node.out.id}["{label}"]')
    for src, dst in _edges(graph):
        lines.append(f"  {src} --> {dst}")
    for i, a in enumerate(graph.outputs):
        if isinstance(a, Var):
            src = f"n{a.id}" if any(n.out.id == a.id for n in graph.nodes) else f"in{a.id}"
            lines.append(f'  out{i}(["output {i}"])')
            lines.append(f"  {src} --> out{i}")
    return "\n".join(lines)
