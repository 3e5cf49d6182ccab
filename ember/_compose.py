"""`chain` and `ensemble`: composition of plain functions."""

from __future__ import annotations

import asyncio
import functools
import inspect
from typing import Any, Callable

from ._reliability import is_async
from .ir.trace import Suspend, current_trace

__all__ = ["chain", "ensemble"]


async def _awaited(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


async def _called(fn: Callable, args: tuple, kwargs: dict) -> Any:
    """``fn(*args, **kwargs)``, awaited if awaitable: made inside the task that awaits it
    (made before, a task cancelled before its first step left it never awaited)."""
    return await _awaited(fn(*args, **kwargs))


def _name(fn: Callable) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def chain(*fns: Callable) -> Callable:
    """Left-to-right composition: ``chain(f, g, h)(x) == h(g(f(x)))``. With an
    ``async def`` among them the chain is async, each step awaited in turn."""
    if not fns:
        raise TypeError("chain() needs at least one function")
    for fn in fns:
        if not callable(fn):
            raise TypeError(f"chain() arguments must be callable, got {fn!r}")
    chained = _chain_async(fns) if any(is_async(fn) for fn in fns) else _chain_sync(fns)
    chained.__name__ = "chain(" + ", ".join(_name(f) for f in fns) + ")"
    chained.__qualname__ = chained.__name__
    return chained


def _chain_sync(fns: tuple[Callable, ...]) -> Callable:
    def chained(*args: Any, **kwargs: Any) -> Any:
        value = fns[0](*args, **kwargs)
        for fn in fns[1:]:
            value = fn(value)
        return value
    return chained


def _chain_async(fns: tuple[Callable, ...]) -> Callable:
    async def chained(*args: Any, **kwargs: Any) -> Any:
        value = await _awaited(fns[0](*args, **kwargs))
        for fn in fns[1:]:
            value = await _awaited(fn(value))
        return value
    return chained


def _each(fns: tuple[Callable, ...], args: tuple, kwargs: dict) -> list[Any]:
    """Every member's result. While jit plans, a member that needs an unfinished answer
    (a graph break) does not stop the members after it: their calls are recorded too,
    so one round sends them all (members that each parse their own answer took a round
    apiece)."""
    if current_trace() is None:
        return [fn(*args, **kwargs) for fn in fns]
    results: list[Any] = []
    suspended: Suspend | None = None
    for fn in fns:
        try:
            results.append(fn(*args, **kwargs))
        except Suspend as exc:
            suspended = suspended or exc
            results.append(None)
    if suspended is not None:
        raise suspended
    return results


def ensemble(*fns: Callable, reduce: Callable[[list[Any]], Any] | None = None) -> Callable:
    """Call every function on the same input; return the list of results, or
    ``reduce(results)``. Called outside `jit`, the members run concurrently (the
    ensemble compiles itself); inside a jitted function it traces transparently. With
    an ``async def`` among them (or as ``reduce``) the ensemble is async, its members
    awaited together and an async ``reduce`` awaited."""
    if not fns:
        raise TypeError("ensemble() needs at least one function")
    for fn in (*fns, *([reduce] if reduce is not None else [])):
        if not callable(fn):
            raise TypeError(f"ensemble() arguments must be callable, got {fn!r}")

    from ._jit import jit

    if any(is_async(fn) for fn in fns) or (reduce is not None and is_async(reduce)):
        async def members(*args: Any, **kwargs: Any) -> Any:
            results = list(await asyncio.gather(*[_called(fn, args, kwargs) for fn in fns]))
            return await _awaited(reduce(results)) if reduce is not None else results

        compiled = jit(members)

        @functools.wraps(members, updated=())
        async def ensembled(*args: Any, **kwargs: Any) -> Any:  # (awaitable: vmap awaits it)
            return await compiled(*args, **kwargs)
    else:
        def members(*args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            results = _each(fns, args, kwargs)
            return reduce(results) if reduce is not None else results

        compiled = jit(members)

        @functools.wraps(members, updated=())
        def ensembled(*args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            return compiled(*args, **kwargs)

    ensembled.__name__ = "ensemble(" + ", ".join(_name(f) for f in fns) + ")"
    ensembled.__qualname__ = ensembled.__name__
    return ensembled
