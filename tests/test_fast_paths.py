"""The tracer's and passes' fast paths agree with the general ones they stand in for."""

from __future__ import annotations

import sys

import pytest

from ember import models
from ember import op as ember_op
from ember._inspect import trace_graph
from ember.backends.policy import CallOptions, RetryPolicy
from ember.ir import Graph, Lit, ListT, Node, ResponseT, Str, Var, check_graph
from ember.ir import trace as trace_mod
from ember.ir.graph import GraphError
from ember.passes import cse, fuse, run_passes, toposort
from ember.passes.cse import mergeable
from ember.passes.dce import Interner, count_calls


def test_trusted_and_traced_nodes_equal_checked_ones():
    v = Var(Str)
    params = {"specs": ("",), "segments": ("Q: ", "")}
    checked = Node("format", [v], params, Var(Str), "x.py:1")
    trusted = Node.trusted("format", (v,), tuple(sorted(params.items())), checked.out, "x.py:1")
    state = trace_mod.TraceState()
    out = state.add_trusted("format", (v,), tuple(sorted(params.items())), Str, "x.py:1")
    for n in (trusted, state.nodes[0]):
        assert (n.op, n.inputs, n.params, n.loc, n.meta) == \
            (checked.op, checked.inputs, checked.params, checked.loc, checked.meta)
    assert state.nodes[0].out is out and out.type == Str and out.id > checked.out.id


def test_user_location_memo_survives_being_cleared(monkeypatch):
    from ember.ir import locations

    monkeypatch.setattr(locations, "_MAX_LOCATIONS", 1)
    here = sys._getframe().f_lineno
    locs = [locations.user_location(1) for _ in range(2)]  # a hit, then another code
    other = locations.user_location(1)
    third = locations.user_location(1)  # a second offset in the same code
    assert locs == [f"{__file__}:{here + 1}"] * 2
    assert (other, third) == (f"{__file__}:{here + 2}", f"{__file__}:{here + 3}")
    assert len(locations._locations) == 1 and len(locations._locations[id(
        sys._getframe().f_code)][1]) == 1



def test_fuse_per_params_facts_survive_being_cleared(monkeypatch):
    """fuse works out an llm node's facts once per params tuple for the process; with
    its tables cleared on every new entry, the same graph fuses the same way (a kind
    id is never given to two kinds: calls to different models never share a batch)."""
    import importlib

    fuse_mod = importlib.import_module("ember.passes.fuse")

    def fn(x: str):
        a = [models("sim", f"{k}: {x}").text for k in range(2)]
        b = [models("sim/other", f"{k}: {x}").text for k in range(2)]
        c = [models("sim", f"vote: {x}", temperature=0.7).text for _ in range(2)]
        d = [models("sim", f"poll: {x}", temperature=0.7).text for _ in range(3)]
        return a + b + c + d

    graph = cse(trace_graph(fn, ("q",), {})[0])[0]
    expected = fuse(graph)
    monkeypatch.setattr(fuse_mod, "_MAX_FACTS", 1)
    for table in (fuse_mod._FACTS, fuse_mod._KINDS, fuse_mod._N_PARAMS, fuse_mod._KNOWN_CAPS):
        table.clear()
    again = fuse(graph)
    assert str(again[0]) == str(expected[0]) and again[1] == expected[1]
    assert (again[1].batches, again[1].batched_calls, again[1].sampled_groups) == (2, 4, 2)
    assert [len(t) for t in (fuse_mod._FACTS, fuse_mod._KINDS, fuse_mod._N_PARAMS,
                             fuse_mod._KNOWN_CAPS)] == [1, 1, 1, 1]


def test_fuse_reads_capabilities_again_when_a_provider_is_registered_anew():
    from ember import providers

    async def answer(request):
        return "x"

    def fn(x: str):
        return [models("capsco/m", f"vote: {x}", temperature=0.7).text for _ in range(2)]

    providers.register("capsco", answer, supports_n=True)
    try:
        graph = cse(trace_graph(fn, ("q",), {})[0])[0]
        assert fuse(graph)[1].sampled_groups == 1
        providers.register("capsco", answer, supports_n=False)  # remembered caps are stale
        stats = fuse(graph)[1]
        assert (stats.sampled_groups, stats.unfused_no_n) == (0, 2)
    finally:
        providers._custom.pop("capsco", None)
        providers._instances.pop("capsco", None)

def test_a_plain_traced_prompt_is_its_own_atom_and_no_format_node():
    def fn(x: str):
        return models("sim", f"{x}").text

    graph, *_ = trace_graph(fn, ("q",), {})
    assert [n.op for n in graph.nodes] == ["llm", "format"]
    assert graph.nodes[0].inputs[0] is graph.inputs[0]


def test_a_raised_value_reaches_the_model_call_that_uses_it():
    def fn(x: str):
        r = models("sim", f"{x:d}")  # format(str, "d") raises while tracing
        return "yes" if r else "no"

    _, state, complete, note = trace_graph(fn, ("q",), {})
    assert not complete and "raised ValueError" in note
    assert isinstance(state.values[state.nodes[-1].out.id], ValueError)


def test_mergeable_beyond_what_cse_sees_in_the_default_pipeline():
    v = Var(Str)
    opts = (("model", "sim"), ("options", CallOptions()), ("params", ()))
    batch = Node("llm_batch", (v, Lit(None), v, Lit(None)),
                 (("deterministic", (True, True)),) + opts, Var(ListT(ResponseT)))
    sampled = Node("llm_batch", batch.inputs, (("deterministic", (True, False)),) + opts,
                   Var(ListT(ResponseT)))
    loud = Node("llm", (v, Lit(None)), {"deterministic": True, "effectful": True, "model": "sim"},
                Var(ResponseT))
    fmt = Node("format", (v,), {"segments": ("", "!"), "specs": ("",)}, Var(Str))
    assert [mergeable(n) for n in (batch, sampled, loud, fmt)] == [True, False, False, True]
    assert count_calls(Graph([v], [batch, sampled, loud, fmt], [])) == (3, 5)


def test_cse_leaves_a_node_with_an_unhashable_literal_alone():
    v = Var(Str)
    a, b = (Node("format", (v, Lit([1])), {"segments": ("", "", ""), "specs": ("", "")}, Var(Str))
            for _ in range(2))
    g, stats = cse(Graph([v], [a, b], [a.out, b.out]))
    assert g.nodes == [a, b] and stats.merged_nodes == 0


def test_cse_merges_equal_options_held_by_different_objects():
    v = Var(Str)

    def call(options):
        return Node("llm", (v, Lit(None)), {"deterministic": True, "model": "sim", "n": 1,
                                            "options": options, "params": ()}, Var(ResponseT))

    a, b, c = call(CallOptions()), call(CallOptions()), call(CallOptions(RetryPolicy(5)))
    g, stats = cse(Graph([v], [a, b, c], [a.out, b.out, c.out]))
    assert stats.merged_calls == 1 and g.outputs == [a.out, a.out, c.out]


def test_interner_ids_equal_values_alike_and_keeps_what_it_saw():
    intern = Interner()
    x, y = ("a", CallOptions()), ("a", CallOptions())
    assert intern(x) == intern(y) == intern(x) == 0 and intern(("b",)) == 1
    assert intern(tuple(["b"])) == 1  # a temporary: its id may be reused, its value is kept


def test_toposort_places_producers_first_moving_as_little_as_possible():
    v = Var(Str)
    fmt = {"segments": ("", "!"), "specs": ("",)}
    a = Node("format", (v,), fmt, Var(Str))
    b = Node("format", (a.out,), fmt, Var(Str))
    c = Node("format", (v,), fmt, Var(Str))
    d = Node("format", (c.out, b.out), {"segments": ("", "", ""), "specs": ("", "")}, Var(Str))
    assert toposort([d, c, b, a]) == [c, a, b, d]
    assert toposort([d, c, b, a], starts={1}) == [d, c, b, a]  # only c may move: it needs none
    check_graph(Graph([v], toposort([b, d, a, c]), [d.out]))


def test_traced_graph_and_passes_agree_with_the_checked_constructors():
    def fn(x: str):
        views = [models("sim", f"{k}: {x}").text for k in range(3)]
        votes = [models("sim", f"vote: {x}", temperature=0.7).text for _ in range(2)]
        return models("sim", "judge:\n" + "\n".join(views + votes)).text

    graph, *_ = trace_graph(fn, ("q",), {})
    rebuilt = [Node(n.op, n.inputs, dict(n.params), n.out, n.loc) for n in graph.nodes]
    assert [n.params for n in rebuilt] == [n.params for n in graph.nodes]
    out, _ = run_passes(check_graph(graph), verify=True)
    assert out.count("llm_batch") == 1 and out.count("llm") == 2  # 3 batched, 2 as n=2, judge


def test_markers_of_another_trace_stay_plain_text():
    mine, other = trace_mod.TraceState(), trace_mod.TraceState()
    x, y = mine.input("x"), other.input("y")
    with trace_mod.tracing(other):
        theirs = format(y, "")  # (text that happens to hold another trace's marker)
    with trace_mod.tracing(mine):
        assert mine.atomize(f"only {theirs}") == Lit(f"only {theirs}")
        var = mine.atomize(f"<{theirs}|{x}|{x:>3}>")
        node = mine.nodes[-1]
        assert node.out is var and node.inputs == (x._var, x._var)
        assert node.param("segments") == (f"<{theirs}|", "|", ">")
        assert node.param("specs") == ("", ">3")
        one = mine.atomize(f"{theirs}{x}")  # one marker of this trace after another's
        assert mine.nodes[-1].out is one and mine.nodes[-1].param("segments") == (theirs, "")


def test_resolved_calls_follow_the_provider_registry():
    from ember import providers

    async def answer(request):
        return "ok"

    def fn(x: str):
        return models("mine/m", f"q {x}").text

    def deterministic() -> bool:
        graph, *_ = trace_graph(fn, ("a",), {})
        return graph.nodes[1].param("deterministic")

    try:
        providers.register("mine", answer, default_temperature=0.0)
        assert deterministic() and deterministic()  # the second trace reuses the resolution
        providers.register("mine", answer, default_temperature=1.0)  # a new instance
        assert not deterministic()
    finally:
        providers._custom.pop("mine", None)
        providers._instances.pop("mine", None)


def test_a_forged_marker_of_this_trace_is_plain_text():
    state = trace_mod.TraceState()
    x = state.input("x")
    forged = f"{state._mark_open}not-an-index{trace_mod._MARK_CLOSE}"
    with trace_mod.tracing(state):
        var = state.atomize(f"{x} {forged}")
    assert state.nodes[-1].out is var
    assert state.nodes[-1].param("segments") == ("", f" {forged}")
    assert state.atomize(forged) == Lit(forged)


def test_markers_past_the_shared_tables_are_formatted_and_parsed_alike(monkeypatch):
    def fn(x: str):
        answers = [models("sim", f"{i}: {x}") for i in range(3)]
        joined = "|".join(a.text for a in answers)  # three markers in one prompt
        return [models("sim", f"all {joined} {x:>2}").text, *(a.text for a in answers)]

    def shape(graph):
        return [(n.op, [graph.inputs.index(a) if a in graph.inputs else getattr(a, "value", "v")
                        for a in n.inputs], n.params) for n in graph.nodes]

    expected = shape(trace_graph(fn, ("q",), {})[0])
    # tables that hold only the first two markers: the rest take the general path
    monkeypatch.setattr(trace_mod, "_TAILS", [])
    monkeypatch.setattr(trace_mod, "_INDEX_OF", {})
    monkeypatch.setattr(trace_mod, "_TAILS_CAP", 2)
    assert shape(trace_graph(fn, ("q",), {})[0]) == expected
    assert trace_mod._TAILS == ["0\x03", "1\x03"] and trace_mod._INDEX_OF == {"0": 0, "1": 1}
    state = trace_mod.TraceState()
    x = state.input("x")
    padded = f"{state._mark_open}00{trace_mod._MARK_CLOSE}"  # not the table's spelling of 0
    with trace_mod.tracing(state):
        assert state.atomize(f"{x}{padded}") == state.nodes[-1].out
    assert state.nodes[-1].inputs == (x._var, x._var)


def test_marker_tables_grown_by_traces_in_several_threads_stay_aligned(monkeypatch, racing):
    def fn(x: str):
        return [models("sim", f"{i}: {x}").text for i in range(40)]

    expected = [n.params for n in trace_graph(fn, ("q",), {})[0].nodes]
    monkeypatch.setattr(trace_mod, "_TAILS", [])
    monkeypatch.setattr(trace_mod, "_INDEX_OF", {})
    graphs = []

    def work():
        for _ in range(5):
            graphs.append([n.params for n in trace_graph(fn, ("q",), {})[0].nodes])

    racing(work, 6)  # tables grown by several traces at once
    assert len(graphs) == 30 and all(g == expected for g in graphs)
    tails = trace_mod._TAILS
    assert tails == [f"{k}\x03" for k in range(len(tails))] and len(tails) >= 80
    assert trace_mod._INDEX_OF == {str(k): k for k in range(len(tails))}


def test_a_model_id_that_is_not_a_string_is_never_served_from_the_call_cache():
    def fn(x: str):
        return models("sim", x, temperature=0.5).text

    trace_graph(fn, ("a",), {})  # caches ("sim", (("temperature", 0.5),))
    with pytest.raises(Exception, match="model"):
        models(("sim", (("temperature", 0.5),)), "q")
    _, _, complete, note = trace_graph(lambda x: models(("sim", (("temperature", 0.5),)), x),
                                       ("a",), {})
    assert not complete and "model" in note


def test_values_are_computed_on_demand_once_and_effects_never_run():
    runs = []

    @ember_op(effectful=True)
    def log(text: str) -> str:
        runs.append(text)
        return text

    def fn(x: str):
        upper = x.upper()  # a local op on a known input: computed only when read
        if log(f"{upper}!"):  # bool() of an effect's result: it runs when the graph runs
            return models("sim", upper).text
        return "none"

    _, state, complete, _ = trace_graph(fn, ("q",), {})
    assert not complete and runs == []
    method = next(n for n in state.nodes if n.op == "method")
    assert state.values[method.out.id] == "Q"  # read by the format the effect got
    stray = Var(Str)  # a var no node defines and no input holds
    out = state.add_trusted("format", (stray,), (("segments", ("", "")), ("specs", ("",))), Str)
    assert state.value_of(out) is trace_mod.UNKNOWN and state.value_of(out) is trace_mod.UNKNOWN


def test_a_model_call_added_generically_is_looked_up_in_trace_order():
    seen = []

    def lookup(node, values):
        seen.append(values)
        return trace_mod.UNKNOWN

    state = trace_mod.TraceState(lookup=lookup)
    x = state.input("x")
    with trace_mod.tracing(state):
        state.add("llm", [x._var, Lit(None)], {"model": "sim", "n": 1, "params": (),
                                                 "deterministic": True, "options": None})
    assert seen == [["x", None]]
    assert state.value_of(state.nodes[-1].out) is trace_mod.UNKNOWN and len(seen) == 1


def test_the_call_cache_is_bounded(monkeypatch):
    from ember import _models

    monkeypatch.setattr(_models, "_MAX_CALLS", 1)
    monkeypatch.setattr(_models, "_calls", {})  # (what other tests resolved is not a miss)

    def fn(x: str):
        return [models("sim", x).text, models("sim", x, temperature=0.5).text]

    trace_graph(fn, ("a",), {})
    assert len(_models._calls) == 1


def test_verify_checks_a_pass_s_own_call_counts():
    class Lying:
        summary = "lies"

        def counts(self, calls, completions):
            return calls + 1, completions

    def noop(graph):
        return graph, Lying()

    b = Var(Str)
    g = Graph([b], [], [b])
    assert run_passes(g, [noop])[1][0].calls_after == 1  # trusted without verify
    with pytest.raises(GraphError, match="its stats count"):
        run_passes(g, [noop], verify=True)


def test_the_default_passes_counts_are_worked_out_when_first_read(monkeypatch):
    from ember.passes import dce as dce_pass
    from ember.passes import pipeline

    def app(x: str):
        models("sim", f"dead {x}")
        votes = [models("sim", f"vote {x}", temperature=0.7).text for _ in range(3)]
        return [models("sim", f"a {x}").text, models("sim", f"a {x}").text, *votes]

    graph = trace_graph(app, ("q",), {})[0]
    counted = []
    real = pipeline.count_calls
    monkeypatch.setattr(pipeline, "count_calls", lambda g: counted.append(g) or real(g))
    final, results = run_passes(graph)
    assert counted == []  # compiling counted nothing
    rows = [(r.calls_before, r.calls_after, r.completions_before, r.completions_after)
            for r in results]
    assert counted == [final]  # one count, of the final graph, on the first read
    assert rows == [(6, 5, 6, 5), (5, 4, 5, 4), (4, 2, 4, 4), (2, 2, 4, 4)]
    assert [r.calls_after for r in results] == [5, 4, 2, 2] and len(counted) == 1
    # a pipeline with a pass of its own counts as it goes, as does verify=True
    counted.clear()
    mine = run_passes(graph, [dce_pass, lambda g: (g, "a pass of my own")])[1]
    assert len(counted) == 2 and (mine[1].calls_before, mine[1].calls_after) == (5, 5)
    direct = pipeline.PassResult("p", None, 3, 2, 4, 3, 5, 4, 0.5)
    assert (direct.calls_before, direct.calls_after, direct.completions_before,
            direct.completions_after) == (4, 3, 5, 4)
    assert "calls_before=4" in repr(direct) and "3 -> 2 nodes, 4 -> 3 llm calls" in str(direct)


def test_sampled_calls_on_an_unhashable_literal_prompt_are_not_n_fused():
    opts = (("model", "sim"), ("n", 1), ("options", CallOptions()), ("params", ()))
    calls = [Node("llm", (Lit(["q"]), Lit(None)), (("deterministic", False),) + opts
                  + (("sample", i),), Var(ResponseT)) for i in range(2)]
    g = Graph([], calls, [c.out for c in calls])
    fused, stats = fuse(g)
    assert stats.sampled_groups == 0 and check_graph(fused)


def test_sampled_calls_share_params_per_sample_index_and_fused_groups_share_too(monkeypatch):
    from ember import _models

    monkeypatch.setattr(_models, "_MAX_SHARED_SAMPLES", 2)

    def votes(q):
        return [models("sim", f"question {i}", temperature=0.7).text
                for i in range(3) for _ in range(3)]

    graph = trace_graph(votes, ("q",), {})[0]
    calls = [n for n in graph.nodes if n.op == "llm"]
    samples = [n.param("sample") for n in calls]
    assert samples == [0, 1, 2] * 3
    # one tuple per sample index below the cap, across prompts; a fresh one above it
    assert calls[0].params is calls[3].params is calls[6].params
    assert calls[1].params is calls[4].params
    assert calls[2].params is not calls[5].params and calls[2].params == calls[5].params
    assert calls[0].params != calls[1].params
    fused = [n for n in fuse(graph)[0].nodes if n.op == "llm"]
    assert [n.param("n") for n in fused] == [3, 3, 3]
    assert fused[0].params is fused[1].params is fused[2].params
    assert "sample" in dict(fused[0].params) and dict(fused[0].params)["sample"] == 0


def test_markers_survive_strip_and_splitlines():
    def f(q):
        a = models("sim", q).text
        return models("sim", f"  {a}\n".strip().splitlines()[0]).text

    graph = trace_graph(f, ("q",), {})[0]
    second = [n for n in graph.nodes if n.op == "llm"][1]
    assert isinstance(second.inputs[0], Var)  # the marker was found: the calls chain


def test_levels_are_worked_out_when_first_read_and_jit_never_reads_them():
    from ember import jit
    from ember.passes.schedule import Levels

    def chain(q):
        a = models("sim", f"one: {q}")
        b = models("sim", f"two: {a.text}")
        return [b.text, models("sim", f"side: {q}").text]

    graph, results = run_passes(trace_graph(chain, ("q",), {})[0])
    table = graph.meta["level"]
    assert isinstance(table, Levels) and table._table is None
    by_prompt = {n.inputs[0].id: n for n in graph.nodes if n.op in ("llm", "llm_batch")}
    levels = sorted(table[n.out.id] for n in by_prompt.values())
    assert levels == [1, 2]  # "one" and "side" batched in wave 1, "two" in wave 2
    assert results[-1].stats.levels == 2 and "2 levels" in results[-1].summary
    assert all(v > 0 for v in table.values()) and len(table) == len(list(table))
    assert repr(table) == f"Levels({dict(table)!r})"

    fast = jit(chain)
    fast("q")
    assert fast.entry("q").graph.meta["level"]._table is None


def test_the_estimate_is_worked_out_when_first_read_and_jit_reads_only_its_critical_path():
    import dataclasses
    import pickle

    from ember import jit
    from ember.passes import Estimate, estimate
    from ember.passes.estimate import LazyEstimate

    def chain(q):
        a = models("sim", f"one: {q}")
        return [models("sim", f"two: {a.text}").text, models("sim", f"side: {q}").text]

    graph, results = run_passes(trace_graph(chain, ("q",), {})[0], latency=1.0)
    lazy = graph.meta["estimate"]
    assert isinstance(lazy, LazyEstimate) and lazy._value is None
    assert lazy.critical_path_seconds == 2.0 and lazy._value is None  # known already
    eager = estimate(graph, latency=1.0)
    assert lazy.requests == 2 and lazy._value is not None  # "one" + "side" batched, "two"
    assert lazy == eager and eager == lazy and hash(lazy) == hash(eager)
    assert repr(lazy) == repr(eager) and str(lazy) == str(eager)
    copy = pickle.loads(pickle.dumps(lazy))
    assert type(copy) is Estimate and copy == eager
    changed = dataclasses.replace(lazy, requests=7)
    assert type(changed) is Estimate and changed == dataclasses.replace(eager, requests=7)
    assert dataclasses.asdict(lazy) == dataclasses.asdict(eager)
    assert lazy != Estimate() and (lazy == "an estimate") is False
    assert "2 requests" in results[-1].summary and "critical path 2.00 s" in str(results[-1])
    with pytest.raises(ValueError, match="1 inputs, got 2 example values"):
        run_passes(trace_graph(chain, ("q",), {})[0], inputs=["a", "b"])

    fast = jit(chain)
    fast("q")
    assert fast.entry("q").graph.meta["estimate"]._value is None  # never resolved


def test_group_caps_split_groups_and_never_leave_a_group_of_one():
    def samples(q):
        return [models("sim", "same prompt", temperature=0.7).text for _ in range(5)] + \
            [models("sim", f"{i}: {q}").text for i in range(3)]

    graph = trace_graph(samples, ("q",), {})[0]
    out, stats = fuse(graph, max_n=2, max_batch=1)
    check_graph(out)
    ns = sorted(n.param("n") for n in out.nodes if n.op == "llm")
    assert ns == [1, 1, 1, 1, 2, 2]  # 5 samples: two pairs and one left; 3 calls unbatched
    assert stats.batches == 0 and stats.sampled_groups == 2 and stats.sampled_calls == 4
    out, stats = fuse(graph, max_n=4, max_batch=2)
    # a group of four and one sample left; of the 3 other calls a pair and one left
    assert sorted(n.param("n") for n in out.nodes if n.op == "llm") == [1, 1, 4]
    assert stats.batches == 1 and stats.batched_calls == 2


def _call_sizes(graph):
    """n of each llm node (negative) and members of each llm_batch, sorted."""
    return sorted(len(n.inputs) // 2 if n.op == "llm_batch" else -n.param("n")
                  for n in graph.nodes if n.op.startswith("llm"))


def test_calls_waiting_on_one_n_group_share_its_frontier():
    def app(q):
        votes = [models("sim", f"vote: {q}", temperature=0.7) for _ in range(2)]
        both = f"{votes[0].text} | {votes[1].text}"
        return [models("sim", f"a: {both}").text, models("sim", f"b: {both}").text,
                models("sim", f"c: {votes[0].text}").text]

    graph = cse(trace_graph(app, ("q",), {})[0])[0]
    out, stats = fuse(graph)
    check_graph(out)
    # the votes are one request (n=2): a and b wait on both, c on one, all on that request
    assert _call_sizes(out) == [-2, 3] and stats.batched_calls == 3


def test_a_frontier_over_the_cap_is_opaque_and_equal_frontiers_batch():
    def app(q):
        many = [models("sim", f"{i}: {q}").text for i in range(65)]
        big, few = "\n".join(many), "\n".join(many[:3])
        return [models("sim", f"x: {big}").text, models("sim", f"y: {big}").text,
                models("sim", f"u: {few}").text, models("sim", f"v: {few}").text,
                models("sim", f"w: {few}", system=f"s: {big}").text]

    graph = cse(trace_graph(app, ("q",), {})[0])[0]
    out, _ = fuse(graph)
    check_graph(out)
    # 65 first-wave calls: a batch of 64 and one left; u and v wait on the same 3 calls;
    # x and y wait on 65 (over the cap of 64): opaque, so never batched with anything,
    # and w too (its system prompt's frontier is opaque: it absorbs the prompt's)
    assert _call_sizes(out) == [-1, -1, -1, -1, 2, 64]


def test_a_rewrite_drops_the_old_shape_s_analyses_and_keeps_the_rest():
    from ember.passes import dce

    def app(q):
        models("sim", f"unused: {q}")
        return [models("sim", f"{i}: {q}").text for i in range(2)]

    graph = run_passes(trace_graph(app, ("q",), {})[0])[0]
    assert {"estimate", "level", "priority", "removed"} <= set(graph.meta)
    first = graph.nodes[0]
    graph.nodes.append(first.replace(out=Var(first.out.type)))  # unused: dce drops it
    check_graph(graph)
    again = dce(graph)[0]
    assert set(again.meta) == {"removed", "read"} and len(again.meta["removed"]) == 3
