"""Printers: jaxpr-style text (one line per node, sorted params, source line as a
comment), Graphviz DOT and Mermaid."""

from __future__ import annotations

import os
from typing import Any, Callable

from .graph import Graph, Node, Var

__all__ = ["format_graph", "format_node", "to_dot", "to_mermaid", "pass_effects"]

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


def format_node(node: Node, name: Callable[[Any], str] = repr, level: int | None = None) -> str:
    args = " ".join(name(a) if isinstance(a, Var) else repr(a.value) for a in node.inputs)
    tags = "" if level is None else f"  ; level {level}"
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
    levels = graph.meta.get("level", {})  # the schedule pass's wavefronts
    for node in graph.nodes:
        lines.append("    " + format_node(node, name, levels.get(node.out.id)))
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


def pass_effects(before: Graph, after: Graph) -> dict[int, tuple[str, str]]:
    """What the passes did to each node of ``before``: out var id -> (kind, note), kind
    one of "removed" (dce), "merged" (cse) and "fused" (n-samples or a batch). Nodes
    that went through unchanged are absent."""
    labels = {n.out.id: _label(n) for n in before.nodes}
    effects: dict[int, tuple[str, str]] = {}
    for vid in after.meta.get("removed", ()):
        effects[vid] = ("removed", "removed by dce: cannot reach an output")
    for vid, rep in after.meta.get("merged", {}).items():
        effects[vid] = ("merged", f"merged by cse into n{rep} ({labels.get(rep, '?')})")
    fused = _fusions(after)
    for node in after.nodes:  # a fused member's result is a getitem of the fused call
        if node.op == "getitem" and node.inputs and isinstance(node.inputs[0], Var):
            note = fused.get(node.inputs[0].id)
            if note is not None and node.out.id in labels:
                effects[node.out.id] = ("fused", note)
    return effects


def _fusions(after: Graph) -> dict[int, str]:
    out = {}
    for node in after.nodes:
        k = len(node.meta.get("locs", ()))
        if k and node.op == "llm":
            out[node.out.id] = f"fused by fuse into one request with n={k}"
        elif k and node.op == "llm_batch":
            out[node.out.id] = f"fused by fuse into one batch of {k}"
    return out


_STYLE_DOT = {"removed": 'style="dashed,filled", fillcolor="#eeeeee", fontcolor="#888888"',
              "merged": 'style="dotted,filled", fillcolor="#f3e5f5"',
              "fused": 'style=filled, fillcolor="#bbdefb"'}
_MARK = {"removed": "✗ removed", "merged": "≡ merged", "fused": "⊕ fused"}


def _mark(effect: tuple[str, str]) -> str:
    kind, note = effect
    if kind == "fused":  # "... with n=3" -> "n=3"; "... batch of 4" -> "batch of 4"
        return f"{_MARK[kind]} " + (note.rsplit(" ", 1)[-1] if "n=" in note
                                    else note[note.index("batch"):])
    return _MARK[kind]


def to_dot(graph: Graph, title: str = "ember",
           effects: dict[int, tuple[str, str]] | None = None) -> str:
    """Graphviz DOT. With ``effects`` (from `pass_effects`), nodes the passes removed,
    merged or fused are drawn marked, with a legend."""
    effects = effects or {}
    lines = [f'digraph "{title}" {{', "  rankdir=TB;", '  node [fontname="Helvetica"];']
    for i, v in enumerate(graph.inputs):
        lines.append(f'  in{v.id} [label="input {i}: {v.type}", shape=oval];')
    for node in graph.nodes:
        style = "style=filled, fillcolor=\"#ffe0b2\"" if node.op.startswith("llm") else ""
        loc = f"\\n{_loc(node)[4:]}" if node.loc else ""
        label = _label(node).replace('"', "'")
        effect = effects.get(node.out.id)
        if effect is not None:
            style = _STYLE_DOT[effect[0]]
            label += f"\\n{_mark(effect)}"
            tooltip = f', tooltip="{effect[1]}"'
        else:
            tooltip = ""
        attrs = ", ".join(a for a in ("shape=box", style) if a)
        lines.append(f'  n{node.out.id} [label="{label}{loc}", {attrs}{tooltip}];')
    for src, dst in _edges(graph):
        lines.append(f"  {src} -> {dst};")
    produced = {n.out.id for n in graph.nodes}
    for i, a in enumerate(graph.outputs):
        if isinstance(a, Var):
            lines.append(f'  out{i} [label="output {i}", shape=oval];')
            src = f"n{a.id}" if a.id in produced else f"in{a.id}"
            lines.append(f"  {src} -> out{i};")
    kinds = sorted({k for k, _ in effects.values()})
    if kinds:
        lines.append('  subgraph cluster_legend { label="passes"; fontname="Helvetica";')
        for k in kinds:
            lines.append(f'    legend_{k} [label="{_MARK[k]}", shape=box, {_STYLE_DOT[k]}];')
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines)


_STYLE_MERMAID = {"removed": "fill:#eee,stroke:#999,stroke-dasharray:5 5,color:#888",
                  "merged": "fill:#f3e5f5,stroke:#8e24aa,stroke-dasharray:2 2",
                  "fused": "fill:#bbdefb,stroke:#1565c0"}


def to_mermaid(graph: Graph, effects: dict[int, tuple[str, str]] | None = None) -> str:
    """Mermaid flowchart; with ``effects``, removed/merged/fused nodes get classes."""
    effects = effects or {}
    lines = ["flowchart TD"]
    for i, v in enumerate(graph.inputs):
        lines.append(f'  in{v.id}(["input {i}: {v.type}"])')
    for node in graph.nodes:
        label = _label(node).replace('"', "'")
        effect = effects.get(node.out.id)
        if effect is not None:
            label += f"<br/>{_mark(effect)}"
        if node.op.startswith("llm"):
            lines.append(f'  n{node.out.id}[["{label}"]]')
        else:
            lines.append(f'  n{node.out.id}["{label}"]')
    for src, dst in _edges(graph):
        lines.append(f"  {src} --> {dst}")
    produced = {n.out.id for n in graph.nodes}
    for i, a in enumerate(graph.outputs):
        if isinstance(a, Var):
            src = f"n{a.id}" if a.id in produced else f"in{a.id}"
            lines.append(f'  out{i}(["output {i}"])')
            lines.append(f"  {src} --> out{i}")
    for kind in sorted({k for k, _ in effects.values()}):
        ids = ",".join(f"n{vid}" for vid, (k, _) in effects.items() if k == kind)
        lines.append(f"  classDef {kind} {_STYLE_MERMAID[kind]}")
        lines.append(f"  class {ids} {kind}")
    return "\n".join(lines)
