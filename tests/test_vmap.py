"""vmap: order, axes, nesting, windows and failures, against a plain map on `sim`."""

from __future__ import annotations

import asyncio

import pytest

import ember
from ember import jit, models, vmap
from ember.backends.record import recording
from ember.passes.vmap import hoisted_nodes
from ember.providers import sim


def analyze(text: str):
    return models("sim", f"Analyze: {text}").text


def branchy(text: str):
    r = models("sim", f"Q {text}")
    if len(r.text) > 60:
        return "long " + r.text
    return "short " + r.text


def test_matches_a_plain_map_in_order():
    xs = [f"doc {i}" for i in range(25)]
    assert vmap(analyze)(xs) == [analyze(x) for x in xs]
    assert vmap(analyze, batch_size=4)(xs) == [analyze(x) for x in xs]


def test_branching_function_matches_a_plain_map():
    xs = [f"d{i}" for i in range(30)]
    assert vmap(branchy, batch_size=7)(xs) == [branchy(x) for x in xs]


def test_in_axes_broadcast_and_tuple():
    def ask(prefix: str, text: str, k: int):
        return models("sim", f"{prefix} {text} {k}").text

    xs = ["a", "b", "c"]
    got = vmap(ask, in_axes=(None, 0, None))("Q:", xs, 2)
    assert got == [ask("Q:", x, 2) for x in xs]
    got = vmap(ask, in_axes=(0, 0, None))(["1", "2", "3"], xs, 0)
    assert got == [ask(p, x, 0) for p, x in zip(["1", "2", "3"], xs)]


def test_bad_axes_and_lengths_are_clear():
    with pytest.raises(ValueError, match="differ in length"):
        vmap(lambda a, b: a)(["x"], ["y", "z"])
    with pytest.raises(ValueError, match="one per argument"):
        vmap(lambda a, b: a, in_axes=(0,))(["x"], ["y"])
    with pytest.raises(TypeError, match="not a list"):
        vmap(analyze)("just a string")
    with pytest.raises(ValueError, match="no argument is mapped"):
        vmap(analyze, in_axes=None)(["x"])
    with pytest.raises(ValueError, match=r"pass the list positionally: vmap\(analyze\)"):
        vmap(analyze)(text=["x", "y"])  # (keywords are broadcast, never mapped)
    with pytest.raises(ValueError, match="0 or None"):
        vmap(analyze, in_axes=1)(["x"])
    with pytest.raises(ValueError, match="batch_size"):
        vmap(analyze, batch_size=0)


def test_nested_vmap_composes():
    inner = vmap(analyze)
    outer = vmap(lambda row: inner(row))
    grid = [["a", "b"], ["c"], ["d", "e", "f"]]
    assert outer(grid) == [[analyze(x) for x in row] for row in grid]


def test_vmap_of_jit_and_jit_of_vmap_agree_with_a_map():
    xs = ["p", "q", "r"]
    expected = [analyze(x) for x in xs]
    assert vmap(jit(analyze))(xs) == expected
    assert jit(lambda items: vmap(analyze)(items))(xs) == expected
    assert jit(vmap(analyze))(xs) == expected


def test_a_cancelled_map_keeps_the_finished_results():
    """Ctrl-C (or cancelling the task) part way: .results holds every finished element's
    result (None for the rest): they were paid for."""
    sim.configure(latency=0.2)

    async def f(x: str):
        return (await ember.amodels("sim", f"A {x}")).text

    mapped = vmap(f, batch_size=2)

    async def cancel_midway():
        task = asyncio.ensure_future(mapped([str(i) for i in range(8)]))
        for _ in range(500):  # (.results fills in place)
            if sum(r is not None for r in mapped.results) >= 4:
                break
            await asyncio.sleep(0.01)
        task.cancel()  # the next two in flight (0.2 s to go), two not started
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_midway())
    done = [r for r in mapped.results if r is not None]
    assert len(mapped.results) == 8 and len(done) == 4
    assert mapped.results[:4] == [analyze_a(str(i)) for i in range(4)]
    assert mapped.last_run.completions == 4


def test_sliding_window_bounds_elements_in_flight():
    sim.configure(latency=0.02)
    vmap(analyze, batch_size=3)([f"x{i}" for i in range(12)])
    assert sim.stats().max_in_flight == 3
    sim.reset_stats()
    vmap(analyze)([f"y{i}" for i in range(12)])
    assert sim.stats().max_in_flight == 12


def test_traced_once_for_all_elements():
    mapped = vmap(analyze)
    mapped([f"z{i}" for i in range(10)])
    entry = next(iter(mapped.jitted.cache.values()))
    assert entry.traces == 1 and entry.calls == 10


def test_duplicates_across_elements_are_sent_once():
    sim.configure(latency=0.02)  # concurrent identical requests coalesce in flight
    with recording() as rec:
        out = vmap(analyze)(["same"] * 8)
    assert len(set(out)) == 1 and rec.requests == 1


def test_one_failing_element_keeps_the_others():
    sim.configure(fail_on="POISON")
    xs = [f"ok {i}" for i in range(30)]
    xs[7] = "POISON"
    mapped = vmap(analyze)
    with pytest.raises(ember.BatchError) as info:
        mapped(xs)
    err = info.value
    assert list(err.errors) == [7] and "index 7" in str(err)
    assert len(err.succeeded) == 29
    assert err.results[0] == analyze("ok 0")
    assert mapped.results is err.results
    got = vmap(analyze, return_exceptions=True)(xs)
    assert isinstance(got[7], ember.ProviderError) and got[8] == analyze("ok 8")


def test_async_function_mapped():
    async def f(x: str):
        r = await ember.amodels("sim", f"A {x}")
        return r.text

    xs = ["1", "2", "3", "4"]
    got = asyncio.run(vmap(f, batch_size=2)(xs))
    assert got == [analyze_a(x) for x in xs]


def analyze_a(x: str) -> str:
    return models("sim", f"A {x}").text


def test_async_failures_are_collected():
    sim.configure(fail_on="BAD")

    async def f(x: str):
        return (await ember.amodels("sim", x)).text

    with pytest.raises(ember.BatchError) as info:
        asyncio.run(vmap(f)(["fine", "BAD", "good"]))
    assert list(info.value.errors) == [1]


def test_progress_line_when_asked(capsys):
    vmap(analyze, progress=True)([f"p{i}" for i in range(5)])
    err = capsys.readouterr().err
    assert "5/5 done" in err and "0 failed" in err and "tokens" in err


def test_decorator_form():
    @vmap(batch_size=2)
    def shout(x: str):
        return models("sim", x).text.upper()

    assert shout(["a", "b", "c"]) == [models("sim", x).text.upper() for x in "abc"]
    assert "vmap" in repr(shout)


# ---------------------------------------------------- the batching transform at run time
def grade(essay: str, style: str = "strict"):
    rubric = models("sim", f"Write a {style} grading rubric", temperature=0)
    return models("sim", f"{rubric.text}\nGrade: {essay}", temperature=0).text


def test_calls_that_do_not_depend_on_the_mapped_argument_are_made_once():
    sim.configure(latency=0.01)
    xs = [f"essay {i}" for i in range(40)]
    mapped = vmap(grade, batch_size=5)
    with recording() as rec:
        got = mapped(xs)
    assert got == [grade(x) for x in xs]
    rubrics = [c for c in rec.calls if c.model == "sim" and not c.coalesced]
    assert rec.requests == 41 == len(rubrics)  # one rubric + 40 grades (eager: 80)
    assert sim.stats().max_in_flight <= 5
    # a broadcast argument the hoisted call depends on: still once per map call
    with recording() as rec:
        got = vmap(grade, in_axes=(0, None))(xs[:6], "lenient")
    assert got == [grade(x, "lenient") for x in xs[:6]] and rec.requests == 7


def test_samples_and_effects_stay_per_element():
    seen: list[str] = []

    @ember.op(effectful=True)
    def log(text: str) -> str:
        seen.append(text)
        return text

    def f(x: str):
        idea = models("sim", "Brainstorm", temperature=0.9)  # each element its own sample
        log("started")  # and its own effect, though its input is the same for all
        return models("sim", f"{idea.text} for {x}", temperature=0).text

    mapped = vmap(f)
    with recording() as rec:
        got = mapped([f"x{i}" for i in range(6)])
    assert len(got) == 6 and rec.requests == 12  # 6 samples + 6 answers: nothing hoisted
    graph = next(iter(mapped.jitted.cache.values())).graph
    assert hoisted_nodes(graph, [True]) == []
    assert seen == ["started"] * 6  # once per element, as in the plain map


def test_a_failing_hoisted_call_fails_every_element_and_loses_nothing():
    sim.configure(fail_on="RUBRIC")

    def g(x: str):
        rubric = models("sim", "RUBRIC please", temperature=0)
        return models("sim", f"{rubric.text} {x}", temperature=0).text

    with recording() as rec:
        got = vmap(g, return_exceptions=True)(["a", "b", "c"])
    assert all(isinstance(r, ember.ProviderError) for r in got)
    assert rec.requests == 1  # the shared call failed once; no element sent it again


def test_hoisting_in_an_async_map():
    async def f(x: str):
        rubric = await ember.amodels("sim", "A rubric", temperature=0)
        return (await ember.amodels("sim", f"{rubric.text} {x}", temperature=0)).text

    sim.configure(latency=0.01)
    with recording() as rec:
        got = asyncio.run(vmap(f, batch_size=2)(["1", "2", "3", "4"]))
    rubric = models("sim", "A rubric", temperature=0).text
    assert got == [models("sim", f"{rubric} {x}", temperature=0).text for x in "1234"]
    assert rec.requests == 5


def test_the_maps_estimate_counts_each_elements_own_input():
    """inspect(vmap(f), xs) sized every element's prompt as a default 100 tokens (the
    graph's input had no example value): 200 short documents were estimated at 22,000
    input tokens for 8,772 sent, and the cost range missed the cost of the run. Now each
    element's own input is counted (a random sample of 1,000 for longer maps)."""
    def summarize(t: str):
        return models("sim", f"Summarize in one line: {t}").text

    docs = [f"document {i} " + "word " * (i % 50) for i in range(200)]
    est = ember.inspect(vmap(summarize), docs).map_estimate
    mapped = vmap(summarize, progress=False)
    mapped(docs)
    run = mapped.last_run
    assert est.input_tokens_min <= run.input_tokens <= est.input_tokens
    assert est.input_tokens < 1.2 * run.input_tokens
    assert est.cost_min <= run.cost <= est.cost_max
    longer = ember.inspect(vmap(summarize), docs * 25).map_estimate  # sampled
    assert abs(longer.input_tokens - 25 * est.input_tokens) < 0.03 * 25 * est.input_tokens


def test_inspect_shows_the_batched_graph_and_the_whole_maps_estimate():
    report = ember.inspect(vmap(grade, batch_size=10), [f"essay {i}" for i in range(100)])
    text = str(report)
    assert report.name == "vmap(grade)"
    assert "batched graph (vmap):" in text and "lanes=100" in text and "Str[*]" in text
    assert "1 llm call hoisted (made once), 1 llm call batched per element; " \
           "101 requests in all" in text
    assert report.map_estimate.requests == 101 and report.estimate.requests == 2
    assert "estimate (the whole map):" in text
    per = report.estimate
    assert report.map_estimate.critical_path_seconds == pytest.approx(
        per.critical_path_seconds + 9 * (per.critical_path_seconds / 2), rel=0.01)
    # a function that branches on an answer: no batched graph, the element's trace only
    def decide(x: str):
        return "yes" if models("sim", f"Q {x}") else "no"

    branching = ember.inspect(vmap(decide), ["a", "b"])
    assert not branching.complete
    assert branching.batched is None and branching.map_estimate is None


def test_a_vmap_inside_jit_keeps_its_failure_options_and_async_form():
    """Nested in a jitted function, a vmap became a plain list comprehension: a failing
    element raised its own error (return_exceptions and BatchError were dropped), and
    `await vmap(async_fn)(xs)` raised "object list can't be used in 'await'"."""
    sim.configure(fail_on="BAD")
    kinds = vmap(lambda p: models("sim", f"Say {p}").text, return_exceptions=True)
    strict = vmap(lambda p: models("sim", f"Say {p}").text)

    def outer(x):
        caught = None
        try:
            strict([f"{x} fine", f"{x} BAD"])
        except ember.BatchError as exc:
            caught = sorted(exc.errors)
        return [type(r).__name__ for r in kinds([f"{x} one", f"{x} BAD"])], caught

    assert jit(outer)("a") == outer("a") == (["str", "BadRequestError"], [1])
    assert vmap(outer)(["a", "b"]) == [outer("a"), outer("b")]

    async def say(p):
        return (await ember.amodels("sim", f"Say {p}")).text

    say_all = vmap(say)

    async def joined(x):
        return " | ".join(await say_all([f"{x} one", f"{x} two"]))

    async def main():
        return await joined("a"), await jit(joined)("a"), await vmap(joined)(["a"])

    eager, jitted, mapped = asyncio.run(main())
    assert jitted == eager and mapped == [eager]


def test_sys_exit_in_an_element_is_the_callers_and_leaves_the_loop_running():
    """sys.exit() (or Ctrl-C) inside a mapped function stopped Ember's loop thread: the
    map and every other caller got 'the event loop thread stopped'."""
    import threading

    def bail(x):
        if x == "stop":
            raise SystemExit(3)
        return models("sim", x).text

    with pytest.raises(SystemExit) as info:
        vmap(bail)(["a", "stop", "b"])
    assert info.value.code == 3
    done: list = []
    t = threading.Thread(target=lambda: done.append(vmap(bail)(["c", "d"])))
    t.start()
    t.join(10)
    assert done == [[models("sim", "c").text, models("sim", "d").text]]


def test_stop_iteration_in_an_element_keeps_its_type():
    def pages(x):
        if x == "end":
            raise StopIteration("no more pages")
        return x

    out = vmap(pages, return_exceptions=True)(["a", "end"])
    assert out[0] == "a" and type(out[1]) is StopIteration  # (was RuntimeError)


class _Grader:
    def __init__(self, style):
        self.style = style

    @vmap
    def many(self, x):
        return models("sim", f"{self.style}: {x}").text

    @vmap(in_axes=(None, 0))
    def declared(self, x):
        return models("sim", f"{self.style}: {x}").text


def test_vmap_on_a_method_binds_its_object():
    g = _Grader("formal")
    expected = [models("sim", f"formal: {x}").text for x in ("a", "b")]
    assert g.many(["a", "b"]) == g.declared(["a", "b"]) == expected
    assert g.many.last_run.requests >= 1


def test_boolean_options_are_refused():
    with pytest.raises(ValueError, match="batch_size"):
        vmap(lambda x: x, batch_size=True)
    with pytest.raises(ValueError, match="in_axes entries must be 0 or None, got False"):
        vmap(lambda x, y: x, in_axes=(0, False))(["a"], "b")


def test_last_run_is_each_callers_own():
    import threading

    mapped = vmap(lambda x: models("sim", x).text)
    seen: dict = {}
    barrier = threading.Barrier(2)

    def work(name, n):
        barrier.wait()
        mapped([f"{name} {i}" for i in range(n)])
        seen[name] = mapped.last_run.requests

    threads = [threading.Thread(target=work, args=(k, n)) for k, n in (("A", 1), ("B", 3))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {"A": 1, "B": 3}


def test_a_hoistable_call_fused_with_per_element_calls_is_still_made_once():
    """fuse batches calls of one model that become ready together, so a rubric (on the
    broadcast argument only) and the per-element calls beside it shared one llm_batch,
    which vmap then ran once per element: the rubric was sent 5 times, not once."""
    def grade(doc, style):
        first = models("sim", f"Summarize: {doc}")
        rules = models("sim", f"Rules for {style}")  # the same for every element
        second = models("sim", f"Title: {doc}")
        return models("sim", f"Apply {rules} to {first} and {second}").text

    docs = [f"doc {i}" for i in range(5)]
    eager = [grade(d, "haiku") for d in docs]
    sim.reset_stats()
    mapped = vmap(grade, in_axes=(0, None))
    assert mapped(docs, "haiku") == eager
    assert sum(p.startswith("Rules for") for p in sim.stats().prompts) == 1
    assert mapped.last_run.requests == 1 + 2 * len(docs)
    report = ember.inspect(mapped, docs, "haiku")
    assert report.batched.meta["vmap"].hoisted_calls == 1
    assert report.map_estimate.requests == 1 + 2 * len(docs)
    from ember.ir.graph import check_graph
    from ember.passes.vmap import split_hoistable

    graph = report.graph  # the element graph: one batch of the three first calls
    assert [n.op for n in graph.nodes].count("llm_batch") == 1
    split = check_graph(split_hoistable(graph, [True, False]))
    assert [n.op for n in split.nodes].count("llm_batch") == 2
    assert split_hoistable(graph, [True, True]) is graph  # nothing to hoist: unchanged


def test_the_window_keeps_only_the_elements_in_flight():
    """Every finished element's task was kept until the map ended: ~1.5 KB an element,
    150 MB at its peak over 100,000 elements."""
    import gc
    import weakref

    from ember._vmap import _windowed

    refs: list = []
    alive: list[int] = []

    async def one(i: int) -> None:
        refs.append(weakref.ref(asyncio.current_task()))
        await asyncio.sleep(0)
        if i == 199:
            gc.collect()
            alive.append(sum(r() is not None for r in refs))

    asyncio.run(_windowed(200, 3, one))
    assert len(refs) == 200 and alive[0] <= 4

    async def stops(i: int) -> None:  # an element letting out a BaseException: raised,
        if i == 5:                    # and the others in flight cancelled
            raise KeyboardInterrupt
        await asyncio.sleep(10)

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(asyncio.wait_for(_windowed(20, 8, stops), 5))
