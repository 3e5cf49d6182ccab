"""Ember's event loop: one asyncio loop in a daemon thread owns every provider client.

Sync callers submit coroutines and block on the result, so a sync call works from a
plain script and from inside a running loop (Jupyter, FastAPI) without deadlock.
Async callers await the same coroutine through `asyncio.wrap_future`.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextvars
import threading
from typing import Any, Coroutine, TypeVar

__all__ = ["loop", "run_sync", "run_async", "on_loop"]

T = TypeVar("T")
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_lock = threading.Lock()


def loop() -> asyncio.AbstractEventLoop:
    """The background loop, started on first use."""
    global _loop, _thread
    if _loop is not None:
        return _loop
    with _lock:
        if _loop is None:
            new = asyncio.new_event_loop()
            ready = threading.Event()

            def main() -> None:
                asyncio.set_event_loop(new)
                new.call_soon(ready.set)
                new.run_forever()

            _thread = threading.Thread(target=main, name="ember-loop", daemon=True)
            _thread.start()
            ready.wait()
            _loop = new
    return _loop


def on_loop() -> bool:
    """True when called from Ember's own loop thread."""
    return threading.current_thread() is _thread


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    ctx = contextvars.copy_context()
    lp = loop()
    return asyncio.run_coroutine_threadsafe(_in_context(ctx, coro), lp)


async def _in_context(ctx: contextvars.Context, coro: Coroutine[Any, Any, T]) -> T:
    # run the coroutine as a task created inside the caller's context, so context
    # variables (retry policy, run recorder) follow the call onto the loop thread
    task = ctx.run(asyncio.get_running_loop().create_task, coro)
    return await task


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on Ember's loop and wait for it. Ctrl-C cancels it."""
    if on_loop():
        coro.close()
        raise RuntimeError(
            "A blocking Ember call was made from inside Ember's own event loop; "
            "use the async form (await ember.amodels(...)) in async code.")
    fut = submit(coro)
    try:
        return fut.result()
    except KeyboardInterrupt:
        fut.cancel()
        raise


async def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Await a coroutine that runs on Ember's loop, from any other loop."""
    if on_loop():
        return await coro
    fut = submit(coro)
    try:
        return await asyncio.wrap_future(fut)
    except asyncio.CancelledError:
        fut.cancel()
        raise


def _shutdown() -> None:
    if _loop is not None and _loop.is_running():
        from . import providers

        async def close_all() -> None:
            for inst in list(providers._instances.values()):
                try:
                    await inst.aclose()
                except Exception:  # pragma: no cover - best effort at exit
                    pass

        try:
            asyncio.run_coroutine_threadsafe(close_all(), _loop).result(timeout=2)
        except Exception:  # pragma: no cover
            pass
        _loop.call_soon_threadsafe(_loop.stop)


atexit.register(_shutdown)
