"""Pausing the cycle collector around a burst of long-lived allocations.

A trace allocates a node, a var and a few tuples per step, and the passes a few more
per node; all of it lives as long as the graph, and none of it forms reference
cycles. With the collector running, its scans of the growing heap cost about a third
of a long trace, so both pause it (`pause`). Paused is not enough, though: once the
collector runs again, everything the burst made is young, and it is scanned twice
(young, then middle generation) before it settles, although it is certain to survive.
On 10,000 calls the first of those scans took 15 to 65 ms of a 150 ms trace, more
the colder the memory: that was most of why a node cost more at 10,000 calls than
at 100.

So `resume` moves every tracked object straight to the oldest generation, which only
full collections examine (``gc.freeze()`` then ``gc.unfreeze()``: two list splices,
whatever the heap size). What the program pays: cyclic garbage that happened to be
young at that moment is reclaimed at the next full collection instead of the next
young one. Skipped when the program froze objects itself (``gc.freeze()`` before a
fork): unfreezing would undo that. Skipped on free-threaded builds too: their
collector has no generations, and freezing there marks every object in the heap.

The collector is one per process, and traces run in several threads at once (jit
calls from a thread pool): pauses are counted, and only the last to end restarts it.
"""

from __future__ import annotations

import gc
import sys
import threading

__all__ = ["pause", "resume"]

_GENERATIONAL = "t" not in getattr(sys, "abiflags", "")  # not a free-threaded build
_lock = threading.Lock()
_acquire, _release = _lock.acquire, _lock.release  # (half the cost of `with _lock`)
_depth = 0  # pauses under way, in every thread (the collector is process-wide)
_running = False  # whether the collector ran when the outermost of them began


def pause() -> None:
    """Pause the collector until the matching `resume`. Pauses nest and overlap across
    threads: the collector stays paused until the last of them resumes."""
    global _depth, _running
    # under the lock: a thread that saw another's pause, then disabled the collector
    # after that one resumed, would leave it off for good
    _acquire()
    try:
        if not _depth:
            _running = gc.isenabled()
            gc.disable()
        _depth += 1
    finally:
        _release()


def resume() -> None:
    """End a `pause`. The last one to end promotes what is tracked to the oldest
    generation and restarts the collector, if it was running before."""
    global _depth
    _acquire()
    try:
        _depth -= 1
        if not _depth and _running:
            if _GENERATIONAL and not gc.get_freeze_count():
                gc.freeze()
                gc.unfreeze()
            gc.enable()
    finally:
        _release()
