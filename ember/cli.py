"""The `ember` command: ``ember demo`` and ``ember inspect module:function``."""

from __future__ import annotations

import argparse
import difflib
import importlib
import importlib.util
import json
import math
import os
import sys
from typing import Any, Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    from . import __version__

    parser = argparse.ArgumentParser(prog="ember", description="LLM programs as plain functions.")
    parser.add_argument("--version", action="version", version=f"ember {__version__} "
                        f"(Python {sys.version.split()[0]})")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run a small program eagerly and with jit, offline")
    demo.add_argument("--latency", type=_seconds, default=None,
                      help="simulated model latency in seconds (default: EMBER_SIM_LATENCY, "
                      "else 0.15)")
    demo.add_argument("--docs", type=_positive, default=3, help="number of documents (default 3)")

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
        from .errors import ConfigurationError
        from .providers.sim import env_latency

        if ns.latency is None:  # (read here: a bad value must not break other commands)
            try:
                ns.latency = env_latency(default=0.15)
            except ConfigurationError as exc:
                demo.error(f"{exc.message} Or pass --latency.")
        return run_demo(latency=ns.latency, docs=ns.docs)
    return _inspect_command(ns)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(
            f"expected a non-negative number of seconds such as 0.2, got {text!r}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def _load(target: str) -> Any:
    """The function ``module:function`` or ``path/to/file.py:function`` names."""
    module_name, sep, attr = target.rpartition(":")  # (the last colon: C:\\x.py:fn)
    if not sep or not attr or not module_name:
        raise SystemExit(f"ember inspect: expected module:function or file.py:function, "
                         f"got {target!r}")
    try:
        obj: Any = _import(module_name)
    except Exception as exc:  # ImportError, or the module itself failed (SyntaxError, ...)
        raise SystemExit(f"ember inspect: cannot import {module_name!r}: "
                         f"{type(exc).__name__}: {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            names = [n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n))]
            close = difflib.get_close_matches(part, names, n=1)
            hint = (f"; did you mean {close[0]!r}?" if close else
                    f"; it has {', '.join(names[:12])}" if names else "")
            raise SystemExit(f"ember inspect: {module_name!r} has no {attr!r}{hint}") from None
    if not callable(obj):
        raise SystemExit(f"ember inspect: {target!r} is a {type(obj).__name__}, not a function")
    return obj


def _import(name: str) -> Any:
    """A module by name (found from the current directory too), or a ``.py`` file."""
    if name.endswith(".py") or os.sep in name or (os.altsep and os.altsep in name):
        path = os.path.abspath(name)
        if not os.path.isfile(path):
            raise ImportError(f"no file {path}")
        folder = os.path.dirname(path)  # (its own imports of sibling modules)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        stem = os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(stem, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path} as Python")
        module = importlib.util.module_from_spec(spec)
        sys.modules[stem] = module  # (dataclasses and pickling look modules up by name)
        spec.loader.exec_module(module)
        return module
    cwd = os.getcwd()  # `ember inspect mymod:fn` finds mymod.py in the current directory
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    return importlib.import_module(name)


def _parse_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _inspect_command(ns: argparse.Namespace) -> int:
    from ._inspect import inspect

    try:
        report = inspect(_load(ns.target), *[_parse_arg(a) for a in ns.args])
    except (TypeError, ValueError) as exc:  # arguments that do not fit the function
        print(f"ember inspect: {exc}", file=sys.stderr)
        return 2
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
        try:
            with open(ns.output, mode) as fh:
                fh.write(data)
        except OSError as exc:
            print(f"ember inspect: cannot write {ns.output}: {exc.strerror or exc}",
                  file=sys.stderr)
            return 2
    elif isinstance(data, bytes):
        sys.stdout.buffer.write(data)
    else:
        sys.stdout.write(data)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
