"""`vmap`: map a function over lists, with a sliding window of elements in flight.

Each element runs as a jitted program (plan / run / check, see ember/_jit.py) and
all elements share one compiled-graph cache: a function without data-dependent
Python is traced once and every element replays the optimized graph. Elements are
interleaved on Ember's event loop — their Python steps run on its thread (microseconds;
a mapped function must not block there: no time.sleep or asyncio.run inside, use an
async function), their model calls overlap — and a new element starts the moment one
finishes (never lock-step chunks). Identical deterministic requests across elements
are sent once (in-flight coalescing). A failing element never loses the others.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import time
from contextvars import ContextVar
from typing import Any, Awaitable, Callable, Sequence

from ._keywords import hint_keywords
from ._latest import own_report, set_own_report
from ._drivers import Raised, drive_async, drive_on_loop
from ._jit import Jitted, trace_inputs
from ._models import check_var
from ._report import RunReport
from ._runtime import run_sync
from .backends.local import execute
from .backends.memo import Memo
from .backends.record import Recorder, recorder_var
from .errors import BatchError, TraceError
from .ir.graph import Graph
from .ir.trace import Suspend, current_trace
from .passes.vmap import hoisted_nodes, split_hoistable

__all__ = ["vmap", "Mapped"]

# The backend of vmaps that name none: set by `ember.backends.ray.use()`.
backend_var: ContextVar[Any] = ContextVar("ember_vmap_backend", default=None)


def _axes(args: tuple, in_axes: Any) -> tuple:
    return (in_axes,) * len(args) if isinstance(in_axes, int) or in_axes is None else tuple(in_axes)


def _split(args: tuple, in_axes: Any, name: str) -> list[tuple]:
    axes = _axes(args, in_axes)
    if len(axes) != len(args):
        raise ValueError(f"vmap({name}): in_axes has {len(axes)} entries for {len(args)} "
                         "positional arguments; give one per argument (0 to map, None to "
                         "broadcast).")
    for ax in axes:
        if ax is not None and (type(ax) is not int or ax != 0):  # (False == 0: refused)
            raise ValueError(f"vmap({name}): in_axes entries must be 0 or None, got {ax!r}.")
    mapped = [i for i, ax in enumerate(axes) if ax == 0]
    if not mapped:
        if not args:  # (keyword arguments are broadcast: never mapped)
            raise ValueError(f"vmap({name}): no positional argument to map over. Keyword "
                             "arguments are passed to every element as they are; pass the "
                             f"list positionally: vmap({name})(items).")
        raise ValueError(f"vmap({name}): no argument is mapped (all in_axes are None).")
    lengths = {}
    for i in mapped:
        if not isinstance(args[i], (list, tuple)):
            raise TypeError(f"vmap({name}): argument {i} is mapped (in_axes 0) but is not a "
                            f"list (got {type(args[i]).__name__}); pass a list or set its "
                            "in_axes to None to broadcast it.")
        lengths[i] = len(args[i])
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"argument {i} has {n}" for i, n in lengths.items())
        raise ValueError(f"vmap({name}): mapped arguments differ in length ({detail}).")
    n = next(iter(lengths.values()))
    return [tuple(args[i][k] if axes[i] == 0 else args[i] for i in range(len(args)))
            for k in range(n)]


def _leaf_mask(element: tuple, axes: tuple, kwargs: dict) -> list[bool]:
    """Which inputs of an element's graph (its argument leaves, in trace order) come
    from mapped arguments."""
    mask: list[bool] = []
    for value, axis in zip(element, axes):
        leaves: list[Any] = []
        trace_inputs(value, None, leaves)
        mask += [axis == 0] * len(leaves)
    leaves = []
    trace_inputs(kwargs, None, leaves)
    return mask + [False] * len(leaves)


class _Hoisted:
    """The nodes of one element graph that do not depend on the mapped arguments
    (`ember.passes.vmap`): run once for the whole map; every element runs the rest
    with their values known, and its check run reads their answers from its memo."""

    def __init__(self, graph: Graph, mask: list[bool]) -> None:
        fits = len(mask) == len(graph.inputs)
        if fits:  # (a batch of hoistable and per-element calls: split, see the pass)
            graph = split_hoistable(graph, mask)
        self.graph, self.mask = graph, mask
        keep = hoisted_nodes(graph, mask) if fits else []
        nodes = [graph.nodes[i] for i in keep]
        self.calls = sum(1 for n in nodes if n.op.startswith("llm"))
        self.sub = Graph(list(graph.inputs), nodes, [n.out for n in nodes])
        self.ids = [n.out.id for n in nodes]
        self.memo = Memo()
        self.task: asyncio.Future | None = None

    async def run(self, leaves: list[Any], memo: Memo) -> dict[int, Any]:
        if self.task is None:
            self.task = asyncio.ensure_future(execute(self.sub, leaves, self.memo))
        env = await asyncio.shield(self.task)
        memo.share(self.memo)
        return await execute(self.graph, leaves, memo, known={i: env[i] for i in self.ids})


class _Hoisting:
    """One map call's hoisted work, per element graph."""

    def __init__(self, axes: tuple, kwargs: dict) -> None:
        self.axes, self.kwargs = axes, kwargs
        self.by_graph: dict[int, _Hoisted] = {}

    def runner(self, element: tuple) -> Callable[[Graph, list, Memo], Any]:
        async def run(graph: Graph, leaves: list[Any], memo: Memo) -> dict[int, Any]:
            hoisted = self.by_graph.get(id(graph))
            mask = None
            if hoisted is None:
                mask = _leaf_mask(element, self.axes, self.kwargs)
                hoisted = self.by_graph[id(graph)] = _Hoisted(graph, mask)
            if hoisted.calls and hoisted.mask == (
                    mask or _leaf_mask(element, self.axes, self.kwargs)):
                return await hoisted.run(leaves, memo)
            return await execute(graph, leaves, memo)
        return run

    def cancel(self) -> None:
        for hoisted in self.by_graph.values():
            task = hoisted.task
            if task is not None and not task.done():  # (an async map: from the caller's loop)
                task.get_loop().call_soon_threadsafe(task.cancel)


class _Progress:
    """One status line on a terminal: done/failed/in flight, tokens and cost so far."""

    def __init__(self, total: int, enabled: bool | None, recorder: Recorder) -> None:
        if enabled is None:
            enabled = total >= 50 and sys.stderr.isatty()
        self.enabled = enabled
        self.total, self.rec = total, recorder
        self.last = 0.0

    def update(self, done: int, failed: int, in_flight: int, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self.last < 0.1):
            return
        self.last = now
        tokens = sum(c.input_tokens + c.output_tokens for c in self.rec.calls)
        cost = sum(c.cost or 0.0 for c in self.rec.calls)
        width = 24
        fill = int(width * done / max(1, self.total))
        sys.stderr.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {done}/{self.total} done"
                         f", {failed} failed, {in_flight} in flight, {tokens:,} tokens, "
                         f"${cost:.4f}" + ("\n" if final else ""))
        sys.stderr.flush()


class Mapped:
    """``vmap(fn)``: call it with lists; returns the list of results in input order."""

    def __init__(self, fn: Callable, in_axes: Any, batch_size: int | None,
                 return_exceptions: bool, progress: bool | None, backend: Any = None) -> None:
        if backend not in (None, "local", "ray") and not hasattr(backend, "amap"):
            raise ValueError(f"vmap: backend must be 'local', 'ray' or an "
                             f"ember.backends.ray.Cluster, got {backend!r}.")
        if batch_size is not None and (type(batch_size) is not int or batch_size < 1):
            raise ValueError(f"vmap: batch_size must be a positive integer or None, got "
                             f"{batch_size!r}.")
        if not callable(fn):
            raise TypeError(f"vmap() needs a function, got {fn!r}")
        self.fn = fn
        self.jitted = fn if isinstance(fn, Jitted) else Jitted(fn)
        self.in_axes = in_axes
        self.batch_size = batch_size
        self.return_exceptions = return_exceptions
        self.progress = progress
        self.backend = backend
        # the last call's results (also after a BatchError, Ctrl-C or a cancel: then None
        # for the elements that had not finished)
        self.results: list[Any] = []
        self._latest: RunReport | None = None
        functools.update_wrapper(self, fn, updated=())  # (see Jitted.__init__)

    def __repr__(self) -> str:
        return f"<vmap {getattr(self.fn, '__qualname__', self.fn)!r}>"

    @property
    def last_run(self) -> RunReport | None:
        """What the latest map did: this thread's or task's latest when it made one
        (maps from several threads or tasks at once each see their own), else the
        latest of any."""
        return own_report(self) or self._latest

    @last_run.setter
    def last_run(self, report: RunReport | None) -> None:
        self._latest = report
        set_own_report(self, report)

    @property
    def is_async(self) -> bool:
        """Mapping an ``async def`` function: the call returns an awaitable."""
        return self.jitted.is_async

    @property
    def name(self) -> str:
        return getattr(self.fn, "__qualname__", "fn")

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        # ``@vmap`` on a method: bound, its object is broadcast to every element
        return self if obj is None else _BoundMap(self, obj)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(args, kwargs, self.in_axes)

    def _call(self, args: tuple, kwargs: dict, in_axes: Any) -> Any:
        elements = _split(args, in_axes, self.name)
        if current_trace() is not None or check_var.get() is not None:
            return self._inline(elements, kwargs)
        backend = self.backend if self.backend is not None else backend_var.get()
        if backend is not None and backend != "local":
            from .backends.ray import resolve

            cluster = resolve(backend)
            return (cluster.amap if self.jitted.is_async else cluster.map)(self, elements, kwargs)
        hoisting = _Hoisting(_axes(args, in_axes), kwargs)
        if self.jitted.is_async:  # an async function: awaited on the caller's loop
            return _unwrapped(self._run(elements, kwargs, hoisting, drive_async, []))
        # Everything runs on Ember's loop: an element's Python steps (trace, check) are
        # short and never block (a missing answer becomes a fetch step), so stepping
        # them there saves a thread hop per element.
        report: list[RunReport] = []  # (made on Ember's loop; set here, for this caller)
        try:  # (run_sync raises what an element let out as it is: sys.exit(), Ctrl-C)
            return run_sync(self._run(elements, kwargs, hoisting, drive_on_loop, report))
        finally:
            if report:
                self.last_run = report[0]

    def _inline(self, elements: list[tuple], kwargs: dict) -> Any:
        """Inside a jitted function (or another vmap): the elements' calls join its
        graph, which runs them together (``batch_size`` does not bound them there:
        `configure_limits` does). Failures are a vmap's: `BatchError`, or in place."""
        fn = self.jitted.fn

        def fail(i: int, exc: Exception, results: list, errors: dict) -> None:
            if isinstance(exc, TraceError):  # (fullgraph=True: the caller's error)
                raise exc
            results.append(exc)
            errors[i] = exc

        if self.jitted.is_async:
            async def each() -> list[Any]:
                results: list[Any] = []
                errors: dict[int, BaseException] = {}
                suspended: Suspend | None = None
                for i, e in enumerate(elements):
                    try:
                        results.append(await fn(*e, **kwargs))
                    except Suspend as exc:
                        suspended = suspended or exc
                        results.append(None)
                    except Exception as exc:
                        fail(i, exc, results, errors)
                if suspended is not None:
                    raise suspended
                return self._finish(results, errors)
            return each()
        results: list[Any] = []
        errors: dict[int, BaseException] = {}
        suspended: Suspend | None = None
        for i, e in enumerate(elements):
            try:
                results.append(fn(*e, **kwargs))
            except Suspend as exc:  # (while planning: record the other elements' calls
                suspended = suspended or exc  # too, so one round sends them all)
                results.append(None)
            except Exception as exc:
                fail(i, exc, results, errors)
        if suspended is not None:
            raise suspended
        return self._finish(results, errors)

    def _finish(self, results: list[Any], errors: dict[int, BaseException]) -> list[Any]:
        self.results = results
        if errors and not self.return_exceptions:
            raise BatchError(results, errors)
        return results

    async def _run(self, elements: list[tuple], kwargs: dict, hoisting: _Hoisting,
                   drive: Callable[[Any], Awaitable[Any]], report: list[RunReport]
                   ) -> list[Any]:
        """Every element's jitted program, driven by ``drive``, under the window; its
        run report goes in ``report`` (and `last_run`)."""
        n = len(elements)
        # filled in place: after Ctrl-C or a cancel, .results still holds what finished
        results: list[Any] = [None] * n
        self.results = results
        errors: dict[int, BaseException] = {}
        rec = Recorder()
        token = recorder_var.set([*recorder_var.get(), rec])
        bar = _Progress(n, self.progress, rec)
        counts = {"done": 0, "active": 0}

        async def one(i: int) -> None:
            counts["active"] += 1
            try:
                results[i] = await drive(self.jitted._program(
                    elements[i], kwargs, hoisting.runner(elements[i])))
            except Raised as carried:
                if not isinstance(carried.exc, StopIteration):  # sys.exit(), Ctrl-C: below
                    raise
                results[i] = errors[i] = carried.exc  # (it cannot leave a coroutine as is)
            except Exception as exc:
                results[i] = errors[i] = exc
            except (SystemExit, KeyboardInterrupt) as exc:
                # the element's sys.exit() or Ctrl-C: the map's, raised in the caller's
                # thread (on Ember's loop it stopped the loop for every caller)
                raise Raised(exc) from None
            finally:
                counts["active"] -= 1
                counts["done"] += 1
                bar.update(counts["done"] - len(errors), len(errors), counts["active"])

        start = time.perf_counter()
        try:
            await _windowed(n, self.batch_size or n, one)
        finally:
            hoisting.cancel()  # only left running when the map was cancelled
            recorder_var.reset(token)
            report.append(RunReport(rec.calls, time.perf_counter() - start,
                                    label=f"vmap({self.name})"))
            self.last_run = report[0]
        bar.update(n - len(errors), len(errors), 0, final=True)
        return self._finish(results, errors)


class _BoundMap:
    """A vmapped method, bound: ``obj.many(xs)`` maps ``many(obj, x)`` over ``xs``. Its
    other attributes (``last_run``, ``results``) are the vmap's."""

    __slots__ = ("_mapped", "_obj")

    def __init__(self, mapped: Mapped, obj: Any) -> None:
        self._mapped, self._obj = mapped, obj

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        axes = self._mapped.in_axes
        if isinstance(axes, int) or axes is None:
            axes = (None, *(axes,) * len(args))
        elif len(axes) == len(args):  # (given for the arguments after self)
            axes = (None, *axes)
        return self._mapped._call((self._obj, *args), kwargs, axes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._mapped, name)


async def _unwrapped(run: Awaitable[list[Any]]) -> list[Any]:
    try:
        return await run
    except Raised as carried:
        raise carried.exc from None


async def _windowed(n: int, window: int, one: Callable[[int], Awaitable[None]]) -> None:
    """``one(0) .. one(n - 1)`` with at most ``window`` in flight; each starts the moment
    a slot frees (a sliding window). Elements start one at a time with a turn of the
    event loop in between: on Python 3.11, aiohttp writes a request's body from a task
    of its own, and starting a whole window in one go would hold every body back until
    the last element had built its request (+20 ms per wave of 20 on a small machine)."""
    gate = asyncio.Semaphore(window)
    loop = asyncio.get_running_loop()
    # only the elements in flight: a task kept per finished element held ~1 KB each
    # until the map ended (150 MB over 100,000 elements)
    running: set[asyncio.Task] = set()
    failed: list[BaseException] = []  # what an element let out (sys.exit(), Ctrl-C)

    async def slot(i: int) -> None:
        try:
            await one(i)
        finally:
            gate.release()

    def finished(task: asyncio.Task) -> None:
        running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            failed.append(task.exception())  # type: ignore[arg-type]

    try:
        for i in range(n):
            await gate.acquire()
            if failed:
                raise failed[0]
            task = loop.create_task(slot(i))
            running.add(task)
            task.add_done_callback(finished)
            if not gate.locked():  # a full window: the next acquire yields anyway
                await asyncio.sleep(0)
        while running and not failed:
            await asyncio.wait(set(running), return_when=asyncio.FIRST_EXCEPTION)
        if failed:
            raise failed[0]
    except BaseException:  # cancelled: so are the elements in flight
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        raise


@hint_keywords({"concurrency": "batch_size", "max_concurrency": "batch_size",
                "workers": "batch_size", "max_workers": "batch_size", "window": "batch_size",
                "n_jobs": "batch_size", "parallelism": "batch_size", "in_axis": "in_axes",
                "axes": "in_axes", "return_errors": "return_exceptions",
                "show_progress": "progress", "progress_bar": "progress"})
def vmap(fn: Callable | None = None, *, in_axes: int | None | Sequence[int | None] = 0,
         batch_size: int | None = None, return_exceptions: bool = False,
         progress: bool | None = None, backend: Any = None) -> Any:
    """Map ``fn`` over lists: ``vmap(f)(xs)`` == ``[f(x) for x in xs]``, concurrently.

    ``in_axes``: 0 maps an argument, None broadcasts it; one int for all or one per
    positional argument. ``batch_size`` bounds the elements in flight (a sliding
    window). A failing element raises `BatchError` naming its index after every other
    element finished (``.results`` keeps them); ``return_exceptions=True`` returns
    the exceptions in place instead. ``progress``: a status line on a terminal
    (default: on for 50+ elements when stderr is a terminal). ``backend``: "local"
    (this process), "ray" or an `ember.backends.ray.Cluster` (elements run on Ray
    actors; see docs/ray.md); default: local, or the `ember.backends.ray.use` block's.
    """
    if fn is None:
        return lambda f: vmap(f, in_axes=in_axes, batch_size=batch_size,
                              return_exceptions=return_exceptions, progress=progress,
                              backend=backend)
    return Mapped(fn, in_axes, batch_size, return_exceptions, progress, backend)
