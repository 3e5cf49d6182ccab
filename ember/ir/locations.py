"""Where a call came from: the ``file:line`` of the user's code that made it.

Model calls, traced nodes and errors carry it (``Node.loc``, run records, messages).
Computing a frame's line number scans the code's line table, which costs more than
the rest of a traced call, so locations are remembered per code object and
instruction offset.
"""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = ["user_location", "break_site", "exception_site"]

_EMBER_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# id(code) -> (code, {instruction offset: "file:line"}), or (code, None) for ember's own
# code. Holding the code object keeps its id from being reused while the entry exists.
# At most _MAX_LOCATIONS codes, and offsets per code.
_locations: dict[int, tuple[Any, dict[int, str] | None]] = {}
_MAX_LOCATIONS = 4096


def user_location(skip: int = 1) -> str | None:
    """``file:line`` of the innermost frame outside the ember package."""
    frame = sys._getframe(skip)
    while frame is not None:
        code = frame.f_code
        site = _locations.get(id(code))
        if site is None:
            if len(_locations) >= _MAX_LOCATIONS:
                _locations.clear()
            site = _locations[id(code)] = (
                code, None if code.co_filename.startswith(_EMBER_DIR) else {})
        lines = site[1]
        if lines is not None:
            loc = lines.get(frame.f_lasti)
            if loc is None:
                if len(lines) >= _MAX_LOCATIONS:
                    lines.clear()
                loc = lines[frame.f_lasti] = f"{code.co_filename}:{frame.f_lineno}"
            return loc
        frame = frame.f_back
    return None


_stdlib_dirs: tuple[str, ...] | None = None  # (read on first use: sysconfig is not cheap)


def break_site(skip: int = 1) -> tuple[str | None, str | None]:
    """Where a graph break happened: the user's ``file:line`` and, when the break came
    from inside the standard library (``json.loads`` calls ``.startswith()`` on the
    text it is given), the library function that line called, e.g. ``"json.loads"``.
    `user_location` would name the library's own line."""
    frame, via = sys._getframe(skip), None
    while frame is not None:
        name = frame.f_code.co_filename
        if _in_stdlib(name):
            via = _module_of(name, _stdlib()) + "." + frame.f_code.co_name
        elif not name.startswith(_EMBER_DIR):
            return f"{name}:{frame.f_lineno}", via
        frame = frame.f_back
    return None, via


def _stdlib() -> tuple[str, ...]:
    global _stdlib_dirs
    if _stdlib_dirs is None:
        import sysconfig

        paths = sysconfig.get_paths()
        _stdlib_dirs = tuple({os.path.join(paths[k], "") for k in ("stdlib", "platstdlib")})
    return _stdlib_dirs


def _in_stdlib(filename: str) -> bool:
    return filename.startswith(_stdlib()) and "-packages" not in filename


def _module_of(path: str, roots: tuple[str, ...]) -> str:
    """``json`` for ``.../python3.11/json/__init__.py``, ``textwrap`` for ``textwrap.py``."""
    for root in roots:
        if path.startswith(root):
            path = path[len(root):]
            break
    module = path.removesuffix(".py").removesuffix("__init__").rstrip("/\\")
    return module.replace("/", ".").replace("\\", ".")


def exception_site(exc: BaseException) -> str | None:
    """``file:line`` of the innermost frame of ``exc``'s traceback in the user's code
    (neither Ember's nor the standard library's)."""
    site = None
    tb = exc.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if not name.startswith(_EMBER_DIR) and not _in_stdlib(name):
            site = f"{name}:{tb.tb_lineno}"
        tb = tb.tb_next
    return site
