"""The `ember` command: ``ember demo`` and ``ember inspect module:function``."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any, Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ember", description="LLM programs as plain functions.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run a small program eagerly and with jit, offline")
    demo.add_argument("--latency", type=float, default=0.15,
                      help="simulated model latency in seconds (default 0.15)")
    demo.add_argument("--docs", type=int, default=3, help="number of documents (default 3)")

    insp = sub.add_parser("inspect", help="show a function's graph before and after the passes")
    insp.add_argument("target", help="module:function, e.g. examples.quickstart:analyze")
    insp.add_argument("args", nargs="*", help="example arguments (JSON if they parse, else strings)")
    insp.add_argument("--format", choices=("text", "dot", "mermaid", "svg"), default="text")
    insp.add_argument("--view", choices=("passes", "optimized", "traced"), default="passes",
                      help="pictures: the traced graph with the passes' effects marked "
                           "(default), the optimized graph, or the traced graph")
    insp.add_argument("-o", "--output", help="write to this file instead of stdout")

    ns = parser.parse_args(argv)
    if ns.command == "demo":
        from ._demo import run_demo

        return run_demo(latency=ns.latency, docs=ns.docs)
    return _inspect_command(ns)


def _load(target: str) -> Any:
    module_name, sep, attr = target.partition(":")
    if not sep or not attr:
        raise SystemExit(f"ember inspect: expected module:function, got {target!r}")
    cwd = os.getcwd()  # `ember inspect mymod:fn` finds mymod.py in the current directory
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module itself failed (SyntaxError, ...)
        raise SystemExit(f"ember inspect: cannot import {module_name!r}: "
                         f"{type(exc).__name__}: {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise SystemExit(f"ember inspect: {module_name!r} has no {attr!r}") from None
    if not callable(obj):
        raise SystemExit(f"ember inspect: {target!r} is a {type(obj).__name__}, not a function")
    return obj


def _parse_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _inspect_command(ns: argparse.Namespace) -> int:
    from ._inspect import inspect

    report = inspect(_load(ns.target), *[_parse_arg(a) for a in ns.args])
    if ns.format == "svg":
        try:
            data: bytes | str = report.svg(ns.view)
        except RuntimeError as exc:
            print(f"ember inspect: {exc}", file=sys.stderr)
            return 2
    else:
        data = {"text": str, "dot": lambda r: r.dot(ns.view) + "\n",
                "mermaid": lambda r: r.mermaid(ns.view) + "\n"}[ns.format](report)
    if ns.output:
        mode = "wb" if isinstance(data, bytes) else "w"
        with open(ns.output, mode) as fh:
            fh.write(data)
    elif isinstance(data, bytes):
        sys.stdout.buffer.write(data)
    else:
        sys.stdout.write(data)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
