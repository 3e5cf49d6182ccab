"""The local backend: runs a `Graph` on Ember's asyncio loop.

Every node starts the moment its inputs are ready. Cheap nodes (format, attr,
getitem, ...) run inline; model calls become tasks that go through `dispatch.send`,
where admission control starts the highest-priority ready call first when a
provider's concurrency is limited. A failed node's error flows to its dependents,
which are never sent. Model answers are committed to the memo in graph order.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import time
from typing import Any

from .. import providers
from .._request import Request, make_request
from ..ir.graph import Graph, Lit, Node, Var
from ..ir.ops import OPS, is_effectful
from .dispatch import send, send_batch
from .memo import MISSING, Memo
from .policy import CallOptions, deadlines_var
from .record import record_node

__all__ = ["execute", "node_request", "split_model"]

_NO_OPTIONS = CallOptions()


def split_model(model: str) -> tuple[str, str]:
    provider, _, name = model.partition("/")
    return provider, name


def node_request(node: Node, prompt: Any, system: Any, n: int | None = None) -> Request:
    provider, name = split_model(node.param("model"))
    return make_request(provider, name, prompt, system, node.param("params"),
                        node.param("n", 1) if n is None else n)


class _EffectLeft(Exception):
    """An effect the graph left to the check run (see `_Run._effect_blocked`), which runs
    it if the Python reaches it."""


def _snapshot(values: list[Any]) -> list[Any]:
    """An effect's arguments as they were before it ran (it may change a list it got):
    what the check run matches its own call against."""
    try:
        return copy.deepcopy(values)
    except Exception:  # (something deepcopy refuses: compared as it is after the run)
        return values


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


class _Once:
    """An async effect's coroutine, awaited once: a check run that starts over awaits
    its result again, not the effect."""

    def __init__(self, coro: Any) -> None:
        self._coro: Any = coro
        self._done: tuple[bool, Any] | None = None

    def __await__(self) -> Any:
        if self._done is None:
            try:
                self._done = (True, (yield from self._coro.__await__()))
            except Exception as exc:
                self._done = (False, exc)
        ok, value = self._done
        if not ok:
            raise value
        return value


class _Run:
    def __init__(self, graph: Graph, env: dict[int, Any], memo: Memo | None) -> None:
        self.graph = graph
        self.env = env
        self.memo = memo
        if memo is not None:
            memo.runs += 1
        self.run = memo.runs if memo is not None else 0  # (this call's n-th graph run)
        self.priority: dict[int, float] = graph.meta.get("priority", {})  # from schedule
        self.requests: dict[int, Any] = {}  # node out id -> Request or [Request]
        self.tasks: dict[int, asyncio.Task] = {}  # node index -> its model call, in flight
        self.loop = asyncio.get_running_loop()
        self.users: dict[int, list[int]] = {}
        self.waiting: list[int] = []
        self.remaining = len(graph.nodes)
        self.done = self.loop.create_future()
        for i, node in enumerate(graph.nodes):
            if node.out.id in env:  # known already (computed once for a whole vmap)
                self.waiting.append(-1)
                self.remaining -= 1
                continue
            count = 0
            for a in node.inputs:
                if isinstance(a, Var) and a.id not in env:
                    self.users.setdefault(a.id, []).append(i)
                    count += 1
            if node.op == "call" and is_effectful(node):
                # an effect runs after everything before it, as in eager Python: in
                # order, and never when an earlier step failed (`_effect_blocked`)
                for j in range(i):
                    out = graph.nodes[j].out.id
                    if out not in env:
                        self.users.setdefault(out, []).append(i)
                        count += 1
            self.waiting.append(count)

    def start(self) -> None:
        ready = [i for i, c in enumerate(self.waiting) if c == 0]
        self._run(ready)
        if self.remaining == 0 and not self.done.done():
            self.done.set_result(None)

    def _run(self, ready: list[int]) -> None:
        nodes, env, tasks, create_task = self.graph.nodes, self.env, self.tasks, \
            self.loop.create_task
        while ready:
            i = ready.pop()
            node = nodes[i]
            values = [a.value if isinstance(a, Lit) else env[a.id] for a in node.inputs]
            failed = None
            for v in values:
                if isinstance(v, BaseException):
                    failed = v
                    break
            impl = OPS[node.op].impl
            if failed is not None:
                self._finish(node, failed, ready)
            elif impl is None:
                tasks[i] = create_task(self._call(i, node, values))
            else:
                memo = self.memo
                effect = memo is not None and node.op == "call" and is_effectful(node)
                if effect and self._effect_blocked(i):
                    self._finish(node, _EffectLeft(), ready)  # (the check run decides)
                    continue
                value = memo.ran_effect(node.param("fn"), values, self.run) if effect \
                    else MISSING  # type: ignore[union-attr]
                if value is MISSING:
                    before = _snapshot(values) if effect else values
                    try:
                        value = impl(node, *values)
                    except Exception as exc:
                        value = exc
                    if effect and inspect.iscoroutine(value):  # an async effect
                        value = _Once(value)
                    if effect:
                        memo.put_effect(node.param("fn"), before, value, self.run)  # type: ignore[union-attr]
                self._finish(node, value, ready)

    def _effect_blocked(self, i: int) -> bool:
        """Is effect ``i`` the check run's to run? The check run is eager Python, so it
        runs an effect in order, once, and only when the Python gets there; the graph
        runs one only when a later call needs its result. Not even then when a step
        before it failed (eager Python may never reach it, or reach it through an except
        clause) or when it takes a list or dict (the graph would hand it a copy, and
        changes it makes to the caller's own, an append to a history, would be lost), or
        a constant Python cannot hash (a dataclass: a replayed graph holds the one it
        was traced with, not the caller's equal one)."""
        env, nodes = self.env, self.graph.nodes
        out = nodes[i].out.id  # (a log line, a save: no later node takes its result)
        if not any(a.id == out for n in nodes[i + 1:] for a in n.inputs if a.__class__ is Var):
            return True
        if any(isinstance(env.get(n.out.id), BaseException) for n in nodes[:i]):
            return True
        if any(a.__class__ is Lit and not _hashable(a.value) for a in nodes[i].inputs):
            return True
        made = {a.id for a in nodes[i].inputs if isinstance(a, Var)}
        return any(n.op == "pack" and n.param("kind") != "tuple" and n.out.id in made
                   for n in nodes[:i])

    def _finish(self, node: Node, value: Any, ready: list[int]) -> None:
        self.env[node.out.id] = value
        self.remaining -= 1
        for j in self.users.get(node.out.id, ()):
            self.waiting[j] -= 1
            if self.waiting[j] == 0:
                ready.append(j)

    async def _call(self, i: int, node: Node, values: list[Any]) -> None:
        """Node ``i``'s model call, as a task; its dependents start the moment it ends
        (from this task, without a trip through the event loop's callback queue)."""
        value = await self._value(node, values)  # a cancellation propagates from here
        del self.tasks[i]
        ready: list[int] = []
        self._finish(node, value, ready)
        self._run(ready)
        if self.remaining == 0 and not self.done.done():
            self.done.set_result(None)

    async def _value(self, node: Node, values: list[Any]) -> Any:
        options: CallOptions = node.param("options") or _NO_OPTIONS
        priority = float(self.priority.get(node.out.id, 0.0))
        start = time.monotonic()
        try:
            if node.op == "llm":
                request = node_request(node, values[0], values[1])
                self.requests[node.out.id] = request
                responses = await send(request, options=options, priority=priority,
                                       location=node.loc)
                return responses[0] if request.n == 1 and node.out.type.name != "List" \
                    else responses
            requests = [node_request(node, values[k], values[k + 1], 1)
                        for k in range(0, len(values), 2)]
            self.requests[node.out.id] = requests
            return await self._batch(node, requests, options, priority)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return exc
        finally:  # (how long this call took, for the run report's critical path)
            record_node(node.out.id, time.monotonic() - start)

    async def _batch(self, node: Node, requests: list[Request], options: CallOptions,
                     priority: float) -> list[Any]:
        provider = providers.get(requests[0].provider)
        locs = list(node.meta.get("locs") or node.param("locs", ())) or [node.loc] * len(requests)
        if provider.supports_batch and len(requests) > 1:
            from .dispatch import send_as_batch

            return await send_as_batch(provider, requests, options=options, priority=priority,
                                       locations=locs)
        results = await send_batch(requests, options=options, priority=priority, locations=locs)
        return [r[0] if isinstance(r, list) else r for r in results]

    def commit(self, memo: Memo) -> None:
        """Store every model answer in the memo, in graph order."""
        for node in self.graph.nodes:
            req = self.requests.get(node.out.id)
            if req is None:
                continue
            value = self.env.get(node.out.id, MISSING)
            det = node.param("deterministic", False)
            if node.op == "llm":
                one = req if req.n == 1 else req.with_n(1)  # the memo keys by request.key
                if isinstance(value, BaseException) or value is MISSING:
                    if value is not MISSING:
                        for _ in range(req.n):
                            memo.put(one, value, det)
                    continue
                answers = value if isinstance(value, list) else [value]
                for answer in answers:
                    memo.put(one, answer, det)
            else:
                dets = node.param("deterministic", ())
                for k, r in enumerate(req):
                    item = value if isinstance(value, BaseException) else value[k]
                    memo.put(r, item, dets[k] if isinstance(dets, tuple) else bool(dets))


async def execute(graph: Graph, inputs: list[Any], memo: Memo | None = None,
                  known: dict[int, Any] | None = None) -> dict[int, Any]:
    """Run a graph; returns var id -> value (exceptions in place of failed values).
    Nodes whose outputs are ``known`` (var id -> value) are not run."""
    # a time limit starts when its region's first call starts; one jitted call's rounds
    # and graphs share their clocks (its memo keeps them): a graph break does not restart
    # them
    if memo is None:
        table = dict(deadlines_var.get() or {})
    else:
        if memo.deadlines is None:
            memo.deadlines = dict(deadlines_var.get() or {})
        table = memo.deadlines
    token = deadlines_var.set(table)
    try:
        return await _execute(graph, inputs, memo, known)
    finally:
        deadlines_var.reset(token)


async def _execute(graph: Graph, inputs: list[Any], memo: Memo | None,
                   known: dict[int, Any] | None) -> dict[int, Any]:
    env: dict[int, Any] = dict(known or {})
    for var, value in zip(graph.inputs, inputs, strict=True):
        env[var.id] = value
    run = _Run(graph, env, memo)
    run.start()
    try:
        await run.done
    except asyncio.CancelledError:
        tasks = list(run.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    if memo is not None:
        run.commit(memo)
    return env
