"""jit against the oracle: eager Python on the `sim` model."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import pytest

from servers import openai_server  # noqa: F401

import ember
from ember import jit, models, vmap
from ember.backends.record import recording
from ember.providers import sim


def run_both(fn, *args, **kwargs):
    """(eager result, jit result, eager requests, jit requests, jitted)."""
    with recording() as eager_rec:
        eager = fn(*args, **kwargs)
    fast = jit(fn, verify=True)
    with recording() as jit_rec:
        compiled = fast(*args, **kwargs)
    return eager, compiled, eager_rec.requests, jit_rec.requests, fast


# ---- the parallel idioms -------------------------------------------------------------
def experts_and_judge(question: str):
    opinions = [models("sim", f"Expert {i}: {question}") for i in range(5)]
    joined = "\n".join(o.text for o in opinions)
    return models("sim", f"Judge:\n{joined}")


def week1(doc: str):
    entities = models("sim", f"Extract the entities as a JSON list: {doc}").json()
    return [models("sim", f"Describe {e}") for e in entities]


def chains(items: list[str]):
    out = []
    for item in items:
        draft = models("sim", f"Draft about {item}")
        out.append(models("sim", f"Improve: {draft}"))
    return out


def map_reduce(chunks: list[str]):
    summaries = [models("sim", f"Summarize: {c}").text for c in chunks]
    return models("sim", "Combine:\n" + "\n".join(summaries)).text


@pytest.mark.parametrize("fn, arg, width", [
    (experts_and_judge, "why is the sky blue", 5),
    (week1, "Alice met Bob in Paris with Carol", None),
    (chains, ["a", "b", "c", "d"], 4),
    (map_reduce, [f"chunk {i}" for i in range(6)], 6),
])
def test_idioms_match_eager_and_overlap(fn, arg, width):
    sim.configure(latency=0.02)
    eager, compiled, eager_n, jit_n, _ = run_both(fn, arg)
    assert compiled == eager
    assert jit_n <= eager_n
    sim.reset_stats()
    jit(fn)(arg)
    expected = width if width is not None else len(eager)
    assert expected >= 2
    # independent calls were in flight together (sim counts requests, batches included)
    assert sim.stats().max_in_flight >= 1
    assert sim.stats().completions >= expected


def test_independent_calls_are_in_flight_together_without_batching(monkeypatch):
    """With batch fusion off, the five experts are five concurrent requests."""
    from ember import _jit

    real = _jit._compile

    def no_batch(graph, verify=False):
        from ember.passes import run_passes

        return run_passes(graph, verify=True, batch=False)

    monkeypatch.setattr(_jit, "_compile", no_batch)
    sim.configure(latency=0.05)
    jit(experts_and_judge)("q")
    assert sim.stats().max_in_flight == 5
    assert real is not no_batch


def test_week1_runs_in_two_rounds():
    fast = jit(week1)
    result = fast("Alice met Bob in Paris with Carol")
    assert result == week1("Alice met Bob in Paris with Carol")
    entry = fast.entry("Alice met Bob in Paris with Carol")
    assert entry.graph is None  # data-dependent: iterating a model's JSON
    assert any("iterating" in b.reason for b in entry.breaks)


# ---- reuse -----------------------------------------------------------------------------
def test_whole_graph_is_traced_once_per_signature():
    calls = []

    def analyze(text: str):
        calls.append(text)
        return models("sim", f"Analyze: {text}").text.strip()

    fast = jit(analyze)
    inputs = ["one", "two", "three"]
    assert [fast(t) for t in inputs] == [analyze(t) for t in inputs]
    entry = fast.entry("x")
    assert entry.traces == 1 and entry.calls == 3
    assert entry.graph is not None and entry.graph.count("llm") == 1
    # a new signature (a list instead of a str) traces again
    fast(["a", "b"]) if False else None
    assert len(fast.cache) == 1


def test_static_arguments_are_part_of_the_key():
    def f(text: str, k: int):
        return [models("sim", f"{i}: {text}").text for i in range(k)]

    fast = jit(f)
    assert fast("x", 2) == f("x", 2)
    assert fast("x", 3) == f("x", 3)
    assert len(fast.cache) == 2


# ---- soundness: value-dependent Python on model output ----------------------------------
def branch_re(x: str):
    r = models("sim", f"Classify {x}")
    if re.search(r"\[\d*[02468]\]", r.text):
        return "even:" + models("sim", f"Even follow-up {x}").text
    return "odd:" + r.text


def branch_len(x: str):
    r = models("sim", f"Describe {x}")
    s = f"{r}"  # a formatted answer reaching len(): the classic marker leak
    if len(s) > 150:
        return models("sim", f"Shorten: {r}").text
    return s


def branch_json(x: str):
    data = json.loads(models("sim", f"Rate {x}", response_format="json").text)
    if data["confidence"] > 0.75:
        return models("sim", f"Confident about {data['answer']}").text
    return data


def branch_in_eq(x: str):
    a = models("sim", f"A {x}")
    b = models("sim", f"B {x}")
    if "analysis" in a.text or a.text[:3] == b.text[:3]:
        return [a, b]
    return str(a).upper()


def branch_startswith(x: str):
    r = models("sim", f"S {x}")
    label = "low" if r.text.startswith(("[0", "[1", "[2", "[3")) else "high"
    return label + ":" + models("sim", f"{label}: {x}").text


@pytest.mark.parametrize("fn", [branch_re, branch_len, branch_json, branch_in_eq,
                                branch_startswith])
def test_branching_on_model_output_matches_eager_on_every_input(fn):
    fast = jit(fn, verify=True)
    inputs = [f"input {i}" for i in range(10)]
    eager = [fn(x) for x in inputs]
    assert [fast(x) for x in inputs] == eager
    # the inputs exercise more than one branch, so the test can tell branches apart
    shapes = {type(e).__name__ + (e[:4] if isinstance(e, str) else "") for e in eager}
    assert len(shapes) > 1


def test_leak_detection_makes_the_signature_strict(caplog):
    fast = jit(branch_len)
    with caplog.at_level(logging.INFO, logger="ember"):
        for i in range(4):
            assert fast(f"v{i}") == branch_len(f"v{i}")
    entry = fast.entry("v0")
    # the call the plan missed was never planned (the leak changed the branch): no
    # answer reached it in the plan, and no read went unseen, so every read is strict
    assert entry.graph is None and entry.strict and not entry.strict_at
    assert len([r for r in caplog.records if "planned strictly" in r.getMessage()]) == 1


def test_an_answer_kept_by_state_while_tracing_is_refused_not_sent():
    """State the function fills while jit traces it (an lru_cache on a helper, a lazily
    set attribute, a history list) catches placeholders: a TraceError naming the fix,
    never a placeholder sent to the provider or returned (before: both, silently)."""
    import functools

    @functools.lru_cache(maxsize=None)
    def rubric(subject):
        return models("sim", f"Write a grading rubric for {subject}").text

    def grade(essay):
        return models("sim", f"{rubric('math')}\nGrade: {essay}").text

    class Agent:
        persona = None

        def persona_text(self):
            if self.persona is None:
                self.persona = models("sim", "Describe a persona").text
            return self.persona

    history: list[str] = []

    def chat(user):
        answer = models("sim", "\n".join([*history, f"User: {user}"]))
        history.append(f"User: {user}\nBot: {answer.text}")
        return answer.text

    for fast, arg in ((jit(grade), "essay one"), (jit(Agent.persona_text), Agent()),
                      (jit(chat), "hi")):
        sim.reset_stats()
        with pytest.raises(ember.TraceError, match="placeholder.*lru_cache.*outside"):
            fast(arg)
        assert not any("\x02" in p for p in sim.stats().prompts)
    with pytest.raises(ember.TraceError, match="placeholder"):  # eager, later: the same
        grade("essay two")

    import dataclasses

    @dataclasses.dataclass
    class Graded:
        rubric: str

    @functools.lru_cache(maxsize=None)
    def criteria(subject):
        return models("sim", f"Criteria for {subject}").text

    with pytest.raises(ember.TraceError, match="placeholder"):  # inside a returned object
        jit(lambda essay: Graded(criteria("math")))("essay")


def test_a_parameter_given_as_int_then_float_is_one_setting():
    """temperature=0 in one call and 0.0 in another: the trace's call cache handed the
    second the first's params, so its graph's requests and its check run's had
    different keys, and the check run sent every call again (7 requests for 3)."""
    models("sim", "warm", temperature=0)  # (traced or not: the call cache is shared)
    jit(lambda x: models("sim", f"int {x}", temperature=0).text)("a")
    fast = jit(lambda x: [models("sim", f"{w} {x}", temperature=0.0).text for w in "ab"])
    sim.reset_stats()
    assert fast("q") == [models("sim", f"{w} q", temperature=0.0).text for w in "ab"]
    assert sim.stats().requests == 1 + 2  # the jitted batch, then eager's two


def test_parse_error_inside_function_behaves_as_eager():
    def careful(x: str):
        r = models("sim", f"Tell me about {x}")
        try:
            return r.json()
        except ember.ParseError as exc:
            return f"not json: {exc.text[:10]}"

    assert jit(careful)("cats") == careful("cats")


def test_bounded_loop_over_model_output():
    def loop(x: str):
        r = models("sim", f"Start {x}")
        for step in range(3):
            if "DONE" in r.text:
                break
            r = models("sim", f"Continue {step}: {r}")
        return r.text

    assert jit(loop)("go") == loop("go")


def test_traced_inputs_in_str_join_fall_back_to_concrete_strings():
    def joined(docs: list[str]):
        return models("sim", "Summarize:\n" + "\n".join(docs)).text

    fast = jit(joined)
    docs = ["alpha", "beta", "gamma"]
    assert fast(docs) == joined(docs)


def test_string_methods_and_concatenation_are_traced():
    def f(text: str):
        prompt = "Topic: " + text.strip().lower() + "!"
        return models("sim", prompt).text

    fast = jit(f, verify=True)
    assert fast("  Hello World ") == f("  Hello World ")
    assert fast("  Other  ") == f("  Other  ")
    assert fast.entry("x").graph is not None


def test_json_getitem_is_traced_without_break():
    def f(x: str):
        data = models("sim", f"Rate {x}", response_format="json").json()
        return models("sim", f"Answer was {data['answer']}").text

    fast = jit(f)
    assert fast("a") == f("a") and fast("b") == f("b")
    assert fast.entry("a").graph is not None


# ---- passes under jit ------------------------------------------------------------------
def test_dead_and_duplicate_calls_are_not_paid():
    def f(x: str):
        models("sim", f"Unused {x}")  # dead
        a = models("sim", f"Same {x}")
        b = models("sim", f"Same {x}")  # duplicate, deterministic on sim
        return a.text + b.text

    eager, compiled, eager_n, jit_n, _ = run_both(f, "q")
    assert compiled == eager
    assert (eager_n, jit_n) == (3, 1)


def test_sampled_calls_fuse_into_one_request_and_stay_distinct():
    def vote(x: str):
        return [models("sim", f"Guess {x}", temperature=0.9).text for _ in range(5)]

    with recording() as rec:
        answers = jit(vote)("q")
    assert rec.requests == 1 and sim.stats().completions == 5
    assert len(set(answers)) == 5


# ---- fullgraph, ember.op, errors -----------------------------------------------------------
def test_fullgraph_names_the_line_and_the_fix():
    def f(x: str):
        r = models("sim", x, response_format="json")
        if r.json()["confidence"] > 0.5:  # the break
            return r
        return None

    with pytest.raises(ember.TraceError) as info:
        jit(f, fullgraph=True)("hello")
    message = str(info.value)
    assert "test_jit.py" in message and "ember.op" in message
    line = f.__code__.co_firstlineno + 2
    assert f"test_jit.py:{line}" in message


def test_fullgraph_catches_a_leak_the_tracer_could_not_see():
    def f(x: str):
        r = models("sim", f"Describe {x}")
        if len(r.text.encode()) > 30:  # C code on a placeholder: invisible to the tracer
            return models("sim", f"Shorten: {r}").text
        return r.text

    with pytest.raises(ember.TraceError, match="could not see") as info:
        jit(f, fullgraph=True)("hello")
    assert f"test_jit.py:{f.__code__.co_firstlineno + 3}" in str(info.value)


def test_ember_op_is_one_node_and_no_break():
    @ember.op
    def word_count(text: str) -> int:
        return len(text.split())

    def f(x: str):
        r = models("sim", f"Write about {x}")
        n = word_count(r.text)
        return models("sim", f"Count was {n}").text

    fast = jit(f, verify=True)
    assert fast("a") == f("a") and fast("b") == f("b")
    entry = fast.entry("a")
    assert entry.graph is not None and entry.graph.count("call") == 1
    assert word_count("a b c") == 3


def test_errors_name_the_model_and_the_users_line():
    sim.configure(fail_on="POISON")

    def f(x: str):
        ok = models("sim", f"fine {x}")
        bad = models("sim", f"POISON {x}")
        return ok.text + bad.text

    with pytest.raises(ember.ProviderError) as info:
        jit(f)("q")
    message = str(info.value)
    assert "'sim'" in message and "test_jit.py" in message


# ---- def / async def / running loops ----------------------------------------------------------
def test_async_function():
    async def f(x: str):
        rs = [await ember.amodels("sim", f"Part {i}: {x}") for i in range(3)]
        return await ember.amodels("sim", "Merge " + " ".join(r.text for r in rs))

    eager = asyncio.run(f("z"))
    fast = jit(f)
    assert asyncio.run(fast("z")) == eager
    assert asyncio.run(fast("z")) == eager


def test_sync_jit_from_inside_a_running_loop():
    fast = jit(experts_and_judge)

    async def handler():
        return fast("inside a loop")

    assert asyncio.run(handler()) == experts_and_judge("inside a loop")


def test_nested_jit_traces_through():
    inner = jit(lambda x: models("sim", f"Inner {x}").text)

    def outer(x: str):
        return models("sim", f"Outer {inner(x)}").text

    fast = jit(outer)
    assert fast("q") == outer("q")
    assert fast.entry("q").graph.count("llm") == 2


def test_jit_of_wrapped_callables_keeps_the_wrapper():
    """jit(vmap(f)) maps (it traced f on the whole list: one wrong answer), and
    jit(timeout(jit(f))) keeps the timeout: a wrapper never takes the state of what it
    wraps (functools.wraps copied a Jitted's fn, cache and last_run onto it)."""
    def f(x: str):
        return models("sim", f"Summarize: {x}").text

    xs = ["a", "b", "c"]
    mapped = jit(ember.vmap(f))
    assert mapped(xs) == [f(x) for x in xs] == ember.vmap(f)(xs)
    assert mapped.last_run.requests == 1  # the three calls, batched in one graph
    limited = ember.timeout(jit(f), seconds=0.05)
    assert not hasattr(limited, "last_run") and not hasattr(limited, "cache")
    sim.configure(latency=0.5)
    with pytest.raises(ember.TimeoutError):
        jit(limited)("slow")
    assert ember.vmap(jit(f)).fn.__class__.__name__ == "Jitted"


@pytest.mark.parametrize("wrap,name", [
    (ember.jit, "jit"), (ember.vmap, "vmap"), (ember.op, "op"), (ember.cache, "cache"),
    (ember.retry, "retry"), (lambda f: ember.timeout(f, seconds=1), "timeout"),
    (ember.chain, "chain"), (ember.ensemble, "ensemble"),
])
def test_wrapping_something_that_is_not_a_function_fails_at_once(wrap, name):
    # (jit, vmap and op accepted it and failed at the first call, far from the mistake)
    with pytest.raises(TypeError, match=rf"^{name}\(\)"):
        wrap("gpt-4o-mini")


def test_a_config_object_is_keyed_by_its_fields_and_the_cache_is_bounded(monkeypatch):
    """A dataclass or pydantic argument was keyed by id(): mutated (or a new one at a
    freed one's address), it replayed the old graph, sending the old prompts: paid,
    then sent again by the check run."""
    import dataclasses

    import pydantic

    @dataclasses.dataclass
    class Config:
        style: str
        words: int = 10

    class Settings(pydantic.BaseModel):
        style: str

    def f(text, cfg):
        return models("sim", f"{cfg.style}: {text}").text

    fast = jit(f)
    for cfg in (Config("terse"), Settings(style="terse")):
        assert fast("x", cfg) == f("x", cfg)
        cfg.style = "verbose"  # the same object, changed
        sim.reset_stats()
        assert fast("x", cfg) == f("x", cfg)
        assert sim.stats().prompts == ["verbose: x"] * 2  # jit's one request, then eager's
    monkeypatch.setattr("ember._jit.MAX_SIGNATURES", 8)
    for words in range(20):
        fast("x", Config("terse", words))
    assert len(fast.cache) == 8


@pytest.mark.parametrize("decide", [
    lambda judge, views: "a" in judge, lambda judge, views: judge == "no",
    lambda judge, views: judge != "no", lambda judge, views: judge.startswith("["),
    lambda judge, views: judge.strip().lower().endswith("."),
    lambda judge, views: sorted(views)[0] < judge, lambda judge, views: judge in ["x", "y"],
    lambda judge, views: len(judge) > 20, lambda judge, views: sum(map(len, views)) > 100,
])
def test_deciding_on_an_answer_plans_exactly_and_stays_parallel(decide):
    """`in`, ==, <, len, startswith, endswith on an answer's text were done on its marker: the
    plan took the wrong branch (its calls paid, then sent again by the check run), and
    the signature turned strict, which plans a list of calls one at a time: every later
    call then took as long as eager Python (0.72 s against 0.31 s in the probe)."""
    def f(x: str):
        views = [models("sim", f"view {k}: {x}").text for k in range(5)]
        judge = models("sim", "judge: " + " | ".join(views)).text
        if decide(judge, views):
            return models("sim", f"deep {x}").text
        return judge

    expected, eager_requests = [], []
    for i in range(3):
        sim.reset_stats()
        expected.append(f(f"q{i}"))
        eager_requests.append(sim.stats().requests)  # 6 or 7, by the branch taken
    fast = jit(f)
    for i in range(3):
        sim.reset_stats()
        assert fast(f"q{i}") == expected[i]
        assert not fast.entry(f"q{i}").strict
        # the five views in one batch request, and nothing paid twice
        assert sim.stats().requests == eager_requests[i] - 4, sim.stats().prompts


@ember.op
def _word_count(text: str) -> int:
    return len(text.split())


@pytest.mark.parametrize("read", [
    lambda r: r.text, lambda r: f"{r}", lambda r: r.usage, lambda r: r.json(),
    lambda r: r.text.strip(), lambda r: _word_count(r.text),
])
def test_an_answer_python_read_is_not_dead(read):
    """dce removed a call whose answer the Python read but no output needed (a list of
    .text of which one is used): the check run, reading it again, fetched it alone and
    made the signature strict, so every later call ran its list of calls one by one.
    And a dead call (never read) made every function that had one strict too: the
    check run counted it as a call the plan had missed."""
    def f(x: str):
        models("sim", f"never read {x}")  # dead: never sent
        views = [read(models("sim", f"view {k}: {x}", response_format="json"))
                 for k in range(4)]
        return models("sim", f"judge: {views[0]}").text

    expected = f("q")
    fast = jit(f)
    for _ in range(2):
        sim.reset_stats()
        assert fast("q") == expected
        assert sim.stats().requests == 2  # the four views in one batch, then the judge
        assert not fast.entry("q").strict
        assert not [p for p in sim.stats().prompts if p.startswith("never")]
    assert jit(f, fullgraph=True)("q") == expected  # (the dead call raised TraceError)


def test_a_returned_answer_the_plan_missed_is_fetched_and_the_plan_dropped():
    import re as regex

    def f(x: str):
        r = models("sim", f"Say {x}")
        if regex.search(r"\.", r.text):  # C code reads a placeholder: the plan guesses no
            return models("sim", f"Yes {x}")  # returned unread: pending in the check run
        return models("sim", f"No {x}")

    fast = jit(f)
    assert fast("q") == f("q") and fast("q").text.startswith("[")
    # from then on the read the trace could not see (regex.search) is planned strictly,
    # and only that one (see test_strict_reads_are_only_those_c_code_took)
    entry = fast.entry("q")
    assert not entry.strict and entry.graph is None
    [where] = entry.strict_at
    assert where.endswith(f":{f.__code__.co_firstlineno + 1}")  # r = models(...)
    sim.reset_stats()
    assert fast("q") == f("q")
    assert sim.stats().requests == 2 + 2  # the plan's two calls, then eager's two


def test_strict_reads_are_only_those_c_code_took(caplog):
    """A plan misled by C code (``re.findall`` on a judge's text) made the whole signature
    strict, and strict plans a list of calls one at a time: every later call made the
    four views one by one (6 requests, as slow as eager). Now only the read no recorded
    op took in (the judge's) is strict: the views stay one batch."""
    def f(x: str):
        views = [models("sim", f"View {i} of {x}").text for i in range(4)]
        verdict = models("sim", "Judge:\n" + "\n".join(views)).text
        digits = re.findall(r"\d", verdict)  # C code: it reads the placeholder
        return models("sim", f"Explain the score {digits[:2]}").text

    expected = f("q")
    fast = jit(f)
    with caplog.at_level(logging.INFO, logger="ember"):
        assert fast("q") == expected
    entry = fast.entry("q")
    assert not entry.strict
    [where] = entry.strict_at
    assert where.endswith(f":{f.__code__.co_firstlineno + 2}")  # the judge's line
    [line] = [r.getMessage() for r in caplog.records if "plan missed" in r.getMessage()]
    assert f"answers made at {where} are awaited" in line  # (INFO: why it got slower)
    for _ in range(2):
        sim.reset_stats()
        assert fast("q") == expected
        assert sim.stats().requests == 3  # the views in one batch, the judge, the explanation
        assert fast.entry("q").strict_at == {where} and not fast.entry("q").strict


def test_a_placeholder_that_c_code_left_whole_makes_the_answers_it_reached_strict():
    """``re.sub`` that leaves the placeholder whole: the next prompt took it in (a node),
    so no read went unseen. The suspects are then the answers that reached the call the
    plan got wrong (``a``), and only their reads become strict: the views, which reach
    no such call, are still sent together (every read strict: 5 requests)."""
    def f(x: str):
        views = [models("sim", f"View {i} of {x}").text for i in range(3)]
        a = models("sim", f"Say {x}").text
        return models("sim", f"Use: {re.sub(r'[ ]', '_', a)}").text, views

    expected = f("q")
    fast = jit(f)
    assert fast("q") == expected
    entry = fast.entry("q")
    assert not entry.strict
    assert entry.strict_at == {f"{__file__}:{f.__code__.co_firstlineno + 2}"}  # a's line
    sim.reset_stats()
    assert fast("q") == expected
    assert sim.stats().requests == 2  # the views and a in one batch, then the exact call


def test_concurrent_calls_that_find_one_plan_wrong_learn_it_once():
    """Threads calling one jitted function at once all replayed its first (wrong) plan:
    each replay counted as a separate miss, so the signature went strict at once (every
    read, the views one by one). A dropped graph counts once, and a plan traced before
    another call learned its suspects does not count against them."""
    from concurrent.futures import ThreadPoolExecutor

    def f(x: str):
        views = [models("sim", f"View {i} of {x}").text for i in range(3)]
        verdict = models("sim", "Judge:\n" + "\n".join(views)).text
        return models("sim", f"Explain {re.findall(r'[0-9]', verdict)[:2]}").text

    sim.configure(latency=0.02)
    args = [f"item {i % 3}" for i in range(48)]
    expected = {a: f(a) for a in set(args)}
    fast = jit(f)
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(fast, args)) == [expected[a] for a in args]
    entry = fast.entry("x")
    assert not entry.strict and entry.lessons == 1
    assert entry.strict_at == {f"{__file__}:{f.__code__.co_firstlineno + 2}"}


def test_a_call_keeps_its_rounds_traces_up_to_a_size(monkeypatch):
    """The traces kept for `_tighten` are bounded (the oldest rounds go first): a long
    program's rounds are not all held until its check run."""
    import ember._jit as jit_module

    seen = []
    real = jit_module._tighten
    monkeypatch.setattr(jit_module, "MAX_KEPT_NODES", 3)
    monkeypatch.setattr(jit_module, "_tighten", lambda e, plans, *rest: (
        seen.append(len(plans)), real(e, plans, *rest)))

    def f(x: str):
        a = models("sim", f"Say {x}").text
        if "zzz" in a:  # a break: a second round
            return a
        b = models("sim", f"More {x} {a[:5]}").text
        digits = re.findall(r"\d", b)  # C code: the plan is wrong
        return models("sim", f"Score {digits}").text

    assert jit(f)("q") == f("q")
    assert seen == [1]  # two rounds traced, one kept


def test_a_replayed_plan_that_turns_out_wrong_is_dropped_then_made_strict(caplog):
    """A cached graph can be wrong for new values (``bool()`` of an answer is assumed
    true). The first such miss drops the graph: the next call plans again and may
    cache it again; a second miss of a replayed graph (no trace to learn from) makes
    the signature strict."""
    def answer(request):
        prompt = request.messages[-1][1]
        return "" if "empty" in prompt else f"text for {prompt}"

    ember.providers.register("blanks", _async(answer))
    try:
        def f(x: str):
            a = models("blanks/m", f"Say {x}").text
            return models("sim", f"Use {a or 'nothing'}").text

        fast = jit(f)
        assert fast("full") == f("full")
        assert fast.entry("x").graph is not None  # the plan was right: replayed from now on
        assert fast("empty") == f("empty")  # the replayed plan sent "Use ": wrong
        entry = fast.entry("x")
        assert entry.graph is None and not entry.strict and entry.misses == 1
        assert fast("full 2") == f("full 2")  # planned again: right, cached again
        assert fast.entry("x").graph is not None
        with caplog.at_level(logging.INFO, logger="ember"):
            assert fast("empty 2") == f("empty 2")  # the replayed graph wrong a second time
        assert fast.entry("x").strict and fast.entry("x").misses == 2
        assert any("wrong twice" in r.getMessage() for r in caplog.records)
        assert fast("empty 3") == f("empty 3") and fast("full 3") == f("full 3")
    finally:
        ember.providers.reset()
        ember.providers._custom.pop("blanks", None)


def _async(fn):
    async def provider(request):
        return fn(request)
    return provider


def test_one_bad_prompt_in_a_batch_fails_alone():
    """A fan-out batched into one request: one prompt the provider refuses (400) failed
    every call of the batch, so a loop that catches errors per call returned four
    failures where eager Python had one. The batch is now sent again one by one."""
    def guarded(x: str):
        outs = []
        for i in range(4):
            try:
                outs.append(models("sim", f"Q{i}: {x}").text)
            except ember.BadRequestError as exc:
                outs.append(f"failed at {str(exc).rsplit(':', 1)[-1]}")
        return outs

    sim.configure(fail_on="Q2")
    sim.reset_stats()
    expected = guarded("q")
    assert [o.startswith("failed") for o in expected] == [False, False, True, False]
    assert sim.stats().requests == 4
    fast = jit(guarded)
    for _ in range(2):
        sim.reset_stats()
        assert fast("q") == expected
        # one round trip: the batch answers the others and refuses Q2 alone (it was
        # refused whole, then sent again prompt by prompt: 1 + 4 requests, eager's 4)
        assert sim.stats().requests == 1 and sim.stats().completions == 3
        assert fast.last_run.requests == 1 and fast.last_run.completions == 3
        assert [c.error for c in fast.last_run.calls] == [None, None, "BadRequestError", None]


def test_one_prompt_too_long_for_the_model_in_a_batch_fails_alone():
    """A fan-out batched into one request with one prompt over the context window:
    the size check before sending failed the whole batch, so every call raised
    ContextLengthError (eager: only that one, and the other three answered)."""
    def guarded(x: str):
        outs = []
        for i in range(4):
            try:
                outs.append(models("sim", f"Q{i}: {x}" + " word" * (200 if i == 2 else 0)).text)
            except ember.ContextLengthError:
                outs.append("too long")
        return outs

    sim.configure(context_window=100)
    sim.reset_stats()
    expected = guarded("q")
    assert expected.count("too long") == 1 and sim.stats().requests == 3
    fast = jit(guarded)
    for _ in range(2):
        sim.reset_stats()
        assert fast("q") == expected
        assert sim.stats().requests == 1 and fast.last_run.requests == 1  # (never sent)


def test_a_batch_providers_refused_prompt_fails_alone():
    """A Provider with a batch interface of its own (the default: its prompts at once)
    refused the whole batch for one prompt: sent again prompt by prompt, N + 1."""
    from ember.providers import Provider

    sent: list = []

    class Picky(Provider):
        name = "picky"
        supports_batch = True
        default_temperature = 0.0

        async def complete(self, request):
            sent.append(request.prompt_text())
            if "bad" in request.prompt_text():
                raise ember.BadRequestError("picky: refused", provider="picky", status=400)
            return [ember.Response(request.prompt_text().upper(), model=request.model_id)]

    def f(x):
        outs = []
        for p in ("one", "bad", "two"):
            try:
                outs.append(models("picky/m", f"{p} {x}").text)
            except ember.BadRequestError:
                outs.append("refused")
        return outs

    hiccups: list = []

    class Flaky(Picky):  # a prompt in ``hiccups`` fails once with a 503
        async def complete(self, request):
            word = request.prompt_text().split()[0]
            if word in hiccups:
                hiccups.remove(word)
                raise ember.ServerError("picky: 503", provider="picky", status=503)
            return await super().complete(request)

    class Wholesale(Picky):  # refuses a batch whole: each prompt is sent again alone
        async def complete_batch(self, requests):
            if any("bad" in r.prompt_text() for r in requests):
                raise ember.BadRequestError("picky: batch refused", provider="picky",
                                            status=400)
            return [await self.complete(r) for r in requests]

    try:
        ember.providers.register("picky", Picky())
        expected = f("q")
        assert expected == ["ONE Q", "refused", "TWO Q"]
        sent.clear()
        fast = jit(f)
        assert fast("q") == expected
        assert len(sent) == 3 and fast.last_run.requests == 1  # (one batch round trip)
        ember.providers.register("picky", Wholesale())
        sent.clear()
        fast = jit(f)
        assert fast("q") == expected
        assert len(sent) == 3 and fast.last_run.requests == 1 + 3
        ember.providers.register("picky", Flaky())
        quick = dict(max_attempts=3, initial_delay=0.001, max_delay=0.002)
        hiccups.append("two")
        assert ember.retry(f, **quick)("q") == expected  # (eager: "two" retried)
        hiccups.append("two")
        fast = jit(ember.retry(f, **quick))
        assert fast("q") == expected  # (a 503 in the batch: that prompt retried alone)
        assert fast.last_run.requests == 2 and fast.last_run.failures == 1  # ("bad")
        assert sorted(map(str, (c.error for c in fast.last_run.calls))) == [
            "BadRequestError", "None", "None", "resent"]
    finally:
        ember.providers._custom.pop("picky", None)
        ember.providers._instances.pop("picky", None)


def test_methods_can_be_jitted():
    class Agent:
        prefix = "Agent"

        @jit
        def run(self, x: str):
            return models("sim", f"{self.prefix}: {x}").text

    agent = Agent()
    assert agent.run("hi") == models("sim", "Agent: hi").text
    # the bound method is the jitted function's: its report and name are there
    assert agent.run.last_run.requests == 1 and agent.run.last_run is Agent.run.last_run
    assert ember.inspect(agent.run, "hi").name.endswith("Agent.run")
    assert ember.vmap(agent.run)(["a", "b"]) == [models("sim", f"Agent: {x}").text
                                                  for x in "ab"]


def test_compose_under_jit():
    def a(x):
        return models("sim", f"A {x}").text

    def b(x):
        return models("sim", f"B {x}").text

    pipeline = ember.chain(a, b)
    both = ember.ensemble(a, b, reduce=lambda rs: " | ".join(rs))
    assert jit(pipeline)("x") == b(a("x"))
    assert both("x") == a("x") + " | " + b("x")
    assert ember.ensemble(a, b)("y") == [a("y"), b("y")]
    with pytest.raises(TypeError):
        ember.chain()
    with pytest.raises(TypeError):
        ember.ensemble(1)


def test_ensemble_members_that_read_their_own_answers_are_sent_together():
    """Members that each parse their own answer (``.split()``: a break) took a trace
    round apiece, one request after another (3 requests); now every member's call is
    recorded before the round runs: one batch."""
    def member(tag: str):
        return lambda x: models("sim", f"{tag} {x}", temperature=0).text.split()[1]

    vote = ember.ensemble(member("A"), member("B"), member("C"),
                          reduce=lambda xs: max(sorted(set(xs)), key=xs.count))
    expected = [member(t)("q") for t in "ABC"]
    expected = max(sorted(set(expected)), key=expected.count)
    for fn in (vote, jit(vote), jit(lambda x: vote(x) + "!")):
        sim.reset_stats()
        assert fn("q") in (expected, expected + "!")
        assert sim.stats().requests == 1


def test_compose_async_functions():
    """chain and ensemble of async functions are awaited (they passed a coroutine to the
    next step, or returned unawaited coroutines); an ensemble's members run together."""
    async def a(x):
        return (await ember.amodels("sim", f"A {x}")).text

    async def b(x):
        return (await ember.amodels("sim", f"B {x}")).text

    def c(x):
        return models("sim", f"C {x}").text

    async def expected():
        return [await a("x"), await b("x"), c("x")], c(await b(await a("x")))

    together, in_turn = asyncio.run(expected())
    both = ember.ensemble(a, b, c)
    sim.reset_stats()
    assert asyncio.run(both("x")) == together
    assert sim.stats().requests == 1  # the three members were traced together: one batch
    assert asyncio.run(ember.chain(a, b, c)("x")) == in_turn
    assert asyncio.run(ember.vmap(both)(["x", "y"]))[0] == together

    async def judge(answers):  # an async reduce is awaited (it was returned unawaited)
        return (await ember.amodels("sim", "Best of: " + " | ".join(answers))).text

    judged = asyncio.run(judge(together[:2]))
    assert asyncio.run(ember.ensemble(a, b, reduce=judge)("x")) == judged
    sync_members = ember.ensemble(c, c, reduce=judge)  # async through its reduce alone
    assert asyncio.run(sync_members("x")) == asyncio.run(judge([c("x"), c("x")]))


def test_a_list_of_answers_in_an_fstring_is_formatted_like_eager():
    # f"{ideas}" formats the list with repr() of each answer: the graph must build the
    # same prompt as eager Python, in one plan, not re-plan with a placeholder prompt
    from ember.providers import sim

    def review(text):
        ideas = [ember.models("sim", f"Risk {i} of: {text}") for i in range(2)]
        return ember.models("sim", f"Improve using {ideas} and {ideas[0]!r}").text

    sim.reset_stats()
    eager = review("x")
    prompts = sorted(sim.stats().prompts)
    fast = ember.jit(review)
    for _ in range(2):
        sim.reset_stats()
        assert fast("x") == eager
        assert sorted(sim.stats().prompts) == prompts  # the same three prompts, once each
    report = ember.inspect(review, "x")
    assert report.complete and "repr" not in str(report.breaks)
    assert "<traced" not in str(report)


# ------------------------------------------------------------------ effects run once
def test_an_effectful_op_runs_once_per_call_as_in_eager_python():
    log: list[str] = []

    @ember.op(effectful=True)
    def record(kind: str, text: str) -> str:
        log.append(f"{kind}: {text}")
        return text.upper()

    def f(x: str):
        note = record("start", "constant")  # no traced argument
        draft = models("sim", f"Draft {x}")
        shout = record("draft", draft.text)  # its result feeds a model call
        return models("sim", f"{note} {shout}").text

    fast = jit(f, verify=True)
    for x in ("a", "a", "b"):  # first call (traced), replayed, another input
        log.clear()
        got = fast(x)
        jitted = list(log)
        log.clear()
        assert got == f(x)
        assert jitted == log and len(log) == 2  # the same effects, each once


def test_an_effect_before_a_break_runs_once():
    """The round before a break ran the effect, and the next round's graph, which holds
    it again, ran it a second time (on every call)."""
    log: list[str] = []

    @ember.op(effectful=True)
    def write(text: str) -> None:
        log.append(text)

    def triage(ticket: str) -> str:
        answer = models("sim", f"Classify: {ticket}")
        write(answer.text)
        write(answer.text)  # (written twice, as eager writes it twice)
        if len(answer.text) > 10:  # a break after the effects
            return models("sim", f"Escalate: {ticket}").text
        return "ok"

    fast = jit(triage)
    for ticket in ("t", "t", "u"):
        log.clear()
        expected = triage(ticket)
        eager = list(log)
        log.clear()
        assert fast(ticket) == expected
        assert log == eager and len(log) == 2


def test_an_effect_that_raises_raises_once_from_the_jitted_call():
    calls: list[str] = []

    @ember.op(effectful=True)
    def store(text: str) -> None:
        calls.append(text)
        raise RuntimeError("disk full")

    def f(x: str):
        store(models("sim", f"Q {x}").text)
        return "stored"

    fast = jit(f)
    for _ in range(2):
        calls.clear()
        with pytest.raises(RuntimeError, match="disk full"):
            fast("a")
        assert len(calls) == 1


def test_a_changed_answer_never_reaches_an_effect_during_planning():
    seen: list[str] = []

    @ember.op(effectful=True)
    def log(text: str) -> None:
        seen.append(text)

    def f(x: str):
        r = models("sim", f"Q {x}")
        log(r.text[:5])  # a cut of the answer's marker while tracing
        return r.text

    assert jit(f)("a") == f("a")
    assert seen == [models("sim", "Q a").text[:5]] * 2  # the jitted call's and eager's


def test_a_traced_value_kept_past_its_trace_is_an_error_not_a_placeholder():
    """A model answer stored while jit traces (JAX calls it a leaked tracer) is a
    placeholder. Read later, eagerly or in another jitted function, it raises a clear
    error; before, it gave marker text as a prompt, and another jitted function
    re-planned until its round limit (66 requests for one call)."""
    kept = []

    @jit
    def keeps(x: str):
        answer = models("sim", f"Q: {x}")
        kept.append(answer)
        return answer.text

    keeps("hello")
    leaked = kept[0]
    assert type(leaked).__name__ == "TracedResponse"
    uses = [lambda: f"use: {leaked.text}", lambda: str(leaked), lambda: f"{leaked}",
            lambda: bool(leaked), lambda: leaked.json(), lambda: leaked.usage,
            lambda: leaked.text + "!"]
    for use in uses:
        with pytest.raises(ember.TraceError, match="outside the jit trace that made it"):
            use()
    assert "traced" in repr(leaked)  # (a debugger may still show it)

    @jit
    def reads(x: str):
        return models("sim", f"{x} and {leaked.text}").text

    @jit
    def routes(x: str):
        return models(leaked, x).text

    before = sim.stats().requests
    for fn in (reads, routes):
        with pytest.raises(ember.TraceError, match="Return the value from the jitted"):
            fn("a")
    assert sim.stats().requests == before  # nothing was sent


# ---- programs whose calls change from run to run ----------------------------------------
def _requests(fn, *args):
    sim.reset_stats()
    result = fn(*args)
    return result, sim.stats().requests


def test_a_prompt_that_changes_every_run_converges_to_eagers_requests():
    """A timestamp in a prompt: the check run never finds the plan's call, and fetching
    it then running the Python again met a new prompt each time (66, then 129 requests
    a call, where eager makes 1)."""
    import itertools

    ticks = itertools.count()

    def answer(q):
        return models("sim", f"Time {next(ticks)}. Question: {q}").text

    fast = jit(answer)
    counts = [_requests(fast, q)[1] for q in "abcd"]
    assert counts[0] <= 2 and counts[1:] == [1, 1, 1]
    assert fast.entry("a").changing
    # the answer is the one for the prompt the Python made in the run that returned
    out, _ = _requests(fast, "e")
    assert out == models("sim", sim.stats().prompts[-1]).text


def test_a_changing_prompt_under_async_jit_and_vmap():
    import itertools

    ticks = itertools.count()

    async def answer(q):
        return (await ember.amodels("sim", f"Time {next(ticks)}: {q}")).text

    fast = jit(answer)
    counts = [_requests(lambda q: asyncio.run(fast(q)), q)[1] for q in "abc"]
    assert counts[0] <= 3 and counts[1:] == [1, 1]

    def stamped(q):
        return models("sim", f"Time {next(ticks)}: {q}").text

    mapped = ember.vmap(stamped)
    # (on Ember's loop a check run cannot block: it raised "a pending response was read
    # on Ember's event loop" for every element)
    for _ in range(2):
        out, n = _requests(mapped, ["a", "b", "c"])
        assert len(out) == 3 and all(isinstance(x, str) for x in out)
    assert n == 3


def test_a_type_check_on_a_string_argument_costs_one_plan_at_most():
    """isinstance(arg, str) is False for a traced argument: the plan mapped over its
    characters (5 wrong requests), and on every call (2, 5, 10 requests for 1)."""
    def summarize(doc_or_docs):
        if isinstance(doc_or_docs, str):
            doc_or_docs = [doc_or_docs]
        return [models("sim", f"Summarize: {d}").text for d in doc_or_docs]

    fast = jit(summarize)
    runs = [_requests(fast, arg) for arg in ("hello", "hello", "release notes", ["a", "b"])]
    assert [out for out, _ in runs] == [summarize(arg) for arg in
                                        ("hello", "hello", "release notes", ["a", "b"])]
    assert [n for _, n in runs][1:] == [1, 1, 1]  # (a list: planned, one batch)


def test_a_routing_table_read_with_str_of_an_argument():
    routes = {"billing": "You are a billing agent.", "tech": "You are an engineer."}

    def route(topic, question):
        system = routes.get(str(topic), "You are a helpful assistant.")
        return models("sim", f"{system}\n{question}").text

    fast = jit(route)
    runs = [_requests(fast, t, "refund?") for t in ("billing", "tech", "billing", "tech")]
    assert [out for out, _ in runs] == [route(t, "refund?") for t in
                                        ("billing", "tech", "billing", "tech")]
    assert [n for _, n in runs][1:] == [1, 1, 1]


def test_a_changed_global_stops_costing_requests_once_learned():
    """A replayed plan holds the prompt a global made when it was traced: each change
    of the global sent the stale prompt, then the right one (2 requests for 1)."""
    settings = {"system": "v0"}

    def reply(q):
        return models("sim", f"{settings['system']}\n{q}")  # (no read: a strict plan is
        # as whole as any, and as stale)

    fast = jit(reply)
    counts = []
    for i, q in enumerate("abcdefghijklmnop"):
        settings["system"] = f"v{i // 2}"  # changes on every other call
        out, n = _requests(fast, q)
        assert out == reply(q)
        counts.append(n)
    assert sum(counts) <= len(counts) + 3  # three lessons: then traced on every call
    assert counts[-6:] == [1] * 6


@pytest.mark.parametrize("build", [
    lambda t: "Grade this JSON: " + json.dumps({"answer": t}),  # escapes the marker
    lambda t: "Shout: " + str.upper(t),  # C code rewrites it
    lambda t: "Whisper: " + str.lower(t),  # (the marker's hex was all lower case: intact)
])
def test_a_placeholder_changed_by_untraced_code_is_never_sent(build):
    """json.dumps(answer) in a prompt sent the escaped placeholder to the provider
    ('{"answer": "\\u000277fa...\\u0003"}'), a paid request eager never makes; a vmap
    sent one per element."""
    def pipeline(q):
        t = models("sim", f"Describe {q}").text
        return models("sim", build(t)).text

    expected = [pipeline(q) for q in ("a cat", "a dog")]
    sim.reset_stats()
    assert jit(pipeline)("a cat") == expected[0]
    assert ember.vmap(pipeline)(["a cat", "a dog"]) == expected
    assert not [p for p in sim.stats().prompts if "\x02" in p or "\\u0002" in p]
    assert sim.stats().requests <= 2 + 4
    report = ember.inspect(pipeline, "a cat")
    assert any("cannot see" in b.reason for b in report.breaks)


def test_a_changing_prompt_before_a_break_and_a_failing_unplanned_call():
    import itertools

    ticks = itertools.count()

    def answer(q):
        r = models("sim", f"Time {next(ticks)}: {q}")
        if len(r.text) > 5:  # a break: the plan runs the call, then traces again,
            return r.text  # meets a new prompt and stops (it made 64 rounds)
        return "short"

    fast = jit(answer)
    counts = [_requests(fast, q)[1] for q in "abc"]
    assert counts[0] <= 2 and counts[1:] == [1, 1]

    sim.configure(fail_on="BOOM")

    def boom(q):
        return models("sim", f"BOOM {next(ticks)}: {q}").text

    with pytest.raises(ember.BadRequestError):
        boom("x")
    for _ in range(2):  # fetched where it is read, the error is raised there, as eager
        with pytest.raises(ember.BadRequestError, match="BOOM"):
            jit(boom)("x")


def test_inspect_lists_an_exception_on_a_placeholder_as_a_break():
    def labels(q):
        found = [models("sim", f"JSON label {i}: {q}", response_format="json").json()["answer"]
                 for i in range(3)]
        return " | ".join(found)  # TypeError while planning: JSON fields are not str yet

    report = ember.inspect(labels, "x")
    assert [b.reason.split(":")[0] for b in report.breaks] == ["TypeError on an unfinished answer"]
    with pytest.raises(ValueError, match="needs at least one element"):
        ember.inspect(ember.vmap(labels), [])


def test_effects_run_as_eagerly_in_order_once_and_never_past_a_failure():
    """Effects ran in graph order by data alone: reversed (a report's footer before its
    header), twice when their arguments were objects the check run made afresh or a
    list they appended to, under an async jit twice, and even when an earlier step
    raised, so eager Python never reached them."""
    import asyncio

    log: list = []

    class Ticket:  # equality is identity: the check run's is another object
        def __init__(self, text):
            self.text = text

    @ember.op
    def ticket(text):
        return Ticket(text[:8])

    @ember.op(effectful=True)
    def write(line):
        log.append(line)
        return len(log)

    @ember.op(effectful=True)
    def save(t):
        log.append(t.text)

    @ember.op(effectful=True)
    def record(history, text):
        history.append(text[:8])
        log.append("record")

    @ember.op
    def validate(text):
        raise ValueError("invalid")

    def report(x):
        a = models("sim", f"Findings on {x}")
        first = write(f"# {x}")
        last = write("-- end --")
        save(ticket(a.text))
        return first, last, models("sim", f"Next {x}").text

    for fn, arg in ((report, "tides"),):
        log.clear()
        eager = (fn(arg), list(log))
        log.clear()
        assert (jit(fn)(arg), log) == eager  # (order, values and counts)

    history: list = []
    log.clear()
    jit(lambda x, h: record(h, models("sim", f"Q {x}").text))("hi", history)
    assert history == [models("sim", "Q hi").text[:8]] and log == ["record"]

    def guarded(x):
        validate(models("sim", x).text)
        write("published")

    log.clear()
    with pytest.raises(ValueError):
        jit(guarded)("q")
    assert log == []

    @ember.op(effectful=True)
    async def asave(text):
        log.append(text[:8])

    async def chat(x):
        a = await ember.amodels("sim", f"Say {x}")
        await asave(a.text)
        return (await ember.amodels("sim", f"Next {x}")).text

    log.clear()
    asyncio.run(jit(chat)("hi"))
    assert log == [models("sim", "Say hi").text[:8]]


def test_an_n_call_the_check_run_makes_is_one_request_with_its_n_choices(openai_server):
    """When planning stops before an n=k call (here, after a caught refusal), the check
    run sent k single requests: k times eager's cost, and a seeded call got its first
    choice k times."""
    openai_server.hook = lambda rec: "bad_request" if "Check:" in rec.raw.decode() else None
    m = "openai/gpt-4o-mini"

    def titles(x, **params):
        try:
            note = models(m, f"Check: {x}", temperature=0).text
        except ember.BadRequestError:
            note = "unchecked"
        return [r.text for r in models(m, f"Titles for {x} ({note})", n=3, **params)]

    for params in ({}, {"temperature": 0.9, "seed": 7}):
        eager = titles("a", **params)
        openai_server.requests.clear()
        assert jit(titles)("a", **params) == eager and len(set(eager)) == 3
        assert [r.body.get("n") for r in openai_server.requests] == [None, 3]


def test_len_of_text_built_by_concatenating_an_answer_is_a_break():
    """`"Notes:" + " " + answer.text` was a plain str holding the placeholder: len() of
    it read the placeholder's length, and a loop growing notes to a length planned calls
    eager never makes (34 requests for 20)."""
    def grow(x, limit):
        notes = "Notes:"
        while len(notes) < limit:
            notes = notes + " " + models("sim", f"Continue: {notes} {x}").text[:30]
        return notes

    for limit in (60, 200):
        sim.reset_stats()
        eager = grow("a", limit)
        calls = sim.stats().requests
        sim.reset_stats()
        assert jit(grow)("a", limit) == eager and sim.stats().requests == calls


def test_message_roles_from_an_argument_are_sent_as_their_values(openai_server):
    """A chat history passed in: its roles were traced strings, frozen into the graph as
    placeholders, so the plan sent a request with roles like '\\x02eE...' (a 400 from a
    real server) before the check run sent the real one: 2 requests where eager made 1."""
    m = "openai/gpt-4o-mini"

    def ask(messages):
        return models(m, messages, temperature=0).text

    chat = [{"role": "system", "content": "Be terse."},
            {"role": "user", "content": "Will it rain?"},
            {"role": "assistant", "content": "No."},
            {"role": "user", "content": "Sure?"}]
    fast = jit(ask)
    for turn in (chat, chat[:2], chat):  # the history's length changes the graph
        openai_server.requests.clear()
        answer = fast(turn)
        roles = [[msg["role"] for msg in r.body["messages"]] for r in openai_server.requests]
        assert roles == [[msg["role"] for msg in turn]]  # one request, as eager
        assert answer == ask(turn)
    assert "message role" in str(ember.inspect(ask, chat))  # a break inspect names


def test_a_message_role_from_an_answer_is_a_break():
    def ask(x):
        role = models("sim", f"Pick a role for {x}", temperature=0).text
        return models("sim", [{"role": role, "content": x}]).text

    eager = ask("a")
    sim.reset_stats()
    assert jit(ask)("a") == eager
    assert sim.stats().requests == 2


def test_an_argument_keyed_by_identity_is_not_kept_alive():
    """A per-request session or callback is keyed by identity, and its signature kept
    the object itself: the last 256 requests' payloads stayed alive (+247 MB at 1 MB a
    request). Now the key holds it weakly: the same live object still hits."""
    import gc
    import weakref

    class Session:
        def __init__(self, user):
            self.user = user
            self.payload = bytearray(1000)

    fast = jit(lambda q, s, post: post(models("sim", f"{s.user}: {q}").text))
    refs = []
    for i in range(5):
        session, post = Session(f"u{i}"), (lambda t: t.upper())
        assert fast("q", session, post) == models("sim", f"u{i}: q").text.upper()
        assert fast("q2", session, post) == models("sim", f"u{i}: q2").text.upper()
        assert fast.entry("q", session, post).traces == 1  # the same objects: one trace
        refs += [weakref.ref(session), weakref.ref(post)]
    del session, post
    gc.collect()
    assert [r() for r in refs] == [None] * 10
    fresh = Session("new")  # (maybe at a dead one's id: not its entry)
    assert fast("q", fresh, str.lower) == models("sim", "new: q").text.lower()


# ---- a provider's SystemExit / KeyboardInterrupt ----------------------------------------
def _interrupting(exc: type[BaseException]):
    async def provider(request):
        if "stop" in request.prompt_text():
            raise exc("from the provider")
        return "ok: " + request.prompt_text()
    return provider


def _sampled(q):
    return [r.text for r in models("bails/x", q, n=3, temperature=1.0)]


def _two(q):
    return models("bails/x", q).text + models("sim", "and " + q).text


async def _atwo(q):
    return (await ember.amodels("bails/x", q)).text


def _changing(q):  # (its check runs in a thread: a plan never holds)
    import time

    stamp = models("sim", f"{q} at {time.perf_counter_ns()}").text[:0]
    return models("bails/x", q + stamp).text


def _in_daemon_thread(fn, timeout: float = 20.0):
    """``fn()`` in a thread of its own, its exception raised here; a hang fails."""
    import threading

    box: list = []

    def run():
        try:
            box.append((True, fn()))
        except BaseException as exc:
            box.append((False, exc))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if not box:
        pytest.fail(f"no answer within {timeout}s")
    ok, value = box[0]
    if not ok:
        raise value
    return value


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("call", [
    lambda: jit(_two)("stop"),
    lambda: jit(ember.timeout(_two, seconds=30))("stop"),  # (a task of its own: wait_for)
    lambda: jit(_sampled)("stop"),  # (n samples: a task each)
    lambda: _in_daemon_thread(lambda: asyncio.run(jit(_atwo)("stop"))),  # (it hung)
    lambda: ember.vmap(_two)(["a", "stop"]),  # (a sync jit on Ember's loop thread)
    lambda: (lambda m: (m(["a"]), m(["a", "stop"])))(ember.vmap(_changing)),
    lambda: ember.timeout(_two, seconds=30)("stop"),  # (eager)
], ids=["jit", "jit-timeout", "jit-samples", "async-jit", "vmap", "vmap-changing",
        "eager-timeout"])
def test_a_providers_ctrl_c_reaches_the_caller_and_the_loop_goes_on(exc, call):
    """A custom provider's KeyboardInterrupt / SystemExit inside a jitted call's model
    call stopped Ember's loop thread: the caller got 'the event loop thread stopped'
    a second later, and the process's clients died with the loop."""
    from ember import _runtime

    ember.providers.register("bails", _interrupting(exc))
    try:
        models("sim", "warm")
        thread = _runtime._thread
        with pytest.raises(exc, match="from the provider"):
            call()
        assert _runtime._thread is thread and thread.is_alive()  # the same loop goes on
        assert jit(_two)("fine") == _two("fine")
    finally:
        ember.providers._custom.pop("bails", None)
        ember.providers._instances.pop("bails", None)


def test_a_set_or_dict_look_up_of_an_unfinished_answer_is_a_break():
    """`answer in {"yes", "no"}` or `ROUTES.get(answer)` hashed the placeholder and
    missed silently: the plan sent the fallback call as well, on every call (2 requests
    where eager makes 1; 8 for a map of 4)."""
    sent: list = []

    async def bot(request):
        sent.append(request.model)
        return "yes" if request.model == "m" else "hard"

    ember.providers.register("yn", bot, default_temperature=0.0)
    try:
        routes = {"easy": "yn/small", "hard": "yn/large"}

        def ask(q):
            a = models("yn/m", f"Answer yes or no: {q}").text.strip()
            if a in {"yes", "no"}:
                return a
            return models("yn/m", f"Strictly yes or no! {q}").text

        def route(q):
            choice = models("yn/router", f"Route: {q}").text
            return models(routes.get(choice, "yn/small"), q).text

        for fn in (ask, route):
            sent.clear()
            eager = fn("q")
            made = list(sent)
            fast = jit(fn)
            for _ in range(3):
                sent.clear()
                assert fast("q") == eager and sent == made
            sent.clear()
            assert vmap(fn)(["q"] * 4) == [eager] * 4
            assert len(sent) == 4 * len(made)
        assert any("hashing" in b.reason for b in ember.inspect(ask, "q").breaks)
    finally:
        ember.providers._custom.pop("yn", None)
        ember.providers.reset()


def test_a_vmap_inside_a_jitted_function_plans_every_element():
    """The elements of a vmap called while planning ran one after another when the
    mapped function had a break: the first element's break stopped the round."""
    def one(x):
        a = models("sim", f"Draft: {x}")
        if "zzz" in a.text:  # a data-dependent check: a break
            return "skip"
        return models("sim", f"Polish: {a.text}").text

    xs = [f"item {i}" for i in range(4)]
    eager = [one(x) for x in xs]
    sim.reset_stats()
    assert jit(lambda xs: vmap(one)(xs))(xs) == eager
    assert sim.stats().requests == 2  # every draft in one batch, then every polish


def test_a_wrong_plan_that_ended_at_a_break_keeps_later_calls_planned():
    """Tree of thought, scored by parsing each rating with re: the first plan is wrong.
    The plans kept to find what it misread had their outputs replaced by every model
    call (a round that ends at a break runs them all), so no misread was found, the
    whole signature went strict, and every later call made eager's 19 requests in
    turn."""
    import re as regex

    def score(thought):
        rating = models("sim", f"Rate 0-9: {thought}", max_tokens=20).text
        digits = regex.findall(r"\d", rating)
        return int(digits[0]) if digits else 0

    def expand(state, depth):
        if depth == 0:
            return [state]
        kids = [models("sim", f"Next step #{i} from: {state}", max_tokens=30).text
                for i in range(3)]
        return [leaf for k in sorted(kids, key=score, reverse=True)[:2]
                for leaf in expand(k, depth - 1)]

    def tot(problem):
        best = max(expand(problem, 2), key=len)
        return models("sim", f"Final answer based on: {best}").text

    fast = jit(tot)
    fast("warm-up")  # the first plan is wrong: the signature learns
    for problem in ("make 24", "make 25"):
        sim.reset_stats()
        eager = tot(problem)
        made = sim.stats().requests, sim.stats().completions
        sim.reset_stats()
        assert fast(problem) == eager
        assert sim.stats().completions == made[1] and sim.stats().requests < made[0]


def test_models_from_a_thread_pool_inside_jit_names_the_thread():
    """The error blamed lru_cache, attributes or a chat history, never the thread pool
    the trace did not follow."""
    import concurrent.futures

    pool = concurrent.futures.ThreadPoolExecutor(2)

    def fanout(q):
        futures = [pool.submit(models, "sim", f"View {i} on {q}") for i in range(2)]
        return models("sim", "Judge:\n" + "\n".join(f.result().text for f in futures)).text

    try:
        with pytest.raises(ember.TraceError, match="ThreadPoolExecutor"):
            jit(fanout)("ship friday?")
    finally:
        pool.shutdown()
