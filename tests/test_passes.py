"""Compiler passes on hand-built graphs, plus a property test on random graphs."""

from __future__ import annotations

import hashlib
import math
import warnings
from collections import namedtuple
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ember import providers
from ember.backends.policy import CallOptions, RetryPolicy
from ember.ir import AnyT, Graph, Lit, ListT, Node, ResponseT, Str, Var, check_graph
from ember.ir.ops import OPS, is_effectful
from ember.providers import sim
from ember.passes import (DEFAULT_PASSES, Estimate, count_tokens, cse, dce, estimate, fuse,
                          level_of, priority_of, run_passes, schedule)
from ember.passes.dce import count_calls
from ember.passes.estimate import request_seconds

SIM, OAI, ANT = "sim", "openai/gpt-4o-mini", "anthropic/claude-3-5-haiku-latest"
CAPS = {"sim": (True, True), "openai": (True, False), "anthropic": (False, False)}  # n, batch
OPTS = CallOptions()


def _key(a):
    return ("v", a.id) if isinstance(a, Var) else ("l", type(a), a)


class G:
    """A tiny graph builder: b = G(); r = b.llm("hi"); g = b.graph(r)."""

    def __init__(self, n_inputs: int = 1) -> None:
        self.inputs = [Var(Str) for _ in range(n_inputs)]
        self.nodes: list[Node] = []
        self.samples: dict[tuple, int] = {}

    def add(self, op, inputs, params, type_):
        out = Var(type_)
        self.nodes.append(Node(op, [a if isinstance(a, (Var, Lit)) else Lit(a) for a in inputs],
                               params, out, f"prog.py:{len(self.nodes) + 1}"))
        return out

    def llm(self, prompt, model=SIM, *, system=None, sampled=False, max_tokens=None, opts=OPTS):
        req = (("max_tokens", max_tokens),) * bool(max_tokens) + (("temperature", 0.7 * sampled),)
        p = {"model": model, "params": req, "n": 1, "options": opts, "deterministic": not sampled}
        if sampled:
            k = (model, _key(prompt), _key(system), req)
            p["sample"] = self.samples.get(k, 0)
            self.samples[k] = p["sample"] + 1
        return self.add("llm", [prompt, system], p, ResponseT)

    def fmt(self, *parts):  # fmt("Q: ", v, "!") is f"Q: {v}!"
        ins = [p for p in parts if not isinstance(p, str)]
        segs = tuple("".join(p if isinstance(p, str) else "\0" for p in parts).split("\0"))
        return self.add("format", ins, {"segments": segs, "specs": ("",) * len(ins)}, Str)

    def text(self, r):
        return self.add("attr", [r], {"name": "text"}, Str)

    def strip(self, v):
        return self.add("method", [v], {"name": "strip"}, Str)

    def pack(self, *vs):  # a list, then one item of it
        types = {v.type if isinstance(v, Var) else Str for v in vs}
        elem = types.pop() if len(types) == 1 else AnyT
        lst = self.add("pack", vs, {"kind": "list"}, ListT(elem))
        return lst, lambda key: self.add("getitem", [lst], {"key": key}, lst.type.elem)

    def effect(self, v):  # an effectful ember.op call
        return self.add("call", [v], {"fn": repr, "effectful": True}, AnyT)

    def graph(self, *outs):
        return Graph(list(self.inputs), list(self.nodes),
                     [o if isinstance(o, (Var, Lit)) else Lit(o) for o in outs])


def ops(g):
    return [n.op for n in g.nodes]


def llm_calls(g):
    return sum(OPS[n.op].calls_model for n in g.nodes)


def run(pass_, g, **kw):
    """Run a pass; check it left its input alone and produced a well-formed graph."""
    def snap():
        return [(n.op, n.inputs, n.params, n.out, dict(n.meta)) for n in g.nodes], g.outputs[:]
    before = snap()
    out, stats = pass_(g, **kw)
    assert snap() == before, "a pass mutated its input graph"
    return check_graph(out), stats


def test_provider_capabilities_as_the_passes_assume():
    assert {k: (providers.get(k).supports_n, providers.get(k).supports_batch) for k in CAPS} == CAPS


def test_dce_removes_dead_calls_and_their_inputs():
    b = G()
    keep = b.llm(b.fmt("Q: ", b.inputs[0]))
    b.llm(b.fmt("dead: ", b.inputs[0]))
    g, stats = run(dce, b.graph(keep))
    assert ops(g) == ["format", "llm"] and g.outputs == [keep]
    assert (stats.removed_nodes, stats.removed_calls) == (2, 1)
    assert stats.summary == "dce: removed 1 llm call, 2 nodes"
    b = G()  # effectful nodes stay, with what they need
    r = b.llm(b.fmt("log: ", b.inputs[0]))
    b.effect(b.text(r))
    b.llm("dead")
    g, stats = run(dce, b.graph("const"))
    assert ops(g) == ["format", "llm", "attr", "call"]
    assert stats.removed_calls == 1 and stats.kept_effectful == 1
    assert is_effectful(g.nodes[-1])


# ---- cse ------------------------------------------------------------------------------
def test_cse_merges_identical_deterministic_nodes_only():
    b = G()
    r1 = b.llm(b.fmt("Q: ", b.inputs[0]))
    r2 = b.llm(b.fmt("Q: ", b.inputs[0]))
    j = b.llm(b.fmt(b.text(r1), " vs ", b.text(r2)))
    g, stats = run(cse, b.graph(j, r2))
    assert ops(g) == ["format", "llm", "attr", "format", "llm"]
    assert (stats.merged_nodes, stats.merged_calls) == (3, 1)
    assert g.outputs == [j, r1] and g.nodes[3].inputs == (g.nodes[2].out, g.nodes[2].out)
    assert stats.summary == "cse: merged 1 llm call, 3 nodes"
    b = G()  # never: sampled calls, effectful nodes, literals of different types
    s = [b.llm("poem", sampled=True) for _ in range(3)]
    e = [b.effect(b.inputs[0]) for _ in range(2)]
    lits = [b.fmt(b.add("pack", [v], {"kind": "list"}, ListT(AnyT))) for v in (1, True, 1.0)]
    twin = b.add("llm", b.nodes[0].inputs, b.nodes[0].params, ResponseT)  # even same sample
    g, stats = run(cse, b.graph(*s, *e, *lits, twin))
    assert llm_calls(g) == 4 and g.count("call") == 2 and g.count("pack") == 3
    assert stats.merged_nodes == 0 and stats.summary == "cse: nothing merged"
    b = G()  # deterministic calls differing in model, params or system stay apart
    rs = [b.llm("x"), b.llm("x", OAI), b.llm("x", max_tokens=5), b.llm("x", system="terse"),
          b.llm("x")]
    g, stats = run(cse, b.graph(*rs))
    assert llm_calls(g) == 4 and g.outputs[4] is rs[0]


# ---- fuse -----------------------------------------------------------------------------
@pytest.mark.parametrize("model", [SIM, OAI])
def test_fuse_sampled_calls_into_one_n_request_where_the_provider_has_n(model):
    b = G()
    p = b.fmt("Idea for ", b.inputs[0])
    s = [b.llm(p, model, sampled=True) for _ in range(3)]
    g, stats = run(fuse, b.graph(b.pack(*s)[0]))
    assert ops(g) == ["format", "llm", "getitem", "getitem", "getitem", "pack"]
    n = g.nodes[1]
    assert n.param("n") == 3 and n.out.type == ListT(ResponseT) and n.param("sample") == 0
    assert [x.param("key") for x in g.nodes[2:5]] == [0, 1, 2]
    assert [x.out for x in g.nodes[2:5]] == s  # getitem i defines the i-th sampled call
    assert n.meta["locs"] == ("prog.py:2", "prog.py:3", "prog.py:4")
    assert (stats.sampled_groups, stats.sampled_calls) == (1, 3)
    assert stats.summary == "fuse: 3 sampled calls -> 1 n-request"
    b = G()  # anthropic has no n: the calls stay apart
    s = [b.llm("poem", ANT, sampled=True) for _ in range(3)]
    g, stats = run(fuse, b.graph(*s), batch=False)
    assert ops(g) == ["llm"] * 3 and stats.unfused_no_n == 3
    g, stats = run(fuse, b.graph(*s))  # batch fusion still dispatches them together
    assert ops(g) == ["llm_batch", "getitem", "getitem", "getitem"]
    assert g.nodes[0].param("deterministic") == (False, False, False)


def test_fuse_batches_independent_calls_and_keeps_apart_what_differs():
    b = G()
    rs = [b.llm("a", sampled=True), b.llm("b", sampled=True),
          b.llm("a", sampled=True, max_tokens=9), b.llm("a"), b.llm("a")]
    g, stats = run(fuse, b.graph(*rs), batch=False)  # n: same prompt, params and sampling
    assert llm_calls(g) == 5 and stats.sampled_groups == 0
    other, b = CallOptions().with_(retry=RetryPolicy(max_attempts=5)), G()
    g, stats = run(fuse, b.graph(b.llm("a"), b.llm("b", opts=other)))  # batch: same options
    assert stats.batches == 0 and llm_calls(g) == 2
    b = G()  # independent calls with different prompts batch
    rs = [b.llm(b.fmt(f"Q{i}: ", b.inputs[0])) for i in range(4)] + [b.llm("x", OAI)]
    g, stats = run(fuse, b.graph(*rs))
    assert g.count("llm_batch") == 1 and g.count("llm") == 1 and g.count("getitem") == 4
    batch = next(n for n in g.nodes if n.op == "llm_batch")
    assert len(batch.inputs) == 8 and batch.param("deterministic") == (True,) * 4
    assert batch.param("model") == SIM and batch.out.type == ListT(ResponseT)
    assert stats.summary == "fuse: 4 calls -> 1 llm_batch"
    g, _ = run(fuse, b.graph(*rs), batch=False)
    assert g.count("llm_batch") == 0 and llm_calls(g) == 5
    b = G()
    rs = [b.llm(f"q{i}") for i in range(7)]
    g, stats = run(fuse, b.graph(*rs), max_batch=3)  # capped: 3 + 3, one left alone
    assert stats.batches == 2 and stats.batched_calls == 6 and llm_calls(g) == 3


def test_fuse_ready_mode_never_lock_steps_independent_chains():
    b = G()
    outs = []
    for i in range(2):
        first = b.llm(b.fmt(f"chain {i}: ", b.inputs[0]))
        outs.append(b.llm(b.fmt("more: ", b.text(first))))
    g, stats = run(fuse, b.graph(*outs))  # only the first steps wait on nothing
    assert stats.batches == 1 and llm_calls(g) == 3
    g, stats = run(fuse, b.graph(*outs), batch="level")  # by depth: lock-step waves
    assert stats.batches == 2 and llm_calls(g) == 2
    b = G()  # a fan-out over one answer batches, moving a member's prompt up
    items = b.llm("list three topics")
    a = b.llm(b.fmt("explain ", b.text(items)))
    used = b.strip(b.text(a))  # a user of `a` placed before the other member's prompt
    c = b.llm(b.fmt("critique ", b.text(items)))
    g, stats = run(fuse, b.graph(used, c))
    assert stats.batches == 1 and llm_calls(g) == 2
    assert [n.out for n in g.nodes].index(a) < [n.out for n in g.nodes].index(used)


# ---- schedule and estimate ---------------------------------------------------------------
def test_schedule_levels_priorities_and_estimate():
    b = G()
    first = b.llm(b.fmt("Q: ", b.inputs[0]))
    second = b.llm(b.fmt("more: ", b.text(first)))
    side = b.llm("side")
    src = b.graph(second, side)
    g, stats = run(schedule, src, latency=1.0)
    nodes = {n.out.id: n for n in g.nodes}
    assert [level_of(g, nodes[v.id]) for v in (first, second, side)] == [1, 2, 1]
    assert [priority_of(g, nodes[v.id]) for v in (first, second, side)] == [2.0, 1.0, 1.0]
    assert g.nodes[0].op == "format" and level_of(g, g.nodes[0]) == 0
    assert priority_of(g, g.nodes[0]) == 0.0  # priorities order model calls only
    assert g.nodes == src.nodes and level_of(src, src.nodes[0]) is None
    est = g.meta["estimate"]
    assert isinstance(est, Estimate) and est.critical_path_seconds == 2.0 and est.requests == 3
    assert stats.summary == "schedule: 2 levels, 3 requests, critical path 2.00 s"
    assert not src.meta and priority_of(src, src.nodes[0]) == 0.0  # the input is untouched


def test_estimate_by_hand_on_sim():
    b = G()
    r = b.llm("x" * 400, max_tokens=100)  # 100 tokens + 4 per message
    j = b.llm(b.fmt("Rate: ", b.text(r)), max_tokens=100)
    e = estimate(b.graph(j), latency=0.5)
    # second prompt: 1.5 tokens of "Rate: " + the first answer, 25 (typical) to 100 (worst)
    assert (e.requests, e.calls, e.completions) == (2, 2, 2)
    assert (e.input_tokens_min, e.input_tokens) == (104 + 27 + 4, 104 + 102 + 4)
    assert e.input_tokens_max == e.input_tokens  # (named like output_tokens_max too)
    assert (e.output_tokens_min, e.output_tokens_max) == (50, 200)
    assert e.cost_min == pytest.approx((135 * 0.15 + 50 * 0.60) / 1e6)
    assert e.cost_max == pytest.approx((210 * 0.15 + 200 * 0.60) / 1e6)
    assert e.critical_path_seconds == 1.0 and e.unpriced == ()
    assert "2 requests (2 llm calls, 2 completions)" in str(e) and "1.00 s" in str(e)


def test_a_worst_case_critical_path_says_so():
    """A hosted model's request is timed at its longest answer before a run (10.6 s for
    1,024 tokens): the estimate printed that path bare, like sim's measured latency."""
    b = G()
    graph = b.graph(b.llm(b.text(b.llm("hi", OAI)), OAI))
    hosted = estimate(graph)
    assert hosted.critical_path_worst_case and hosted.critical_path_seconds > 20
    assert "(worst case: every answer as long as allowed)" in str(hosted)
    scheduled = schedule(graph)[0].meta["estimate"]  # (the lazy one jit and inspect read)
    assert scheduled.critical_path_worst_case and str(scheduled) == str(hosted)
    b2 = G()
    on_sim = b2.graph(b2.llm("hi"))
    for e in (estimate(graph, latency=0.5), estimate(on_sim)):
        assert not e.critical_path_worst_case and "worst case: every" not in str(e)


def test_estimate_inputs_fusion_latency_prices_and_tokens(monkeypatch):
    b = G()
    p = b.fmt("Q: ", b.inputs[0])  # 3 chars + the example input
    s = [b.llm(p, sampled=True) for _ in range(3)]
    g, _ = fuse(b.graph(*s))
    e = estimate(g, inputs=["y" * 37])
    assert (e.requests, e.calls, e.completions) == (1, 1, 3)  # n=3: one request, one prompt
    assert e.input_tokens == 10 + 4 and e.output_tokens_max == 3 * 128
    assert estimate(g).input_tokens == math.ceil(0.75 + 100) + 4  # default input size
    b = G()  # without n or batch support every completion is a request
    s = [b.llm("poem", ANT, sampled=True, max_tokens=50) for _ in range(3)]
    g, _ = fuse(b.graph(*s))  # anthropic: an llm_batch dispatched as 3 requests
    e = estimate(g)
    assert (e.requests, e.completions, e.input_tokens) == (3, 3, 3 * (1 + 4))
    assert e.critical_path_seconds == pytest.approx(0.4 + 0.01 * 50)
    assert e.cost_max == pytest.approx((15 * 0.80 + 150 * 4.00) / 1e6)
    monkeypatch.setattr(sim._config, "latency", ("uniform", 0.1, 0.3))
    b = G()
    e = estimate(b.graph(b.llm(b.fmt("x", b.text(b.llm("hi"))))))
    assert e.critical_path_seconds == pytest.approx(0.4)  # two calls of 0.2 s (the mean)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "No price known" (warned once per process)
        e = estimate(b.graph(b.llm("hi", "openai/my-finetune")))
    assert e.cost_min is None and e.cost_max is None and e.unpriced == ("openai/my-finetune",)
    assert "unknown" in str(e)
    assert count_tokens("abcd" * 10, "sim") == 10
    assert count_tokens("hello world", OAI) >= 2  # tiktoken when it loads, else ~4 chars


def test_count_tokens_takes_any_model_id(monkeypatch):
    """A bare OpenAI name was counted by characters, as a provider named 'gpt-4o-mini'."""
    import sys
    import types

    est = sys.modules["ember.passes.tokens"]
    words = types.SimpleNamespace(name="words", encode=lambda text, **_: text.split())
    fake = types.ModuleType("tiktoken")
    fake.encoding_for_model = lambda name: words
    monkeypatch.setitem(sys.modules, "tiktoken", fake)
    monkeypatch.setattr(est, "_tiktoken_ok", True)
    monkeypatch.setattr(est, "_encodings", {})
    text = "one two three four five six seven eight nine ten"
    for model in ("gpt-4o-mini", "openai:gpt-4o-mini", "openai/gpt-4o-mini"):
        assert count_tokens(text, model) == 10  # tiktoken's count (here: words)
    assert count_tokens(text, "claude-haiku-4-5") == count_tokens(text, "nonsense") == 12


def test_a_tiktoken_that_never_loads_falls_back_to_characters(monkeypatch):
    """tiktoken downloads an encoding on first use, with no time limit: behind a network
    that takes the connection and never answers, inspect hung for good."""
    import sys
    import threading
    import types

    est = sys.modules["ember.passes.tokens"]
    never = threading.Event()
    fake = types.ModuleType("tiktoken")
    fake.encoding_for_model = lambda name: never.wait()  # a download that never answers
    monkeypatch.setitem(sys.modules, "tiktoken", fake)
    monkeypatch.setattr(est, "_tiktoken_ok", True)
    monkeypatch.setattr(est, "_encodings", {})
    monkeypatch.setattr(est, "TIKTOKEN_TIMEOUT", 0.05)
    try:
        with pytest.warns(UserWarning, match="did not load its encoding"):
            assert count_tokens("abcd" * 10, "openai/gpt-4o") == 10  # ~4 chars per token
        assert count_tokens("abcd" * 10, "openai/gpt-4o") == 10  # remembered: no wait
    finally:
        never.set()


# ---- pipeline ---------------------------------------------------------------------------
def test_run_passes_reports_each_pass():
    b = G()
    p = b.fmt("Q: ", b.inputs[0])
    d = [b.llm(p), b.llm(p), b.llm("other")]
    s = [b.llm("poem", sampled=True) for _ in range(2)]
    b.llm("dead")
    g, results = run_passes(b.graph(*d, *s), verify=True)
    assert [r.name for r in results] == ["dce", "cse", "fuse", "schedule"]
    assert [(r.calls_before, r.calls_after) for r in results] == [(6, 5), (5, 4), (4, 2), (2, 2)]
    assert [(r.completions_before, r.completions_after) for r in results][-1] == (4, 4)
    assert sorted(ops(g)).count("getitem") == 4 and g.meta["estimate"].requests == 2
    assert str(results[0]).startswith("dce: removed 1 llm call, 1 node  [7 -> 6 nodes")
    _, results = run_passes(b.graph(*d, *s), batch=False, latency=1.0)
    assert results[-1].calls_after == 3
    with pytest.raises(TypeError, match="bogus"):
        run_passes(b.graph(*d), bogus=1)
    assert DEFAULT_PASSES == (dce, cse, fuse, schedule)


# ---- property test: random graphs, an interpreter with a fake deterministic model ------
@dataclass
class Resp:
    """A fake answer: text is a hash of model, prompt, params and sample index."""

    text: str
    _thunk = None  # the `method` impl reads .text of anything with a _thunk

    def __format__(self, spec):
        return format(self.text, spec)


Run = namedtuple("Run", "outputs effects requests completions samples")


def interpret(g, inputs, caps):
    """Evaluate what the outputs and effects need, in node order. Samples of one request
    are exchangeable (a pass may reorder identical sampled calls), so every sample of a
    request gets the same fake text; `samples` counts them, so merging sampled calls
    (fewer samples) is still caught."""
    need = {a.id for a in g.outputs if isinstance(a, Var)}
    for n in reversed(g.nodes):
        if n.out.id in need or is_effectful(n):
            need.add(n.out.id)
            need.update(a.id for a in n.inputs if isinstance(a, Var))
    env = {v.id: x for v, x in zip(g.inputs, inputs, strict=True)}
    counter, effects, reqs, done = {}, [], 0, 0

    def answer(model, prompt, system, params, det):
        key = repr((model, prompt, system, params))
        counter[key] = counter.get(key, 0) + (not det)
        return Resp(hashlib.sha1(f"{key}#{'det' if det else 'sampled'}".encode()).hexdigest())

    for n in g.nodes:
        if n.out.id not in need:
            continue
        vals = [env[a.id] if isinstance(a, Var) else a.value for a in n.inputs]
        if n.op in ("llm", "llm_batch"):
            model, params, det = n.param("model"), n.param("params"), n.param("deterministic")
            calls = ([(*vals, det)] * n.param("n") if n.op == "llm"
                     else list(zip(vals[::2], vals[1::2], det, strict=True)))
            out = [answer(model, p, sys, params, d) for p, sys, d in calls]
            env[n.out.id] = out[0] if n.op == "llm" and len(out) == 1 else out
            has_n, has_batch = caps[model.split("/")[0]]
            one = len(out) == 1 or (has_n if n.op == "llm" else has_batch)
            reqs, done = reqs + (1 if one else len(out)), done + len(out)
        else:
            env[n.out.id] = OPS[n.op].impl(n, *vals)
            if is_effectful(n):
                effects.append(repr(vals))
    outs = [env[a.id] if isinstance(a, Var) else a.value for a in g.outputs]
    return Run(outs, sorted(effects), reqs, done, sum(counter.values()))


@st.composite
def graphs(draw, builder):
    """Chains, fan-outs, duplicate deterministic calls, identical sampled calls, dead
    calls, packs and getitems, effectful calls; random outputs leave some calls dead."""
    b = builder(draw(st.integers(1, 2)))
    strs = list(b.inputs) + ["lit"]
    made = []
    pick = lambda pool: draw(st.sampled_from(pool))  # noqa: E731
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from("call call call dup dup samples fmt pack effect".split()))
        if kind in ("call", "samples") or (kind == "dup" and not made):
            prompt = pick(strs) if draw(st.booleans()) else b.fmt("ask ", pick(strs))
            args = (prompt, pick([SIM, SIM, OAI, ANT]))
            kw = {"sampled": kind == "samples" or pick([False, False, True]),
                  "system": pick([None, "terse"]), "max_tokens": pick([None, None, 64])}
            for _ in range(draw(st.integers(2, 4)) if kind == "samples" else 1):
                r = b.llm(*args, **kw)
                made.append((args, kw))
                strs.append(b.text(r) if draw(st.booleans()) else r)
        elif kind == "dup":
            args, kw = pick(made)
            strs.append(b.llm(*args, **kw))
        elif kind == "fmt":
            strs.append(b.fmt(pick(strs), " and ", b.strip(pick(strs)) if
                              draw(st.booleans()) else pick(strs)))
        elif kind == "pack":
            items = [pick(strs) for _ in range(draw(st.integers(1, 3)))]
            strs.append(b.pack(*items)[1](draw(st.integers(0, len(items) - 1))))
        else:
            b.effect(pick(strs))
    keep = draw(st.lists(st.booleans(), min_size=len(strs), max_size=len(strs)))
    outs = [v for v, k in zip(strs, keep) if k] or [strs[-1]]
    return b.graph(*outs), [f"input {i}" for i in range(len(b.inputs))]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=graphs(G), batch=st.sampled_from(["ready", "level", False]),
       max_batch=st.sampled_from([2, 64]))
def test_passes_preserve_results_and_never_add_requests(case, batch, max_batch):
    g, inputs = case
    cur, before = g, interpret(g, inputs, CAPS)
    for p in DEFAULT_PASSES:
        kw = {"batch": batch, "max_batch": max_batch} if p is fuse else {}
        cur, _ = run(p, cur, **kw)
    after = interpret(cur, inputs, CAPS)
    assert (after.outputs, after.effects) == (before.outputs, before.effects)
    assert after.requests <= before.requests and after.completions <= before.completions
    assert after.samples == before.samples  # sampled calls are never merged
    assert dce(cur)[1].removed_nodes == 0  # no pass leaves dead nodes behind
    est = cur.meta["estimate"]  # the static estimate counts what the interpreter sent
    assert (est.requests, est.completions) == (after.requests, after.completions)
    assert est == estimate(cur)  # schedule's deferred estimate is the eager one
    # the critical path is the longest chain of request latencies (oracle: ready times
    # computed forward; schedule finds it backward, as the highest priority)
    seconds, ready = request_seconds(), {}
    for n in cur.nodes:
        start = max([ready.get(a.id, 0.0) for a in n.inputs if isinstance(a, Var)], default=0.0)
        ready[n.out.id] = start + (seconds(n) if n.op in ("llm", "llm_batch") else 0.0)
    assert est.critical_path_seconds == pytest.approx(max(ready.values(), default=0.0))
    assert all(level_of(cur, n) is not None for n in cur.nodes)
    calls = {n.out.id for n in cur.nodes if n.op in ("llm", "llm_batch")}
    assert set(cur.meta["priority"]) == calls  # a priority for each model call
    # the pipeline's counts come from each pass's stats; verify=True checks them
    verified, results = run_passes(g, verify=True, batch=batch, max_batch=max_batch)
    assert (results[-1].calls_after, results[-1].completions_after) == count_calls(cur)
    # without verify, the default passes' counts are worked out on first read: the same
    # graph (fused vars are new: compared as printed), meta and reports
    final, deferred = run_passes(g, batch=batch, max_batch=max_batch)
    assert str(check_graph(final)) == str(verified) == str(cur)
    assert [final.meta.get(k) for k in ("merged", "removed")] == \
        [verified.meta.get(k) for k in ("merged", "removed")]
    assert [str(r).rsplit(",", 1)[0] for r in deferred] == \
        [str(r).rsplit(",", 1)[0] for r in results]  # (all but the time)
    assert [(r.calls_before, r.calls_after, r.completions_before, r.completions_after)
            for r in deferred] == [(r.calls_before, r.calls_after, r.completions_before,
                                    r.completions_after) for r in results]



@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=graphs(G), max_batch=st.sampled_from([2, 64]))
def test_ready_batches_move_producers_up_as_the_general_toposort_does(case, max_batch):
    """"ready" batching moves a later member's producers in front of its batch while
    rewriting (no position table, no second ordering sweep); the general `toposort`
    of the rewritten nodes is the oracle: the same nodes in the same order."""
    import importlib

    fuse_mod = importlib.import_module("ember.passes.fuse")
    g = cse(dce(case[0])[0])[0]
    fast, stats = run(fuse, g, max_batch=max_batch)
    rewrite = fuse_mod._rewrite
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fuse_mod, "_rewrite", lambda nodes, n, b, at=None: rewrite(nodes, n, b))
        general, _ = run(fuse, g, max_batch=max_batch)
    assert str(fast) == str(general)  # (fused nodes' vars are new: compared as printed)


def test_a_batch_moves_a_chain_of_local_ops_up_producers_first():
    x = Var(Str)
    fmt = (("segments", ("", "!")), ("specs", ("",)))
    p = (("deterministic", True), ("model", "sim"), ("n", 1), ("options", CallOptions()),
         ("params", ()))
    first = Node("llm", (x, Lit(None)), p, Var(ResponseT))
    a = Node("format", (x,), fmt, Var(Str))
    b = Node("format", (a.out,), fmt, Var(Str))
    second = Node("llm", (b.out, Lit(None)), p, Var(ResponseT))
    g = Graph([x], [first, a, b, second], [first.out, second.out])
    out, stats = run(fuse, g)
    assert stats.batches == 1 and [n.op for n in out.nodes] == \
        ["format", "format", "llm_batch", "getitem", "getitem"]
    assert out.nodes[0] is a and out.nodes[1] is b  # producers first, then the batch


# ---------------------------------------------------------------- vmap's batching transform
from ember.ir import Batched  # noqa: E402
from ember.ir.graph import GraphError  # noqa: E402
from ember.passes.vmap import (VmapStats, batch_graph, check_batched, hoisted_nodes,  # noqa: E402
                               map_estimate, unbatch)


def per_element(g: Graph, mapped: list[bool]) -> list[bool]:
    """The oracle: a node runs once per element when an input does, or when the plain
    map would give each element its own outcome (a sample, an effect)."""
    per = {v.id for v, m in zip(g.inputs, mapped) if m}
    flags = []
    for n in g.nodes:
        det = n.param("deterministic")  # llm_batch: one flag per member
        own = (n.op.startswith("llm") and not all(det if isinstance(det, tuple) else [det])
               ) or is_effectful(n)
        hit = own or any(isinstance(a, Var) and a.id in per for a in n.inputs)
        if hit:
            per.add(n.out.id)
        flags.append(hit)
    return flags


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=graphs(G), data=st.data(), size=st.integers(1, 1000))
def test_batching_transform_follows_the_rules_and_verifies(case, data, size):
    g, _ = case
    g, _ = run_passes(g)
    mapped = data.draw(st.lists(st.booleans(), min_size=len(g.inputs), max_size=len(g.inputs)))
    b, stats = batch_graph(g, mapped, size)
    check_batched(b)
    check_graph(unbatch(b))
    expected = per_element(g, mapped)
    assert [n.param("lanes") == size for n in b.nodes] == expected
    assert [isinstance(n.out.type, Batched) for n in b.nodes] == expected
    assert hoisted_nodes(g, mapped) == [i for i, e in enumerate(expected) if not e]
    # the element graph comes back: same ops, params and wiring
    u = unbatch(b)
    assert [(n.op, n.params, n.loc) for n in u.nodes] == [(n.op, n.params, n.loc) for n in g.nodes]
    pos = {v.id: i for i, v in enumerate([*g.inputs, *(n.out for n in g.nodes)])}
    upos = {v.id: i for i, v in enumerate([*u.inputs, *(n.out for n in u.nodes)])}
    wiring = lambda graph, p: [[p.get(a.id) if isinstance(a, Var) else a for a in n.inputs]  # noqa: E731
                               for n in graph.nodes]
    assert wiring(u, upos) == wiring(g, pos)
    calls = [n.op.startswith("llm") for n in g.nodes]
    assert stats.hoisted_calls == sum(c and not e for c, e in zip(calls, expected))
    assert stats.batched_calls == sum(c and e for c, e in zip(calls, expected))
    assert map_estimate(g, mapped, size, None).requests == stats.requests


def test_batching_hoists_shared_deterministic_calls_and_keeps_samples_per_element():
    b = G(2)  # input 0 mapped, input 1 broadcast
    rubric = b.llm(b.fmt("rubric in ", b.inputs[1], " style"))
    votes = [b.llm(b.fmt("vote"), sampled=True) for _ in range(2)]
    b.effect(b.inputs[1])
    grade = b.llm(b.fmt("", b.text(rubric), " grade ", b.inputs[0]))
    g = b.graph(b.text(grade), *votes)
    batched, stats = batch_graph(g, [True, False], 50)
    # hoisted: the rubric's format and call, its .text, and the two constant "vote" formats
    assert stats == VmapStats(50, hoisted_calls=1, batched_calls=3, hoisted_nodes=5,
                              batched_nodes=len(g.nodes) - 5, hoisted_requests=1,
                              lane_requests=3)
    assert stats.requests == 151
    assert "1 llm call hoisted (made once), 3 llm calls batched per element" in str(stats)
    assert "151 requests in all" in str(stats)
    assert str(batched.inputs[0].type) == "Str[*]" and str(batched.inputs[1].type) == "Str"
    est = map_estimate(g, [True, False], 50, 10)
    assert (est.requests, est.calls) == (151, 151)
    one = estimate(g)
    assert est.critical_path_seconds == pytest.approx(
        one.critical_path_seconds + 4 * (one.critical_path_seconds - 0), rel=0.5)
    with pytest.raises(GraphError, match="2 mapped flags for 3 inputs"):
        batch_graph(G(3).graph("x"), [True, False], 2)


def test_check_batched_rejects_a_wrong_batching():
    b = G(1)
    r = b.llm(b.fmt("about ", b.inputs[0]))
    g = b.graph(b.text(r))
    batched, _ = batch_graph(g, [True], 4)
    bad = batched.nodes[1]
    batched.nodes[1] = Node(bad.op, bad.inputs, {k: v for k, v in bad.params if k != "lanes"},
                            Var(ResponseT), bad.loc)
    with pytest.raises(GraphError):
        check_batched(batched)
    sizes, _ = batch_graph(g, [True], 4)
    first = sizes.nodes[0]
    sizes.nodes[0] = Node(first.op, first.inputs, dict(first.params, lanes=5), first.out,
                          first.loc)
    with pytest.raises(GraphError, match="disagree on the batch size"):
        check_batched(sizes)


def test_the_printed_estimate_reads_its_low_end_as_typical_not_as_a_floor():
    """Printed as "160 - 640 (worst case)", the range read as bounds, and short answers
    (JSON labels) came in under its low end."""
    import ember
    from ember import models

    def two(x):
        return models("sim", "Judge: " + models("sim", x).text).text

    text = str(ember.inspect(two, "hi").estimate)
    assert "output tokens  ~64 typical, up to 256" in text
    assert " - " not in text
