"""Each jitted or vmapped function's latest run report, as this thread or task saw it.

One context variable for all of them, holding a table with weak keys: a variable per
function stayed in every context that set it, with its report, after the function was
gone (a jit made per request leaked ~5 MB per 1,000 requests in a worker thread). The
table is copied when set, so tasks and threads that copied a context keep their own.
"""

from __future__ import annotations

import contextvars
import weakref
from typing import Any

__all__ = ["own_report", "set_own_report"]

_own: contextvars.ContextVar[weakref.WeakKeyDictionary | None] = \
    contextvars.ContextVar("ember_latest_runs", default=None)


def own_report(owner: Any) -> Any:
    """``owner``'s latest report in this thread or task, or None."""
    table = _own.get()
    return table.get(owner) if table is not None else None


def set_own_report(owner: Any, report: Any) -> None:
    table = _own.get()
    fresh: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary(table or {})
    fresh[owner] = report
    _own.set(fresh)
