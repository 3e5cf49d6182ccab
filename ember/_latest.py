"""Each jitted or vmapped function's latest run report, as this thread or task saw it.

One context variable for all of them, holding a table with weak keys: a variable per
function stayed in every context that set it, with its report, after the function was
gone (a jit made per request leaked ~5 MB per 1,000 requests in a worker thread).

Tasks and threads that copied a context keep their own table: the table notes the
task (or, outside one, the thread) that made it, and a caller that did not make it
copies it before the first change. Its own caller changes it in place: copying on
every call cost time in proportion to the jitted functions the thread had called
(20 ms a call with 5,000 of them alive). Contexts run one after another in one thread
outside any task (``copy_context().run``) share their thread's table.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import weakref
from typing import Any

__all__ = ["own_report", "set_own_report"]

_lock = threading.Lock()
_Table = tuple[weakref.ref, weakref.WeakKeyDictionary]  # (its maker, owner -> report)
_own: contextvars.ContextVar[_Table | None] = contextvars.ContextVar("ember_latest_runs",
                                                                   default=None)


def own_report(owner: Any) -> Any:
    """``owner``'s latest report in this thread or task, or None."""
    held = _own.get()
    return held[1].get(owner) if held is not None else None


def _caller() -> Any:
    """The running task, or else the thread."""
    loop = asyncio._get_running_loop()
    task = asyncio.current_task(loop) if loop is not None else None
    return task if task is not None else threading.current_thread()


def set_own_report(owner: Any, report: Any) -> None:
    held = _own.get()
    me = _caller()
    with _lock:  # (a thread copying this table while its maker changes it)
        if held is not None and held[0]() is me:
            held[1][owner] = report
            return
        fresh: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary(held[1] if held else {})
    fresh[owner] = report
    _own.set((weakref.ref(me), fresh))
