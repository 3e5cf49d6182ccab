"""`retry` and `timeout`: reliability as plain function wrappers.

Both set the call options (ember/backends/policy.py) for the duration of the wrapped
function, so every model call inside — eager, traced under `jit` (the tracer copies
the options onto each node), or answered in jit's check run — carries them:

- `retry`: failed *calls* are retried where they fail, in the backend's one retry
  loop (a 429 waits for its ``Retry-After``; under jit only the failed calls and what
  depends on them run again). Errors raised by the function itself — a `ParseError`
  from ``.json()`` — re-run the function: a sampled call then gets a fresh sample (in
  a jit check run, the memo has no answer for the next occurrence, so it is fetched).
  An error a retry layer already gave up on is ``final``: no outer layer repeats it.
- `timeout`: a relative limit. Eagerly the clock starts when the function is called;
  in a replayed graph, when the region's first call starts. Every model call inside
  is cancelled at the limit (closing its HTTP request). An ``async def`` function is
  also cancelled as a whole (`asyncio.wait_for` semantics); a sync function cannot be
  interrupted between model calls, so its pure-Python time is not bounded.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from typing import Any, Callable

from ._keywords import hint_keywords
from .backends.dispatch import describe_error
from .backends.policy import (CallOptions, RetryPolicy, current_options, deadlines_var,
                              new_region, options_var, rerun_var)
from .errors import EmberError, ParseError, TimeoutError
from .ir.trace import StopTrace, current_trace

__all__ = ["retry", "timeout", "is_async"]

log = logging.getLogger("ember")


def is_async(fn: Callable) -> bool:
    """``async def`` functions, and wrappers of them (jit, retry, ...)."""
    if inspect.iscoroutinefunction(fn) or getattr(fn, "is_async", False) is True:
        return True
    return inspect.iscoroutinefunction(getattr(fn, "__call__", None))


def _name(fn: Callable) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", type(fn).__name__)


# ---- retry ------------------------------------------------------------------------------
@hint_keywords({"attempts": "max_attempts", "tries": "max_attempts", "max_tries": "max_attempts",
                "retries": "max_attempts", "max_retries": "max_attempts",
                "delay": "initial_delay", "wait": "initial_delay", "base_delay": "initial_delay",
                "min_delay": "initial_delay", "max_wait": "max_delay", "backoff": "multiplier",
                "factor": "multiplier", "exp_base": "multiplier"})
def retry(fn: Callable | None = None, *, max_attempts: int = 3, initial_delay: float = 0.5,
          max_delay: float = 30.0, multiplier: float = 2.0, jitter: bool = True) -> Any:
    """Retry transient failures: ``retry(fn, max_attempts=3)`` or ``@retry(...)``.

    Retried: throttling 429s (never before their ``Retry-After``), 5xx, timeouts,
    dropped connections, malformed bodies, and `ParseError` raised inside ``fn`` (which
    re-runs ``fn`` at once, for a new sample). Never retried: 400/401/403/404, context
    length, quota exhaustion. Backoff before retry k (k = 1, 2, ...): ``initial_delay *
    multiplier**(k-1)`` seconds, capped at ``max_delay``; with ``jitter``, a uniform draw
    between half of that and all of it. The final error lists the attempts.
    """
    policy = RetryPolicy(max_attempts, initial_delay, max_delay, multiplier, jitter)
    if fn is None:
        return lambda f: _retrying(f, policy)
    return _retrying(fn, policy)


def _retrying(fn: Callable, policy: RetryPolicy) -> Callable:
    if not callable(fn):
        hint = (f"; for {fn} attempts: retry(fn, max_attempts={fn}) or "
                f"@retry(max_attempts={fn})") if _is_number(fn) else ""
        raise TypeError(f"retry() needs a function, got {fn!r}{hint}")

    def options() -> CallOptions:
        return current_options().with_(retry=policy)

    if is_async(fn):
        @functools.wraps(fn, updated=())
        async def aretried(*args: Any, **kwargs: Any) -> Any:
            token = options_var.set(options())
            try:
                if current_trace() is not None:
                    return await fn(*args, **kwargs)
                history: list[str] = []
                while True:
                    again = rerun_var.set(rerun_var.get() + 1) if history else None
                    try:
                        return await fn(*args, **kwargs)
                    except EmberError as exc:
                        wait = _after_failure(fn, policy, exc, history)
                    finally:
                        if again is not None:
                            rerun_var.reset(again)
                    if wait:
                        await asyncio.sleep(wait)
            finally:
                options_var.reset(token)
        return aretried

    @functools.wraps(fn, updated=())
    def retried(*args: Any, **kwargs: Any) -> Any:
        token = options_var.set(options())
        try:
            if current_trace() is not None:  # calls are retried per node; trace once
                return fn(*args, **kwargs)
            history: list[str] = []
            while True:
                again = rerun_var.set(rerun_var.get() + 1) if history else None
                try:
                    return fn(*args, **kwargs)
                except EmberError as exc:
                    wait = _after_failure(fn, policy, exc, history)
                finally:
                    if again is not None:
                        rerun_var.reset(again)
                if wait:
                    time.sleep(wait)
        finally:
            options_var.reset(token)
    return retried


def _after_failure(fn: Callable, policy: RetryPolicy, exc: EmberError,
                   history: list[str]) -> float:
    """Seconds to wait before running ``fn`` again, or re-raise ``exc``."""
    if not policy.retryable(exc):
        raise exc
    history.append(describe_error(exc))
    n = len(history)
    if n >= policy.max_attempts:
        exc.final = True  # type: ignore[attr-defined]  # an outer retry must not repeat it
        if n > 1:
            exc.notes.append(f"ember.retry gave up on {_name(fn)} after {n} attempts: " +
                             "; ".join(f"{i}) {h}" for i, h in enumerate(history, 1)))
        raise exc
    wait = 0.0 if isinstance(exc, ParseError) else policy.delay(n, exc)
    log.info("%s raised %s on attempt %d/%d; running it again in %.2fs", _name(fn),
             history[-1], n, policy.max_attempts, wait)
    return wait


# ---- timeout ----------------------------------------------------------------------------
@hint_keywords({"timeout": "seconds", "secs": "seconds", "limit": "seconds", "s": "seconds"})
def timeout(fn: Callable | float | None = None, seconds: float | None = None) -> Any:
    """Give ``fn`` at most ``seconds``: ``timeout(fn, 10)``, ``timeout(fn, seconds=10)``,
    ``@timeout(10)`` or ``@timeout(seconds=10)``. At the limit, in-flight requests are
    cancelled and `ember.TimeoutError` (a builtin `TimeoutError`) is raised."""
    if seconds is None and _is_number(fn):  # @timeout(10)
        fn, seconds = None, fn  # type: ignore[assignment]
    if seconds is None:
        raise TypeError("timeout() needs the seconds: timeout(fn, 10) or @timeout(10)")
    if not _is_number(seconds) or not seconds > 0:
        raise ValueError(f"timeout() needs seconds > 0, got {seconds!r}")
    if fn is None:
        return lambda f: _limited(f, float(seconds))
    return _limited(fn, float(seconds))  # type: ignore[arg-type]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _limited(fn: Callable, seconds: float) -> Callable:
    if not callable(fn):
        raise TypeError(f"timeout() needs a function, got {fn!r}")
    region = new_region()  # stable per wrapper: part of jit's cache key

    def enter() -> tuple[Any, Any, float | None]:
        """Scope the options; start the clock unless tracing. (tokens, deadline)"""
        opts = current_options()
        state = current_trace()
        if all(r != region for r, _ in opts.timeouts):
            entries = opts.entries + (-1,) * (len(opts.timeouts) - len(opts.entries))
            if state is not None:  # the k-th call of this wrapper in the trace
                counts = state.timeout_entries
                k = counts[region] = counts.get(region, -1) + 1
                entries += (k,)
            opts = opts.with_(timeouts=opts.timeouts + ((region, seconds),),
                              entries=entries if state is not None else opts.entries)
        otoken = options_var.set(opts)
        if state is not None:
            return otoken, None, None
        table = dict(deadlines_var.get() or {})
        deadline = time.monotonic() + seconds
        deadline = table[region] = min(deadline, table.get(region, deadline))
        return otoken, deadlines_var.set(table), deadline

    def leave(otoken: Any, dtoken: Any) -> None:
        if dtoken is not None:
            deadlines_var.reset(dtoken)
        options_var.reset(otoken)

    def expired(exc: EmberError, deadline: float | None) -> EmberError:
        # this region is over: an outer retry may run it again with a new clock (its
        # clock, or, in a jitted call's check run, the graph run's, which the error names)
        if (deadline is not None and time.monotonic() >= deadline - 0.01
                or region in getattr(exc, "regions", ())):
            exc.final = False  # type: ignore[attr-defined]
        return exc

    if is_async(fn):
        @functools.wraps(fn, updated=())
        async def alimited(*args: Any, **kwargs: Any) -> Any:
            otoken, dtoken, deadline = enter()
            try:
                # the function's own awaits (a tool call) are limited too: eagerly, in a
                # jitted call's check run and while tracing, where model calls take no
                # time (the graph's requests are limited by the graph's clocks)
                limit = seconds if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    return await asyncio.wait_for(fn(*args, **kwargs), limit)
                except EmberError as exc:
                    raise expired(exc, deadline)
                except asyncio.TimeoutError:
                    if deadline is None:  # while tracing: the Python runs on real values
                        raise StopTrace(f"{_name(fn)} passed its ember.timeout while "
                                        "tracing") from None
                    raise TimeoutError(
                        f"{_name(fn)} did not finish within {seconds:g}s (ember.timeout); "
                        "its in-flight requests were cancelled.") from None
            finally:
                leave(otoken, dtoken)
        return alimited

    @functools.wraps(fn, updated=())
    def limited(*args: Any, **kwargs: Any) -> Any:
        otoken, dtoken, deadline = enter()
        try:
            return fn(*args, **kwargs)
        except TimeoutError as exc:
            raise expired(exc, deadline)
        finally:
            leave(otoken, dtoken)
    return limited
