"""Driving a jitted program: its steps ("trace", "check", "run") executed from sync
code, async code, or Ember's own loop (vmap's elements).

A program (`Jitted._program`) is a generator of steps. A driver runs its Python steps
(a trace round, the check run) and hands its "run" steps (coroutines) to the
backend: `_drive_sync` blocks on Ember's loop, `_drive_async` awaits there, and
`advance` steps a program inline until it needs the backend (vmap, on the loop).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
from typing import Any, Callable, Generator

from ._models import CheckRun, NeedAnswers, check_var
from ._runtime import Raised, on_loop, run_async, run_sync
from .backends.record import CallRecord, record
from .ir.trace import trace_var, tracing

__all__ = ["advance", "drive_sync", "drive_async", "drive_on_loop", "Step", "Raised"]

Step = tuple[str, Any]


def advance(program: Generator[Step, Any, Any], value: Any = None,
            error: BaseException | None = None) -> tuple[str, Any]:
    """Step a program, running its Python steps inline, until it needs the backend
    (returns ("run", coroutine)) or finishes (returns ("done", result))."""
    while True:
        try:
            kind, payload = program.throw(error) if error is not None else program.send(value)
        except StopIteration as stop:
            return "done", stop.value
        if kind == "run":
            return kind, payload
        value, error = None, None
        if kind == "trace":
            fn, state, targs, tkwargs = payload
            try:
                with tracing(state):
                    value = fn(*targs, **tkwargs)
            except BaseException as exc:  # handed back to the program
                error = exc
        else:  # "check": the answer; its exceptions are the caller's
            fn, check, args, kwargs = payload
            if on_loop():
                if not check.suspendable:  # it may block: in a thread of its own
                    return "run", _check_in_thread(fn, check, args, kwargs)
            else:
                check.suspendable = False  # this thread may block where it reads
            token = check_var.set(check)
            try:
                value = fn(*args, **kwargs)
                _record_all(check.hits)
            except NeedAnswers as exc:
                error = exc
            except BaseException:
                program.close()
                raise
            finally:
                check_var.reset(token)


_check_threads: concurrent.futures.ThreadPoolExecutor | None = None


async def _check_in_thread(fn: Callable, check: CheckRun, args: tuple, kwargs: dict) -> Any:
    """A blocking check run, from Ember's loop (vmap): in a worker thread, in this
    task's context."""
    global _check_threads
    if _check_threads is None:  # (as many as vmap's default window: none waits for one)
        _check_threads = concurrent.futures.ThreadPoolExecutor(64, "ember-check")
    ctx = contextvars.copy_context()

    def run() -> Any:
        check_var.set(check)  # (in ctx, a copy: the task's own context is untouched)
        value = fn(*args, **kwargs)
        _record_all(check.hits)
        return value

    try:
        return await asyncio.get_running_loop().run_in_executor(_check_threads, ctx.run, run)
    except asyncio.CancelledError:  # (Ctrl-C on the map): the thread sends nothing more
        check.cancel()
        raise


def _record_all(calls: list[CallRecord]) -> None:
    for call in calls:
        record(call)


def drive_sync(program: Generator[Step, Any, Any]) -> Any:
    value: Any = None
    error: BaseException | None = None
    while True:
        kind, payload = advance(program, value, error)
        if kind == "done":
            return payload
        value, error = None, None
        try:
            value = run_sync(payload)
        except BaseException as exc:
            error = exc


async def drive_async(program: Generator[Step, Any, Any]) -> Any:
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            kind, payload = program.throw(error) if error is not None else program.send(value)
        except StopIteration as stop:
            return stop.value
        value, error = None, None
        try:
            if kind == "run":
                try:
                    value = await run_async(payload)
                except Raised as carried:  # (a provider's Ctrl-C: this program's)
                    raise carried.exc from None
            elif kind == "trace":
                fn, state, targs, tkwargs = payload
                token = trace_var.set(state)
                try:
                    value = await fn(*targs, **tkwargs)
                finally:
                    trace_var.reset(token)
            else:
                fn, check, args, kwargs = payload
                token = check_var.set(check)
                try:
                    value = await fn(*args, **kwargs)
                    _record_all(check.hits)
                finally:
                    check_var.reset(token)
        except BaseException as exc:
            if kind == "check" and not isinstance(exc, NeedAnswers):
                program.close()
                raise
            error = exc


async def drive_on_loop(program: Generator[Step, Any, Any]) -> Any:
    """`drive_sync` for a program stepped on Ember's own loop (vmap's elements): its
    "run" steps are awaited there instead of blocked on."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            kind, payload = advance(program, value, error)
        except (StopIteration, SystemExit, KeyboardInterrupt) as exc:  # the Python's own
            raise Raised(exc) from None
        if kind == "done":
            return payload
        try:
            value, error = await payload, None
        except Exception as exc:
            value, error = None, exc
