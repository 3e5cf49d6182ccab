"""`cache`: a persistent, private, JSON-only result store that survives restarts and
concurrent writers, and works eagerly, under jit and under vmap."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import pydantic
import pytest
from servers import OPENAI_KEY

import ember
from ember._cache import cache, cache_dir, identity
from ember.providers import sim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def rows(folder) -> int:
    with sqlite3.connect(str(folder / "cache.sqlite3")) as conn:
        return conn.execute("SELECT count(*) FROM results").fetchone()[0]


def analyze(text):
    return ember.models("sim", f"Analyze: {text}")


# ---- eager ------------------------------------------------------------------------------
def test_hit_and_miss(cache_home):
    cached = cache(analyze)
    first = cached("a")
    again = cached("a")
    assert sim.stats().requests == 1
    assert again == first and again.usage == first.usage and again.cost == first.cost
    assert again.latency == 0.0
    cached("b")
    cached(text="a")  # keyword arguments are a different key
    assert sim.stats().requests == 3
    assert cache_dir() == str(cache_home)


def test_decorator_forms_and_ttl():
    calls = []

    @cache(ttl=0.2)
    def f(x):
        calls.append(x)
        return {"x": x, "pair": (1, 2), 3: [None, 1.5, True]}

    assert f("a") == f("a") == {"x": "a", "pair": (1, 2), 3: [None, 1.5, True]}
    assert calls == ["a"]
    time.sleep(0.25)
    f("a")
    assert calls == ["a", "a"]


def test_expired_rows_are_deleted_and_the_log_is_bounded(cache_home, monkeypatch):
    """With a ttl, rows past it were never read again nor deleted (five rounds of 5,000
    new questions: 25,000 rows on disk, none valid); and the write-ahead log of several
    writer processes grew without bound (265 MB beside a 19 MB file)."""
    from ember import _cache

    monkeypatch.setattr(_cache, "SWEEP_EVERY", 10)
    f = cache(lambda x: x * 2, ttl=0.2)
    for i in range(15):
        f(f"a{i}")
    assert rows(cache_home) == 15
    time.sleep(0.25)
    for i in range(10):  # the next sweep comes with these stores
        f(f"b{i}")
    assert rows(cache_home) == 10  # the first 15 expired and went
    g = cache(lambda x: x * 3)  # no ttl: nothing is ever swept
    g("kept")

    def summarize(x):  # (one function, two wrappers: their rows are shared)
        return ember.models("sim", f"Summarize: {x}").text

    forever, brief = cache(summarize), cache(summarize, ttl=0.05)
    forever("doc")
    time.sleep(0.1)
    for i in range(10):
        brief(f"other {i}")  # a sweep of brief's expired rows, not of forever's
    sim.reset_stats()
    forever("doc")
    assert sim.stats().requests == 0
    with sqlite3.connect(str(cache_home / "cache.sqlite3")) as conn:
        assert conn.execute("PRAGMA journal_size_limit").fetchone()[0] == -1  # (per connection)
    conn = _cache._store(None)._conn()
    assert conn.execute("PRAGMA journal_size_limit").fetchone()[0] == _cache.JOURNAL_LIMIT


def test_a_number_where_the_function_goes_names_ttl():
    with pytest.raises(TypeError, match=r"cache\(fn, ttl=60\)"):
        cache(60)


def test_argument_types_are_distinguished():
    seen = []
    f = cache(lambda x: seen.append(x) or len(seen))
    for value in (1, 1.0, True, "1", [1], (1,), {"a": 1}, None):
        f(value)
    assert len(seen) == 8
    f([1])
    assert len(seen) == 8


def test_unsupported_types_run_uncached_with_one_warning():
    class Thing:
        pass

    calls = []
    f = cache(lambda x: calls.append(x) or Thing())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        f(1)
        f(1)
    assert len(calls) == 2
    assert len([w for w in caught if "cannot hash or store" in str(w.message)]) == 1
    g = cache(lambda x: 1)
    with pytest.warns(UserWarning, match="argument of type Thing"):
        assert g(Thing()) == 1


class Verdict(pydantic.BaseModel):  # (module level: a cache can name and restore it)
    label: str
    score: float
    tags: list[str] = []


def rate(text):
    return ember.models("sim", f"Rate: {text}", response_format=Verdict).json(Verdict)


def test_pydantic_results_are_cached_and_restored_as_their_class(monkeypatch):
    cached = cache(rate)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # stored: no "runs uncached" warning
        first = cached("a")
        again = cached("a")
    assert sim.stats().requests == 1
    assert type(again) is Verdict and again == first
    assert ember.jit(cached)("a") == first and sim.stats().requests == 1  # a hit under jit
    # where the class's module is not imported (another program reading the same cache)
    # the entry is a miss: Ember never imports a module a cache file names
    monkeypatch.delitem(sys.modules, Verdict.__module__)
    with pytest.warns(UserWarning, match="result of type Verdict"):  # nor can it store one
        assert cached("a") == first
    assert sim.stats().requests == 2 and Verdict.__module__ not in sys.modules


def test_a_pydantic_class_that_cannot_be_named_runs_uncached():
    class Local(pydantic.BaseModel):
        label: str

    f = cache(lambda x: Local(label=ember.models("sim", x).text))
    with pytest.warns(UserWarning, match="result of type Local"):
        f("a")
    f("a")
    assert sim.stats().requests == 2


def test_identity_follows_the_code():
    def f(x):
        return x + 1

    def g(x):
        return x + 2

    assert identity(f).split("@")[0].endswith("f") and identity(f) != identity(g)
    assert identity(ember.jit(f)) == identity(f)


def test_closures_are_part_of_the_identity():
    makers = [cache(lambda x, m=None, k=k: f"{k}:{x}") for k in "ab"]
    captured = []
    for k in "ab":
        captured.append(cache((lambda k: lambda x: f"{k}:{x}")(k)))
    assert [f("x") for f in makers] == ["a:x", "b:x"]
    assert [f("x") for f in captured] == ["a:x", "b:x"]


class _Agent:
    def __init__(self, model, style=""):
        self.model, self.style = model, style
        self.lock = threading.Lock()  # (no plain form: keyed by type)
        self.calls = 0  # changed by every call: learned to be no part of the key

    def ask(self, q):
        self.calls += 1
        return ember.models(self.model, self.style + q).text


class _Prefixer:
    def __init__(self, prefix):
        self.prefix = prefix

    def __call__(self, q):
        return f"{self.prefix}: {q}"


def test_captured_state_is_part_of_the_key():
    """Functions that differ only in what they hold never share entries: bound methods
    of different objects, callable objects, closures over different containers."""
    gpt, claude = _Agent("sim/gpt"), _Agent("sim/claude")
    assert cache(gpt.ask)("hi") == gpt.ask("hi")
    assert cache(claude.ask)("hi") == claude.ask("hi") != gpt.ask("hi")
    assert cache(_Agent("sim/gpt", "Be brief. ").ask)("hi") == _Agent("sim/gpt",
                                                                      "Be brief. ").ask("hi")
    assert [cache(_Prefixer(p))("hi") for p in ("EN", "FR")] == ["EN: hi", "FR: hi"]

    def make(config):
        return cache(lambda q: ember.models(config["model"], q).text)

    assert make({"model": "sim/a"})("hi") == ember.models("sim/a", "hi").text
    assert make({"model": "sim/b"})("hi") == ember.models("sim/b", "hi").text
    assert make({"model": "sim/a", "extra": [1, {2, 3}]})("hi") == ember.models("sim/a",
                                                                                 "hi").text
    # the same state hits: keys do not depend on object identity
    before = sim.stats().requests
    assert cache(_Agent("sim/claude").ask)("hi") == claude.ask("hi")
    assert make({"model": "sim/b"})("hi") == ember.models("sim/b", "hi").text
    assert sim.stats().requests == before + 2  # the two uncached oracle calls only
    # the counter each call changes is learned (and kept in the file) to be no input
    asker = cache(_Agent("sim/x").ask)
    before = sim.stats().requests
    assert asker("q") == asker("q") == cache(_Agent("sim/x").ask)("q")
    assert sim.stats().requests == before + 1
    # a cycle is keyed too (down to a depth, then by type)
    loop: list = []
    loop.append(loop)
    assert cache(lambda q, held=loop: q.upper())("x") == "X"


class _LLM:
    def __init__(self, model):
        self.model, self.calls = model, 0


class _Nested:
    def __init__(self, model):
        self.llm = _LLM(model)

    def ask(self, q):
        self.llm.calls += 1  # changed inside a nested object: only that part is volatile
        return ember.models(self.llm.model, q).text


class _Slots:
    __slots__ = ("model",)

    def __init__(self, model):
        self.model = model

    def ask(self, q):
        return ember.models(self.model, q).text


class _AttrConfig:  # attribute access over a dict: reading an unknown name is a KeyError
    def __init__(self, **data):
        self._data = data

    def __getattr__(self, name):
        return self._data[name]


def test_captured_state_inside_nested_objects_slots_and_dict_subclasses():
    import collections

    for make in (_Nested, _Slots):
        a, b = cache(make("sim/alpha").ask), cache(make("sim/beta").ask)
        assert a("hi") == ember.models("sim/alpha", "hi").text
        assert b("hi") == ember.models("sim/beta", "hi").text  # (before: alpha's answer)
        assert a("hi") == ember.models("sim/alpha", "hi").text
    for box in (collections.OrderedDict, lambda **kw: collections.defaultdict(str, **kw),
                _AttrConfig):
        def make(cfg):
            return cache(lambda q: ember.models(cfg["model"] if isinstance(cfg, dict)
                                                else cfg.model, q).text)

        assert make(box(model="sim/a"))("q") == ember.models("sim/a", "q").text
        assert make(box(model="sim/b"))("q") == ember.models("sim/b", "q").text


def test_cache_clear_leaves_other_functions_of_one_name():
    one = cache(lambda q: "one " + q)
    two = cache(lambda q: "two " + q)  # (both are <lambda> of this test)
    one("x"), two("x")
    assert one.cache_clear() == 1 and two.cache_clear() == 1


def test_a_damaged_cache_file_runs_calls_uncached_with_one_warning(tmp_path):
    folder = tmp_path / "damaged"
    folder.mkdir()
    (folder / "cache.sqlite3").write_bytes(b"\x00garbage" * 512)
    f = cache(analyze, path=str(folder))
    with pytest.warns(UserWarning, match=r"cannot use the cache file .*cache.sqlite3 .*"
                      r"DatabaseError.*Delete or move the file"):
        first = f("x")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per file
        assert f("x").text == first.text == analyze("x").text


def test_bad_options_fail_when_decorating():
    with pytest.raises(TypeError, match="path must be a file or folder path, got 123"):
        cache(analyze, path=123)
    with pytest.raises(ValueError, match="ttl must be positive seconds or None, got '3600'"):
        cache(analyze, ttl="3600")
    with pytest.raises(TypeError, match="initial_delay must be a number of seconds, got '0.5'"):
        ember.retry(analyze, initial_delay="0.5")
    with pytest.raises(TypeError, match="max_delay must be a number of seconds, got None"):
        ember.retry(analyze, max_delay=None)


def test_async_functions():
    calls = []

    @cache
    async def f(x):
        calls.append(x)
        return (await ember.amodels("sim", x)).text

    assert asyncio.run(f("q")) == asyncio.run(f("q"))
    assert calls == ["q"]


def test_cache_clear():
    f = cache(analyze)
    f("x")
    assert f.cache_clear() == 1
    f("x")
    assert sim.stats().requests == 2


# ---- the file ---------------------------------------------------------------------------
def test_file_is_private_and_holds_no_secret(cache_home, openai_server):
    f = cache(lambda x: ember.models("openai/gpt-4o-mini", x))
    for i in range(5):
        f(f"prompt {i}")
    assert stat.S_IMODE(os.stat(cache_home).st_mode) == 0o700
    blob = b""
    for name in os.listdir(cache_home):
        path = cache_home / name
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, name
        blob += path.read_bytes()
    assert OPENAI_KEY.encode() not in blob and b"sk-" not in blob
    assert b"pickle" not in blob and b"echo: prompt 3" in blob  # JSON values


def test_explicit_path(tmp_path):
    target = tmp_path / "elsewhere" / "mine.db"
    f = cache(lambda x: x * 2, path=str(target))
    assert f(2) == 4
    assert target.exists() and stat.S_IMODE(os.stat(target).st_mode) == 0o600


def test_survives_a_process_restart(cache_home):
    script = textwrap.dedent("""
        import ember
        from ember._cache import cache
        from ember.providers import sim

        @cache
        def analyze(text):
            return ember.models("sim", f"Analyze: {text}")

        texts = [analyze(t).text for t in ["a", "b", "c"]]
        print(sim.stats().requests, "|".join(texts).replace(" ", "_"))
    """)
    env = {**os.environ, "EMBER_CACHE_DIR": str(cache_home), "PYTHONPATH": ROOT}
    runs = [subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                           text=True, timeout=60, check=True).stdout.split() for _ in range(2)]
    assert runs[0][0] == "3" and runs[1][0] == "0"
    assert runs[0][1] == runs[1][1]


def square(x):
    return {"x": x, "square": x * x, "by": os.getpid()}


def _writer(args) -> int:
    folder, worker = args
    os.environ["EMBER_CACHE_DIR"] = folder
    from ember._cache import cache

    cached = cache(square)
    for i in range(60):
        assert cached(i % 40)["square"] == (i % 40) ** 2
    return worker


def test_concurrent_writers(cache_home):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        assert sorted(pool.map(_writer, [(str(cache_home), w) for w in range(4)])) == [0, 1, 2, 3]
    assert rows(cache_home) == 40


# ---- jit and vmap -----------------------------------------------------------------------
def test_hit_under_jit_records_no_call():
    cached = cache(analyze)
    expected = ember.models("sim", f"Judge: {cached('p').text}").text
    pipeline = ember.jit(lambda x: ember.models("sim", f"Judge: {cached(x)}").text)
    assert sim.stats().requests == 2
    assert pipeline("p") == expected
    assert sim.stats().requests == 3  # the judge again; the cached call was not sent


def test_miss_under_jit_is_stored_by_the_check_run(cache_home):
    cached = cache(analyze)
    fan = ember.jit(lambda xs: [cached(x).text for x in xs])
    assert fan(["a", "b", "c"]) == [analyze(x).text for x in "abc"]
    assert rows(cache_home) == 3
    before = sim.stats().requests
    fan(["a", "b", "c"])
    assert sim.stats().requests == before


def test_a_second_call_with_the_same_arguments_under_jit_is_a_hit_as_eagerly():
    """Eagerly the second call of a cached sampled function hits what the first stored;
    under jit both were traced, and the graph paid for two samples."""
    from ember import providers

    sent = []

    async def ideas(request):
        sent.append(request)
        return f"idea #{len(sent)}"

    providers.register("ideas", ideas)
    try:
        idea = cache(lambda topic: ember.models("ideas/m", f"An idea about {topic}").text)
        both = ember.jit(lambda topic: [idea(topic), idea(topic)])
        for topic in ("tea", "coffee"):
            sent.clear()
            assert both(topic) == ["idea #1"] * 2 and len(sent) == 1
    finally:
        providers._custom.pop("ideas", None)
        providers._instances.pop("ideas", None)


def test_hits_are_counted_in_the_run_report_once_per_call_the_python_makes():
    import re

    ask = cache(lambda q: ember.models("sim", f"Answer: {q}").text)

    def program(x):
        known = ask("the fixed question")  # a hit from the second call on
        draft = ember.models("sim", f"Draft about {x}").text
        words = len(re.findall(r"[a-z]+", draft))  # C code reads the answer: the plan
        return known + ember.models("sim", f"{words} words").text  # misses this call

    ask("the fixed question")  # stored
    with ember.record() as eager:
        expected = program("x")
    assert eager.cache_hits == 1 and eager.requests == 2
    fast = ember.jit(program)
    assert fast("x") == expected
    # the trace's lookups are not hits; the check run met the unplanned call, fetched
    # it and ran again: the hit still counts once
    assert fast.last_run.cache_hits == 1
    (hit,) = [c for c in fast.last_run.calls if c.cached]
    assert hit.model.startswith("cache/") and hit.cost == 0 and \
        hit.location.endswith(f":{program.__code__.co_firstlineno + 1}")  # the caller's line
    mapped = ember.vmap(ask)
    mapped(["the fixed question", "new", "the fixed question"])
    assert mapped.last_run.cache_hits == 2 and mapped.last_run.requests == 1
    assert "2 cache hits" in str(mapped.last_run)


def test_arguments_from_a_model_are_awaited_then_looked_up():
    summarize = cache(lambda t: ember.models("sim", f"Summarize: {t}").text)
    pipeline = ember.jit(lambda x: summarize(ember.models("sim", f"Draft {x}").text))
    first = pipeline("z")
    n = sim.stats().requests
    assert pipeline("z") == first
    assert sim.stats().requests == n + 1  # the draft is deterministic but not cached: 1


def test_failed_elements_rerun_alone(cache_home):
    sim.configure(fail_on="item 7")
    mapped = ember.vmap(cache(lambda i: ember.models("sim", f"item {i}").text))
    with pytest.raises(ember.BatchError):
        mapped(list(range(12)))
    assert rows(cache_home) == 11
    sim.configure(fail_on=None)
    before = sim.stats().requests
    assert len(mapped(list(range(12)))) == 12
    assert sim.stats().requests == before + 1


def test_interrupted_vmap_pays_only_for_unfinished(cache_home):
    script = textwrap.dedent("""
        import sys, ember
        from ember._cache import cache
        from ember.providers import sim

        sim.configure(latency=float(sys.argv[1]))
        work = cache(lambda i: ember.models("sim", f"element {i}").text)
        ember.vmap(work, batch_size=4)(list(range(40)))
        print(sim.stats().requests)
    """)
    env = {**os.environ, "EMBER_CACHE_DIR": str(cache_home), "PYTHONPATH": ROOT}
    proc = subprocess.Popen([sys.executable, "-c", script, "0.05"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db = cache_home / "cache.sqlite3"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if db.exists():
            try:
                if rows(cache_home) >= 12:
                    break
            except sqlite3.OperationalError:
                pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    done = rows(cache_home)
    assert 12 <= done < 40
    rerun = subprocess.run([sys.executable, "-c", script, "0"], env=env, capture_output=True,
                           text=True, timeout=60, check=True)
    assert int(rerun.stdout.split()[-1]) == 40 - done


def test_inspect_of_a_map_over_cache_hits_hoists_nothing(tmp_path):
    """A cache hit is a constant in the first element's trace, so a call fed by it
    looked the same for every element: the map estimate made it once (1 request for
    the 5 the map makes)."""
    summarize = cache(lambda t: ember.models("sim", f"Summarize: {t}").text, path=str(tmp_path))

    def pipeline(t):
        return ember.models("sim", f"Title for {summarize(t)}").text

    xs = [f"d{i}" for i in range(5)]
    [pipeline(x) for x in xs]  # every summary cached
    report = ember.inspect(ember.vmap(pipeline), xs)
    mapped = ember.vmap(pipeline)
    mapped(xs)
    assert report.map_estimate.requests == mapped.last_run.requests == 5
    assert report.batched is None and "every element plans its own graph" in str(report)


def test_a_cache_file_from_before_expiry_times_is_kept_and_used(tmp_path):
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(str(path)) as conn:
        conn.execute("CREATE TABLE results (key TEXT PRIMARY KEY, fn TEXT NOT NULL, "
                     "value TEXT NOT NULL, created REAL NOT NULL)")
    f = cache(lambda x: x + "!", ttl=60, path=str(path))
    assert f("a") == f("a") == "a!"
    with sqlite3.connect(str(path)) as conn:
        assert conn.execute("SELECT count(*) FROM results WHERE expires > created").fetchone()[0] == 1
