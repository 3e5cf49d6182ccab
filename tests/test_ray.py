"""The Ray backend: vmap elements on Ray actors, one limiter actor for the cluster.

A local Ray (2 CPUs) is started once for the module; the loopback servers run in
their own processes (the actors are other processes too). The worker and limiter
actors' bodies are also driven in-process, where coverage sees them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest

ray = pytest.importorskip("ray")

from faults import MODEL, OPENAI_KEY, Fault, fault_server, retry_gaps  # noqa: E402,F401
from servers import _hermetic  # noqa: E402

import ember  # noqa: E402
from ember import providers  # noqa: E402
from ember._runtime import run_sync  # noqa: E402
from ember.backends import ray as ember_ray  # noqa: E402
from ember.backends import ray_wire as ember_ray_wire  # noqa: E402
from ember.backends.limits import configure_limits, limiter  # noqa: E402
from ember.backends.policy import CallOptions, new_region  # noqa: E402
from ember.errors import ConfigurationError, MissingAPIKeyError, RateLimitError  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FORWARD = ["OPENAI_BASE_URL", "OPENAI_API_KEY", "NO_PROXY"]
_SERVE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from faults import FaultServer
with FaultServer(latency=float(sys.argv[2])) as s:
    if sys.argv[3] != "-":
        s.set_limit(int(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
    print(s.url, flush=True)
    sys.stdin.read()
    json.dump([{"raw": r.raw.decode("utf-8", "replace"), "arrived": r.arrived,
                "status": r.status, "response_headers": r.response_headers}
               for r in s.requests], sys.stdout)
"""


class Server:
    """A FaultServer with latency and an optional limit, in its own process;
    ``requests`` is filled by `stop`."""

    def __init__(self, latency: float = 0.0, limit: int | None = None, window: float = 1.0,
                 mode: str = "bucket") -> None:
        args = [str(latency)] + (["-", "0", "-"] if limit is None else
                                 [str(limit), str(window), mode])
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVE, HERE, *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.url = self.proc.stdout.readline().strip()
        self.requests: list = []

    def stop(self) -> None:
        if self.proc.returncode is None:
            out, _ = self.proc.communicate(timeout=30)
            self.requests = [SimpleNamespace(raw=r["raw"].encode(), **{
                k: r[k] for k in ("arrived", "status", "response_headers")})
                for r in json.loads(out)]


@pytest.fixture(scope="module")
def cluster():
    from ray import cloudpickle

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # actors cannot import us
    c = ember_ray.Cluster(actors=3, env=FORWARD).start()
    yield c
    c.close()
    ray.shutdown()


@pytest.fixture
def serve(monkeypatch, cluster):
    """``serve(latency, limit, window, mode)``: a server in its own process behind the
    'openai' provider, here and on the actors; fresh limits everywhere."""
    started: list[Server] = []
    _hermetic(monkeypatch)
    limiter.reset()
    cluster.reset_limits()

    def start(*args, **kw) -> Server:
        server = Server(*args, **kw)
        started.append(server)
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
        providers.reset()
        return server

    yield start
    for server in started:
        server.stop()
    providers.reset()
    limiter.reset()


def ask(x: str) -> str:
    return ember.models(MODEL, f"ask {x}").text


@ember.jit
def two_step(x: str):
    if x == "bad":
        raise ValueError("bad input")
    a = ember.models(MODEL, f"first {x}")
    b = ember.models(MODEL, f"then {a.text}")
    return b.text


async def ask_async(x: str) -> tuple[str, int]:
    return (await ember.amodels(MODEL, f"async {x}")).text, os.getpid()


# ---- on the cluster -----------------------------------------------------------------------
def test_results_equal_the_local_backend(cluster, serve, tmp_path):
    serve(0.02)
    xs = [f"d{i}" for i in range(24)] + ["bad"]
    local = ember.vmap(two_step, return_exceptions=True)
    remote = ember.vmap(two_step, return_exceptions=True, backend=cluster)
    want = local(xs)
    with ember.record() as outer:
        got = remote(xs)
    assert got[:-1] == want[:-1] == [f"echo: then echo: first d{i}" for i in range(24)]
    assert type(got[-1]) is ValueError and str(got[-1]) == "bad input"
    report = remote.last_run
    assert report.requests == local.last_run.requests == 48
    assert len(outer.report().calls) == 48
    t0 = time.monotonic()
    assert all(t0 - 60 < c.start <= c.end <= t0 for c in report.calls)  # driver's clock
    assert json.load(open(report.timeline(str(tmp_path / "t.json"))))["traceEvents"]
    with pytest.raises(ember.BatchError) as info:
        ember.vmap(two_step, backend=cluster)(["ok", "bad"])
    assert list(info.value.errors) == [1]


def test_use_block_runs_vmaps_and_admits_driver_calls_on_the_cluster(cluster, serve):
    serve()
    with ember_ray.use(cluster) as active:
        assert active is cluster and ember_ray.resolve("ray") is cluster
        assert isinstance(limiter.delegate, ember_ray.RemoteAdmission)
        out = run_sync(_gather(ember.vmap(ask_async)(["a", "b", "c"])))
        assert ember.models(MODEL, "driver").text == "echo: driver"  # admitted remotely
        local = ember.vmap(ask, backend="local")(["x"])
    assert limiter.delegate is None
    # after the block, the provider's headers go to the local limiter again (the
    # block's hook sent them to its dead cluster limiter, which started a new Ray)
    ember.models(MODEL, "after the block")
    providers.get("openai").on_headers({"x-ratelimit-limit-requests": "77"})
    assert limiter.limits("openai").rpm == 77
    assert [text for text, _ in out] == ["echo: async a", "echo: async b", "echo: async c"]
    assert all(pid != os.getpid() for _, pid in out)
    assert local == ["echo: ask x"]
    assert "OPENAI_API_KEY" in repr(cluster) and OPENAI_KEY not in repr(cluster)


async def _gather(coro):
    return await coro


def test_cluster_wide_limit_no_429_storm(cluster, serve):
    """90 calls from 3 actors against "60 per minute", scaled to 60 per 1.5 s like
    test_limits.run_90: the one limiter actor paces them all."""
    server = serve(0.0, 60, 1.5, "bucket")
    configure_limits("openai", rpm=60, window=1.5)  # sent to the limiter actor
    safe = ember.retry(ask, max_attempts=5, initial_delay=0.05)
    start = time.monotonic()
    out = ember.vmap(safe, backend=cluster)([f"n{i}" for i in range(90)])
    took = time.monotonic() - start
    server.stop()
    assert out == [f"echo: ask n{i}" for i in range(90)]
    assert cluster.limits("openai").rpm == 60
    codes = [r.status for r in server.requests]
    # Scaled 40x, some of the first burst is refused (10-17 of 90 on 2 shared cores,
    # all in the first half second; locally <= 9): each once, then paced. No storm.
    assert codes.count(200) == 90 and codes.count(429) <= 18, codes.count(429)
    assert all(gap >= asked for asked, gap in retry_gaps(server))  # never early
    refused: dict[bytes, int] = {}
    for rec in server.requests:
        if rec.status == 429:
            refused[rec.raw] = refused.get(rec.raw, 0) + 1
    assert all(n == 1 for n in refused.values()), refused
    assert 1.5 * 30 / 60 - 0.1 <= took < 6.0


def test_killing_an_actor_loses_no_element(cluster, serve):
    server = serve(0.2)
    before, n = cluster.restarts, 60
    victim = cluster.workers[0]
    killed: list[int] = []

    def kill() -> None:
        killed.append(victim.load)
        ray.kill(victim.handle)

    timer = threading.Timer(0.6, kill)
    timer.start()
    out = ember.vmap(ask, batch_size=12, backend=cluster)([f"k{i}" for i in range(n)])
    timer.join()
    server.stop()
    assert out == [f"echo: ask k{i}" for i in range(n)]
    assert cluster.restarts == before + 1 and not victim.alive
    assert len(cluster.workers) == 3
    sent: dict[str, int] = {}
    for rec in server.requests:
        try:  # a request cut off by the kill may have arrived partly
            prompt = json.loads(rec.raw)["messages"][-1]["content"]
        except ValueError:
            continue
        sent[prompt] = sent.get(prompt, 0) + 1
    assert len(sent) == n
    repeats = sum(k - 1 for k in sent.values())
    assert repeats <= killed[0]  # only what the dead actor was running is sent again


# ---- the actors' bodies, in-process ----------------------------------------------------------
class _Ref:
    """Like an ObjectRef: awaitable many times; cancelling a waiter leaves it running."""

    def __init__(self, coro) -> None:
        self.task = asyncio.ensure_future(coro)

    def __await__(self):
        return asyncio.shield(self.task).__await__()


class _Method:
    def __init__(self, fn) -> None:
        self.fn = fn

    def remote(self, *args):
        return _Ref(self.fn(*args))


class _Handle:
    """An in-process stand-in for an actor handle: ``h.method.remote(...)``."""

    def __init__(self, obj) -> None:
        self.obj = obj

    def __getattr__(self, name):
        return _Method(getattr(self.obj, name))


def test_worker_and_limiter_bodies_in_process(fault_server):
    core = ember_ray.LimiterCore()
    worker = ember_ray.WorkerCore(_Handle(core), "w1")
    try:
        settings = {"env": {}, "providers": {}, "limits": {"openai": {"concurrency": 2}}}

        async def main():
            await core.configure(settings)
            assert await worker.configure(settings) == "w1"
            payload = (two_step.fn, False, {}, None)
            return await asyncio.gather(worker.run("m", [payload], ("x",)),
                                        worker.run("m", [payload], ("bad",)))

        async def more():  # an async function, its payload still an awaitable ref
            async def wrapped():
                return (ask_async, False, {}, None)

            for k in range(9):  # only the latest 8 maps' functions are kept
                ok, (text, _), _ = await worker.run(f"a{k}", [_Ref(wrapped())], (str(k),))
                assert ok and text == f"echo: async {k}"
            assert len(worker.maps) == 8

        fault_server.headers = {"x-ratelimit-limit-requests": "600"}
        run_sync(more())
        (ok, value, calls), (bad, err, _) = run_sync(main())

        async def scoped():  # the caller's timeout scope, its clock in wall time
            region = new_region()
            late = (CallOptions(timeouts=((region, 60.0),)), {region: time.time() - 1})
            return await worker.run("s", [(two_step.fn, False, {}, late)], ("y",))

        late_ok, late_err, _ = run_sync(scoped())
        assert not late_ok and isinstance(ember_ray_wire.unpack_error(late_err), TimeoutError)
        assert ok and value == "echo: then echo: first x" and len(calls) == 2
        assert calls[0].start > 1e9  # wall-clock time, for the driver to shift back
        assert not bad and type(ember_ray_wire.unpack_error(err)) is ValueError
        assert run_sync(core.limits("openai")).rpm == 600  # learned from the headers
        assert run_sync(core.limits("openai")).concurrency == 2
        assert not core.tickets
    finally:
        limiter.reset()


def test_limiter_core_learns_429s_and_frees_dead_actors_slots(fault_server):
    core = ember_ray.LimiterCore()
    admit = limiter.delegate = ember_ray.RemoteAdmission(_Handle(core), "w2")
    provider = providers.get("openai")
    configure_limits("openai", concurrency=1)

    async def main():
        await core.configure({"env": {}, "providers": {}, "limits": {"openai": {"concurrency": 1}}})
        first = await admit.acquire(provider, 10)
        waiting = asyncio.ensure_future(admit.acquire(provider, 10))
        await asyncio.sleep(0.02)
        assert not waiting.done()  # one at a time, cluster-wide
        waiting.cancel()  # cancelled while queued: the slot comes back when granted
        admit.release(first, 12, RateLimitError("slow down", status=429, retry_after=0.3,
                                                headers={"x-ratelimit-limit-requests": "90"}))
        await asyncio.sleep(0.05)
        st = core.limiter._states["openai"]
        assert st.paused_until > time.monotonic() + 0.1  # paused until Retry-After
        assert core.limiter.limits("openai").rpm == 90
        held = await core.acquire("dead", "openai", 1, 0.0)
        assert await core.forget("dead") == 1 and held[0] not in core.tickets
        provider.on_headers({"x-ratelimit-limit-requests": "120"})
        await asyncio.sleep(0.01)
        assert core.limiter.limits("openai").rpm == 120
        await core.report({}, [(12345, None, ("ServerError", 500, None, {}))])  # unknown
        await core.reset()
        return st

    try:
        run_sync(main())
        assert not core.tickets
    finally:
        limiter.reset()


def test_errors_travel_and_settings_are_sent(monkeypatch, cluster):
    err = ember_ray_wire.unpack_error(ember_ray_wire.portable_error(MissingAPIKeyError("openai", "K")))
    assert type(err) is MissingAPIKeyError and "K" in str(err)

    class Odd(Exception):
        def __init__(self) -> None:
            super().__init__("odd")
            self.lock = threading.Lock()  # not picklable

    fallback = ember_ray_wire.unpack_error(ember_ray_wire.portable_error(Odd()))
    assert type(fallback) is ember.EmberError and "Odd: odd" in str(fallback)
    assert ember_ray_wire.failure(None) is None and ember_ray_wire.as_error(None) is None
    assert type(ember_ray_wire.as_error(("KeyError", None, None, {}))).__name__ == "ProviderError"

    monkeypatch.setenv("EMBER_RAY_TEST", "1")
    c = ember_ray.Cluster(env={"A": "b"})
    assert c._settings()["env"] == {"A": "b"}
    assert ember_ray.Cluster()._settings()["env"] == {}
    assert ember_ray.Cluster(env=["EMBER_RAY_TEST", "NOPE"])._settings()["env"] == \
        {"EMBER_RAY_TEST": "1"}

    async def echo(request):
        return "hi"

    lock = threading.Lock()

    async def unpicklable(request):
        return str(lock)

    monkeypatch.setattr(providers, "_custom", {})
    providers.register("mine", echo)
    providers.register("locked", unpicklable)
    sent = ember_ray.Cluster()._settings()["providers"]
    assert list(sent) == ["mine"]
    ember_ray_wire.apply_settings({"env": {}, "providers": {"other": sent["mine"]}, "limits": {}})
    assert providers._custom["other"] is sent["mine"]


def test_context_variables_travel_by_name():
    import pickle
    from contextvars import ContextVar

    from ember.backends.policy import options_var

    assert pickle.loads(pickle.dumps(options_var)) is options_var
    with pytest.raises(TypeError, match="mine"):
        pickle.dumps(ContextVar("mine"))


def test_a_use_block_can_own_its_cluster(cluster):
    with ember_ray.use(actors=1) as own:
        assert own is not cluster and len(own.workers) == 1
    assert own.workers == [] and ray.is_initialized()  # Ray was not its to stop


def test_selection_and_configuration_errors(monkeypatch):
    with pytest.raises(ValueError, match="backend"):
        ember.vmap(ask, backend="spark")
    with pytest.raises(ValueError, match="Unknown backend"):
        ember_ray.resolve("spark")
    with pytest.raises(ValueError, match="actors"):
        ember_ray.Cluster(actors=0)
    monkeypatch.setattr(ember_ray, "_default", None)
    default = ember_ray.resolve("ray")
    assert isinstance(default, ember_ray.Cluster) and ember_ray.resolve("ray") is default
    ember_ray.Cluster().close()  # never started: nothing to do
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(ConfigurationError, match=r'pip install -e "\.\[ray\]"'):
        ember_ray.Cluster().start()


def test_import_ember_does_not_import_ray():
    code = "import sys, ember, ember.backends.ray; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def pages(x: str) -> str:
    if x == "end":
        raise StopIteration("no more pages")
    if x == "exit":
        raise SystemExit(3)
    return ask(x)


def test_a_ray_map_reports_to_its_caller_and_keeps_exception_types(cluster, serve):
    """last_run showed an earlier local map's report; StopIteration and sys.exit() came
    back as Ember's internal wrapper."""
    serve()
    mapped = ember.vmap(pages, backend=cluster, return_exceptions=True)
    ember.vmap(pages, backend="local")(["a"])
    out = mapped(["a", "b", "end"])
    assert out[:2] == ["echo: ask a", "echo: ask b"] and type(out[2]) is StopIteration
    assert mapped.last_run.requests == 2
    with pytest.raises(SystemExit):
        mapped(["a", "exit"])


def test_a_use_block_sends_the_caps_before_the_drivers_own_calls(cluster, serve):
    """The cluster's limiter admits the driver's calls in a block, but got the caps set
    with configure_limits only when a map ran: the driver's first calls went uncapped."""
    serve()
    ember.configure_limits("openai", concurrency=1)
    try:
        with ember_ray.use(cluster):
            assert cluster.limits("openai").concurrency == 1
    finally:
        ember.configure_limits("openai", concurrency=64)


def test_a_timeout_around_a_ray_map_binds_the_actors_calls(cluster, serve):
    """The caller's retry and timeout scope stayed on the driver: a 0.5 s timeout around
    a Ray map of 2 s calls waited for every answer (the local backend raises)."""
    serve(latency=2.0)

    def ask_all(xs):
        return ember.vmap(ask, backend=cluster, return_exceptions=True)(xs)

    out = ember.timeout(ask_all, 0.5)(["a", "b"])
    assert [type(x) for x in out] == [ember.TimeoutError] * 2
