"""The Ray backend: vmap elements run on Ray actors; one limiter actor admits every
request of the cluster, because a provider's rate limit is per key, not per machine.

    import ember
    from ember.backends import ray as ember_ray

    with ember_ray.use(actors=8):                  # ray.init() here, or address="auto"
        answers = ember.vmap(summarize)(documents)  # every vmap in the block runs on Ray
    ember.vmap(summarize, backend="ray")(documents) # the same, on a default cluster

Each element is sent to the least-loaded actor (async; it runs the element exactly as
the local backend would, with its own pooled provider clients) and its result and
call records come back as soon as it finishes, so results return in input order and
an actor that dies loses only the elements it was running: they are sent to another
actor, which replaces the dead one. ``batch_size`` bounds the elements in flight
across the cluster. Admission (concurrency gate, request and token buckets, learned
header limits, 429 pauses) is the local `Limiter`, run once in a named actor; the
actors ask it before each request and report each response to it. See docs/ray.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

from .. import errors, providers
from .._drivers import Raised, drive_async, drive_on_loop
from .._jit import Jitted
from .._report import RunReport
from .._runtime import run_async, run_sync
from . import limits
from .limits import Limiter, Ticket, limiter
from .ray_wire import (apply_settings, as_error, clock_offset, failure, portable_error,
                       shifted, unpack_error)
from .policy import CallOptions, current_options, deadlines_var, options_var
from .record import Recorder, recorder_var

__all__ = ["Cluster", "use", "resolve", "RemoteAdmission"]

log = logging.getLogger("ember")
LIMITER_NAME, NAMESPACE = "ember-limiter", "ember"
MAX_ATTEMPTS = 3  # actors an element may lose before it fails
MAX_CONCURRENCY = 10_000  # elements / admissions an actor may hold at once
INSTALL_HINT = ('The Ray backend needs Ray: pip install -e ".[ray]" in your Ember checkout '
                '(or pip install "ray>=2.9").')


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise errors.ConfigurationError(INSTALL_HINT) from None
    return ray


# ---- admission through the limiter actor ------------------------------------------------
class RemoteAdmission:
    """Installed as ``limiter.delegate`` in a process whose requests the cluster's
    limiter actor admits: acquire asks it; releases and response headers are reported
    to it, those of one event-loop turn in one message."""

    def __init__(self, handle: Any, owner: str) -> None:
        self.handle, self.owner = handle, owner
        self.releases: list[tuple] = []
        self.headers: dict[str, dict[str, str]] = {}  # provider -> latest headers
        self.flushing = False

    async def acquire(self, provider: Any, tokens: float, priority: float = 0.0) -> Ticket:
        if getattr(provider, "on_headers", None) is None:  # (through the limiter: to
            # whoever admits requests then; this delegate's hook outlived its block)
            provider.on_headers = lambda headers, p=provider: limiter.observe(p, headers)
        ref = self.handle.acquire.remote(self.owner, provider.name, tokens, priority)
        try:
            tid, waited = await ref
        except asyncio.CancelledError:  # admitted later all the same: give the slot back
            asyncio.ensure_future(self._release_late(ref))
            raise
        return Ticket(tid, tokens, time.monotonic(), waited)

    async def _release_late(self, ref: Any) -> None:
        with contextlib.suppress(Exception):
            tid, _ = await ref
            self.release(Ticket(tid, 0, 0.0, 0.0))

    def release(self, ticket: Ticket, tokens_used: float | None = None,
                error: BaseException | None = None) -> None:
        self.releases.append((ticket.state, tokens_used, failure(error)))
        self._flush_soon()

    def observe(self, provider: Any, headers: dict[str, str]) -> None:
        self.headers[provider.name] = dict(headers)
        self._flush_soon()

    def _flush_soon(self) -> None:
        if not self.flushing:
            self.flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self.flushing = False
        releases, self.releases = self.releases, []
        headers, self.headers = self.headers, {}
        self.handle.report.remote(headers, releases)


class _Named:
    """A provider as the limiter actor sees it: only its name matters there."""

    on_headers = None

    def __init__(self, name: str) -> None:
        self.name = name


class LimiterCore:
    """The limiter actor's body: one `Limiter` for the cluster; tickets by id."""

    def __init__(self) -> None:
        self.limiter = Limiter()
        self.tickets: dict[int, tuple[str, Ticket]] = {}
        self.seq = itertools.count(1)
        self.named: dict[str, _Named] = {}

    def _provider(self, name: str) -> _Named:
        p = self.named.get(name)
        if p is None:
            p = self.named[name] = _Named(name)
        return p

    async def configure(self, settings: dict) -> None:
        apply_settings(settings)
        for name in list(self.limiter._states):
            self.limiter._reconfigure(name)

    async def acquire(self, owner: str, name: str, tokens: float, priority: float
                      ) -> tuple[int, float]:
        ticket = await self.limiter.acquire(self._provider(name), tokens, priority)
        tid = next(self.seq)
        self.tickets[tid] = (owner, ticket)
        return tid, ticket.waited

    async def report(self, headers: dict[str, dict[str, str]], releases: list[tuple]) -> None:
        """Responses' rate-limit headers (per provider), then finished requests."""
        for name, h in headers.items():
            self.limiter.observe(self._provider(name), h)
        for tid, tokens_used, failed in releases:
            item = self.tickets.pop(tid, None)
            if item is not None:
                self.limiter.release(item[1], tokens_used, as_error(failed))

    async def forget(self, owner: str) -> int:
        """Free the slots of a dead actor's requests; returns how many."""
        mine = [tid for tid, (o, _) in self.tickets.items() if o == owner]
        for tid in mine:
            self.limiter.release(self.tickets.pop(tid)[1], None)
        return len(mine)

    async def limits(self, name: str) -> limits.Limits:
        return self.limiter.limits(name)

    async def reset(self) -> None:
        self.limiter.reset()
        self.tickets.clear()


# ---- the worker actor --------------------------------------------------------------------
async def run_element(jitted: Jitted, args: tuple, kwargs: dict,
                      scope: tuple[CallOptions, dict] | None = None) -> tuple[bool, Any, list]:
    """One element, as the local vmap runs it: (ok, result or packed error, records in
    wall-clock time). ``scope``: the driver's retry and timeout scope, its deadlines in
    wall-clock time (a `retry` or `timeout` around the map binds its calls here too)."""
    rec = Recorder()
    token = recorder_var.set([rec])
    options, deadlines = scope or (None, {})
    otoken = options_var.set(options) if options is not None else None
    offset = clock_offset()
    dtoken = deadlines_var.set({k: t - offset for k, t in deadlines.items()}) \
        if deadlines else None
    try:
        if jitted.is_async:
            value: Any = await drive_async(jitted._program(args, kwargs))
        else:
            value = await run_async(drive_on_loop(jitted._program(args, kwargs)))
        ok = True
    except Raised as carried:  # (StopIteration, sys.exit(): their own type, as locally)
        ok, value = False, portable_error(carried.exc)
    except Exception as exc:
        ok, value = False, portable_error(exc)
    finally:
        if dtoken is not None:
            deadlines_var.reset(dtoken)
        if otoken is not None:
            options_var.reset(otoken)
        recorder_var.reset(token)
    return ok, value, shifted(rec.calls, offset)


class WorkerCore:
    """A Ray actor's body: runs elements; its requests are admitted by the limiter actor."""

    def __init__(self, limiter_handle: Any, name: str) -> None:
        self.name = name
        self.maps: dict[str, asyncio.Future] = {}  # map id -> (Jitted, kwargs)
        limiter.delegate = RemoteAdmission(limiter_handle, name)

    async def configure(self, settings: dict) -> str:
        apply_settings(settings)
        return self.name

    async def run(self, map_id: str, box: list, args: tuple) -> tuple[bool, Any, list]:
        entry = self.maps.get(map_id)
        if entry is None:
            while len(self.maps) >= 8:  # keep the latest maps' functions only
                self.maps.pop(next(iter(self.maps)))
            entry = self.maps[map_id] = asyncio.ensure_future(self._load(box))
        jitted, kwargs, scope = await entry
        return await run_element(jitted, args, kwargs, scope)

    @staticmethod
    async def _load(box: list) -> tuple[Jitted, dict, tuple]:
        payload = box[0]  # an ObjectRef inside a list: Ray hands it over unresolved
        if inspect.isawaitable(payload):
            payload = await payload
        fn, fullgraph, kwargs, scope = payload
        return Jitted(fn, fullgraph=fullgraph), kwargs, scope


_classes: tuple[Any, Any] | None = None


def _actor_classes() -> tuple[Any, Any]:
    global _classes
    if _classes is None:
        ray = _ray()
        opts = dict(num_cpus=0, max_concurrency=MAX_CONCURRENCY)
        _classes = ray.remote(**opts)(WorkerCore), ray.remote(**opts)(LimiterCore)
    return _classes


# ---- the driver ------------------------------------------------------------------------
@dataclass(eq=False)
class _Slot:
    handle: Any
    name: str
    load: int = 0
    ready: bool = False
    alive: bool = True


class Cluster:
    """Ray actors that run vmap elements, and the cluster's limiter actor.

    ``address``: None starts a local Ray (or joins the one this process already
    initialized); ``"auto"`` or ``"ray://host:10001"`` joins a cluster. ``actors``:
    how many worker actors (default: the cluster's CPUs; they reserve none). ``env``:
    environment for the actors, re-sent with every map — a mapping of values, or
    names of this process's variables to forward (e.g. a provider's base URL or key;
    by default none is sent: nodes use their own environment). ``init`` kwargs go to
    ``ray.init``. Starts on first use; `close` kills the actors (and the local Ray it
    started).
    """

    def __init__(self, address: str | None = None, *, actors: int | None = None,
                 env: Mapping[str, str] | Sequence[str] | None = None, **init: Any) -> None:
        if actors is not None and (not isinstance(actors, int) or actors < 1):
            raise ValueError(f"actors must be a positive integer, got {actors!r}")
        self.address, self.actors, self.env, self.init = address, actors, env, init
        self.workers: list[_Slot] = []
        self.limiter: Any = None
        self.restarts = 0  # actors replaced after one died
        self._owns_ray = False
        self._names = itertools.count(1)

    def __repr__(self) -> str:
        names = sorted(self.env) if self.env is not None else []
        live = sum(s.alive for s in self.workers)
        return (f"<ember Ray cluster address={self.address!r} actors={live}"
                f"{'' if self.actors is None else '/' + str(self.actors)} "
                f"env={names}>")  # names only: values may be secrets

    # -- lifecycle
    def start(self) -> Cluster:
        if self.limiter is not None:
            return self
        ray = _ray()
        if not ray.is_initialized():
            ray.init(address=self.address, **self.init)
            self._owns_ray = True
        worker_cls, limiter_cls = _actor_classes()
        self.limiter = limiter_cls.options(name=LIMITER_NAME, namespace=NAMESPACE,
                                           get_if_exists=True).remote()
        n = self.actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.actors = n
        self.workers = [self._spawn(worker_cls) for _ in range(n)]
        return self

    def _spawn(self, worker_cls: Any = None) -> _Slot:
        name = f"ember-worker-{uuid.uuid4().hex[:8]}-{next(self._names)}"
        cls = worker_cls or _actor_classes()[0]
        return _Slot(cls.remote(self.limiter, name), name)

    def close(self) -> None:
        if self.limiter is None:
            return
        ray = _ray()
        if ray.is_initialized():
            for slot in self.workers:
                with contextlib.suppress(Exception):
                    ray.kill(slot.handle)
            if self._owns_ray:
                ray.shutdown()
        self.workers, self.limiter, self._owns_ray = [], None, False

    def reset_limits(self) -> None:
        """Forget the limiter actor's admission state and learned limits (tests)."""
        _ray().get(self.start().limiter.reset.remote())

    def limits(self, provider: str) -> limits.Limits:
        """The limits the cluster's limiter applies to ``provider`` now."""
        return _ray().get(self.start().limiter.limits.remote(provider))

    # -- settings sent to every actor
    def _settings(self) -> dict:
        if self.env is None:
            env: dict[str, str] = {}
        elif isinstance(self.env, Mapping):
            env = dict(self.env)
        else:
            env = {k: os.environ[k] for k in self.env if k in os.environ}
        from ray import cloudpickle

        custom = {}
        for name, provider in providers._custom.items():
            try:
                cloudpickle.dumps(provider)
                custom[name] = provider
            except Exception:
                log.warning("custom provider %r cannot be sent to Ray actors (not "
                            "picklable); register it in the actors' code instead", name)
        caps = {name: dict(conf) for name, conf in limits._user.items()}
        return {"env": env, "providers": custom, "limits": caps}

    async def _configure(self, settings: dict) -> None:
        alive = [s for s in self.workers if s.alive]
        done = await asyncio.gather(self.limiter.configure.remote(settings),
                                    *(s.handle.configure.remote(settings) for s in alive),
                                    return_exceptions=True)
        if isinstance(done[0], BaseException):
            raise done[0]
        for slot, out in zip(alive, done[1:], strict=True):
            if isinstance(out, BaseException):
                self._lost(slot, settings)
            else:
                slot.ready = True

    async def _join(self, slot: _Slot, settings: dict) -> None:
        with contextlib.suppress(Exception):  # a failure shows on its first element
            await slot.handle.configure.remote(settings)
            slot.ready = True

    def _pick(self, settings: dict) -> _Slot:
        alive = [s for s in self.workers if s.alive]
        if not alive:  # pragma: no cover - replacements are spawned as actors die
            alive = [self._replace(settings)]
        return min(alive, key=lambda s: (not s.ready, s.load))

    def _replace(self, settings: dict) -> _Slot:
        slot = self._spawn()
        self.workers.append(slot)
        self.restarts += 1
        asyncio.ensure_future(self._join(slot, settings))
        return slot

    def _lost(self, slot: _Slot, settings: dict) -> None:
        if not slot.alive:
            return
        slot.alive = False
        log.warning("Ray actor %s died; its unfinished elements go to other actors",
                    slot.name)
        ray = _ray()
        with contextlib.suppress(Exception):
            ray.kill(slot.handle, no_restart=True)
        self.limiter.forget.remote(slot.name)
        self.workers = [s for s in self.workers if s.alive]
        self._replace(settings)

    # -- running a vmap
    def map(self, mapped: Any, elements: list[tuple], kwargs: dict) -> list[Any]:
        self.start()
        report: list[RunReport] = []  # (made on Ember's loop; set here, for this caller)
        try:
            results, errs = run_sync(self._map(mapped, elements, kwargs, report))
        finally:
            if report:
                mapped.last_run = report[0]
        return mapped._finish(results, _fatal(errs))

    async def amap(self, mapped: Any, elements: list[tuple], kwargs: dict) -> list[Any]:
        self.start()
        report: list[RunReport] = []
        try:
            results, errs = await run_async(self._map(mapped, elements, kwargs, report))
        finally:
            if report:
                mapped.last_run = report[0]
        return mapped._finish(results, _fatal(errs))

    async def _element(self, map_id: str, box: list, args: tuple, settings: dict
                       ) -> tuple[bool, Any, list]:
        ray = _ray()
        lost = (ray.exceptions.RayActorError,
                getattr(ray.exceptions, "ActorUnavailableError", ray.exceptions.RayActorError))
        error: BaseException | None = None
        for _ in range(MAX_ATTEMPTS):
            slot = self._pick(settings)
            slot.load += 1
            try:
                ok, value, calls = await slot.handle.run.remote(map_id, box, args)
            except lost as exc:
                error = exc
                self._lost(slot, settings)
                continue
            except Exception as exc:  # the actor could not send its result back
                return False, exc, []
            finally:
                slot.load -= 1
            return ok, value if ok else unpack_error(value), calls
        return False, error, []

    async def _map(self, mapped: Any, elements: list[tuple], kwargs: dict,
                   report: list[RunReport]) -> tuple[list[Any], dict[int, BaseException]]:
        from .._vmap import _Progress

        ray = _ray()
        settings = self._settings()
        await self._configure(settings)
        jitted = mapped.jitted
        offset = clock_offset()  # (the caller's retry and timeout scope, for the actors)
        scope = (current_options(), {k: t + offset for k, t in (deadlines_var.get() or {}).items()})
        box = [ray.put((jitted.fn, jitted.fullgraph, kwargs, scope))]
        map_id = uuid.uuid4().hex
        n = len(elements)
        gate = asyncio.Semaphore(mapped.batch_size or max(n, 1))
        results: list[Any] = [None] * n
        errs: dict[int, BaseException] = {}
        rec = Recorder()
        sinks = [*recorder_var.get(), rec]
        back = -clock_offset()
        bar = _Progress(n, mapped.progress, rec)
        counts = {"done": 0, "active": 0}

        async def one(i: int) -> None:
            async with gate:
                counts["active"] += 1
                ok, value, calls = await self._element(map_id, box, elements[i], settings)
                counts["active"] -= 1
            calls = shifted(calls, back)
            for sink in sinks:
                sink.calls.extend(calls)
            results[i] = value
            if not ok:
                errs[i] = value
            counts["done"] += 1
            bar.update(counts["done"] - len(errs), len(errs), counts["active"])

        start = time.perf_counter()
        try:
            await asyncio.gather(*(one(i) for i in range(n)))
        finally:
            report.append(RunReport(rec.calls, time.perf_counter() - start,
                                    label=f"vmap({mapped.name})"))
        bar.update(n - len(errs), len(errs), 0, final=True)
        return results, errs


def _fatal(errs: dict[int, BaseException]) -> dict[int, BaseException]:
    """An element's sys.exit() or Ctrl-C is the map's, as locally: raised."""
    for exc in errs.values():
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            raise exc
    return errs


# ---- selecting the backend ----------------------------------------------------------------
_default: Cluster | None = None


def resolve(backend: Any) -> Cluster:
    """The cluster a vmap's ``backend=`` names: "ray" (the active `use` block's, else a
    default one started on first use) or a `Cluster`."""
    global _default
    if isinstance(backend, Cluster):
        return backend
    if backend == "ray":
        from .._vmap import backend_var

        active = backend_var.get()
        if isinstance(active, Cluster):
            return active
        if _default is None:
            _default = Cluster()
        return _default
    raise ValueError(f"Unknown backend {backend!r}; use 'local', 'ray' or a "
                     "ember.backends.ray.Cluster.")


@contextlib.contextmanager
def use(cluster: Cluster | None = None, /, *, address: str | None = None,
        actors: int | None = None, env: Mapping[str, str] | Sequence[str] | None = None,
        **init: Any) -> Iterator[Cluster]:
    """Run every vmap in the block on Ray, and admit every request this process makes
    through the cluster's limiter. Starts ``cluster`` (or a new one from the
    arguments, closed at the end of the block)."""
    from .._vmap import backend_var

    owned = cluster is None
    cluster = (Cluster(address, actors=actors, env=env, **init) if owned else cluster).start()
    token = backend_var.set(cluster)
    saved = limiter.delegate
    # the cluster's limiter admits this process's own calls too: with its caps (a map
    # sends them; a block whose first calls were the driver's ran them uncapped)
    run_sync(cluster._configure(cluster._settings()))
    limiter.delegate = RemoteAdmission(cluster.limiter, "driver")
    try:
        yield cluster
    finally:
        limiter.delegate = saved
        backend_var.reset(token)
        if owned:
            cluster.close()
