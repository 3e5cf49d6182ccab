"""Run reports and Chrome-trace timelines."""

from __future__ import annotations

import json

import pytest
from servers import anthropic_server, openai_server  # noqa: F401

import ember
from ember import jit, models, vmap
from ember.providers import sim

MODEL = "openai/gpt-4o-mini"


def ensemble_judge(q: str):
    opinions = [models("sim", f"Expert {i}: {q}") for i in range(5)]
    return models("sim", "Judge:\n" + "\n".join(o.text for o in opinions)).text


def test_jit_run_report_adds_up():
    sim.configure(latency=0.02)
    fast = jit(ensemble_judge)
    fast("q")
    report = fast.last_run
    assert report.completions == 6
    assert report.cost == pytest.approx(sum(c.cost for c in report.calls))
    assert report.input_tokens == sum(c.input_tokens for c in report.calls)
    # the 5 experts went as one batch request (sim has a batch interface): one round
    # trip in flight, as sim saw (each prompt counted as in flight before: 5)
    assert report.peak_concurrency == sim.stats().max_in_flight == 1
    assert report.requests == sim.stats().requests == 2
    assert report.bound_seconds == pytest.approx(0.04)
    # measured: the two latencies, and the loop's delays on a busy machine (never the wall)
    assert 0.039 <= report.measured_bound_seconds <= report.wall_seconds
    text = str(report)
    assert "ensemble_judge" in text and "critical-path bound" in text and "$" in text
    data = report.to_dict()
    assert data["completions"] == 6 and data["retries"] == 0 and data["failures"] == 0


def test_the_printed_bound_is_at_the_latencies_the_run_saw(openai_server):
    """Before a run, a hosted model's latency is estimated for the longest answer
    allowed (about 10 s for 1,024 tokens), so every report printed a "bound" several
    times the wall time ("0.01x"). The report now prints the critical path of what ran
    at the latencies its requests took; the estimate stays in ``bound_seconds``."""
    openai_server.latency = 0.1  # (every request takes 100 ms)

    def two_levels(q: str):
        drafts = [models("gpt-4o-mini", f"Draft {i}: {q}") for i in range(3)]
        return models("gpt-4o-mini", "Pick: " + " | ".join(d.text for d in drafts)).text

    fast = jit(two_levels)
    fast("q")
    report = fast.last_run
    assert report.bound_seconds > 10  # the worst-case estimate: two ~10 s levels
    # two levels of at least 100 ms each, which the schedule met to within a little
    assert 0.2 <= report.measured_bound_seconds <= report.wall_seconds
    assert report.wall_seconds < 1.3 * report.measured_bound_seconds
    assert f"critical-path bound {report.measured_bound_seconds:.3f}s" in str(report)
    assert report.to_dict()["measured_bound_seconds"] == report.measured_bound_seconds
    assert ember.RunReport(report.calls, 1.0).measured_bound_seconds is None  # no graphs


def test_the_measured_bound_counts_the_calls_the_plan_missed():
    """A plan misled by C code: the check run fetches the right last call after the
    graph ran; that time is part of what any schedule needed."""
    import re

    sim.configure(latency=0.05)

    def f(q: str):
        verdict = models("sim", f"Judge {q}").text
        return models("sim", f"Explain {re.findall(r'[0-9]', verdict)[:2]}").text

    fast = jit(f)
    fast("q")
    report = fast.last_run
    assert report.unplanned_seconds >= 0.05  # the explanation, fetched by the check run
    # the judge (with the misplanned explanation beside it), then the right explanation
    assert 0.1 <= report.measured_bound_seconds <= report.wall_seconds


def test_timeline_shows_five_parallel_slices_then_one(tmp_path):
    sim.configure(latency=0.02)
    fast = jit(ensemble_judge)
    fast("q")
    path = fast.last_run.timeline(str(tmp_path / "run.json"))
    events = json.loads(open(path).read())["traceEvents"]
    slices = sorted((e for e in events if e["ph"] == "X"), key=lambda e: e["ts"])
    assert len(slices) == 6
    experts, judge = slices[:5], slices[5]
    assert len({e["tid"] for e in experts}) == 5  # five lanes at once
    assert all(judge["ts"] >= e["ts"] + e["dur"] - 1 for e in experts)  # then one
    assert judge["args"]["model"] == "sim" and judge["args"]["input_tokens"] > 0
    names = [e for e in events if e["ph"] == "M" and e["name"] == "thread_name"]
    assert len(names) == 5


def test_record_context_and_vmap_report():
    with ember.record("eager") as run:
        ensemble_judge("x")
    report = run.report()
    assert report.requests == 6 and report.peak_concurrency == 1
    assert report.label == "eager" and report.mean_concurrency <= 1.01
    mapped = vmap(ensemble_judge)
    mapped(["a", "b"])
    assert mapped.last_run.completions == 12


def test_a_recorded_run_reads_like_its_report(tmp_path):
    with ember.record("block") as run:
        ensemble_judge("x")
        assert run.requests == 6  # as of now, inside the block too
        ensemble_judge("y")
    report = run.report()
    assert (run.requests, run.cost, len(run.calls), run.wall_seconds) == (
        12, report.cost, 12, report.wall_seconds)
    assert str(run) == str(report) and str(run).startswith("block: 12 requests")
    assert run.timeline(str(tmp_path / "t.json")).endswith("t.json")
    with pytest.raises(AttributeError, match="no attribute 'reqests'"):
        run.reqests


def test_unpriced_model_cost_is_none():
    async def echo(request):
        return "hi"

    ember.providers.register("unpriced", echo)
    with ember.record() as run:
        models("unpriced/model-x", "hello")
    report = run.report()
    assert report.cost is None and "unknown" in str(report)


def test_failures_and_coalesced_calls_are_counted():
    sim.configure(fail_on="BAD", latency=0.02)

    def f(x: str):
        a = models("sim", f"same {x}")
        return a.text

    mapped = vmap(f, return_exceptions=True)
    mapped(["1", "1", "BAD"])
    report = mapped.last_run
    assert report.failures == 1 and report.coalesced == 1
    assert report.requests == 2


def test_queued_calls_are_not_counted_as_concurrent():
    # a call's slice starts when the limiter admits it, not when it starts waiting
    from ember.backends.limits import configure_limits, limiter
    from ember.providers import sim

    limiter.reset()
    try:
        configure_limits("sim", concurrency=2)
        sim.configure(latency=0.05)
        mapped = ember.vmap(lambda i: ember.models("sim", f"queued {i}", temperature=0))
        mapped(list(range(6)))
        run = mapped.last_run
        assert sim.stats().max_in_flight <= 2
        assert run.peak_concurrency == 2
        assert len(run.calls) == 6 and run.throttle_seconds > 0
    finally:
        limiter.reset()


def _panel(q: str, k: int = 4):
    opinions = [models("sim", f"As expert {i}, assess: {q}") for i in range(k)]  # a batch
    return models("sim", "Judge:\n" + "\n".join(o.text for o in opinions)).text


def test_a_retried_or_failed_batch_adds_up_to_what_the_provider_saw():
    """A batch request's retries were counted once per prompt in it (4 for 1); a batch
    that failed for good was missing from the report; failed calls counted as
    completions."""
    sim.configure(error_rate=0.3, seed=3)
    fast = jit(ember.retry(_panel, max_attempts=10, initial_delay=0.001, max_delay=0.002))
    for q in ("a", "b", "c"):
        sim.reset_stats()
        fast(q)
        report = fast.last_run
        assert report.requests + report.retries == sim.stats().requests
        assert report.completions == sim.stats().completions
    sim.configure(error_rate=1.0)
    sim.reset_stats()
    with ember.record() as run:
        with pytest.raises(ember.EmberError):
            jit(ember.retry(_panel, max_attempts=2, initial_delay=0.001))("q")
    assert run.requests + run.retries == sim.stats().requests
    assert run.failures == 4 and run.completions == 0  # (one per prompt of the batch)
    sim.configure(error_rate=0.0, fail_on="boom")
    with ember.record() as run:
        models("sim", "ok", temperature=0.5, n=3)
        with pytest.raises(ember.BadRequestError):
            models("sim", "boom", temperature=0.5, n=3)
    assert run.completions == 3 and run.failures == 1
    # a fused batch in which one prompt is refused: one failure, as eager (the refused
    # round trip counted as a second one), in one round trip (it was sent again prompt
    # by prompt: 4)
    with ember.record() as run:
        with pytest.raises(ember.BadRequestError):
            jit(lambda x: [models("sim", f"{w} {x}", temperature=0.0).text
                           for w in ("a", "b", "boom")])("q")
    assert (run.requests, run.failures, run.completions) == (1, 1, 2)


def test_concurrent_calls_each_report_their_own_run():
    """Two threads calling one jitted function: a 1-call run was reported with the
    other call's 4-step graph ('wall 0.129s (critical-path bound 0.500s, 0.26x)')."""
    import threading

    sim.configure(latency=0.05)

    def chain(q, k):
        out = models("sim", f"Start {q}")
        for step in range(k - 1):
            out = models("sim", f"Step {step}: {out.text}")
        return out.text

    fast = jit(chain)
    fast("warm", 1), fast("warm", 4)
    reports = {}

    def work(k):
        fast(f"q{k}", k)
        reports[k] = fast.last_run

    threads = [threading.Thread(target=work, args=(k,)) for k in (1, 4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert reports[1].requests == 1 and reports[4].requests == 4
    assert reports[1].measured_bound_seconds == pytest.approx(0.05, abs=0.03)
    assert reports[4].measured_bound_seconds == pytest.approx(0.2, abs=0.06)


def test_samples_sent_beside_one_that_failed_are_reported(anthropic_server):
    """On a provider without n, n samples are n requests: when one fails for good the
    others, already sent, finish and are reported (they were cancelled and missing:
    the report said 1 request, the server had 3)."""
    anthropic_server.latency = 0.2
    first = [True]

    def hook(rec):
        if first[0]:
            first[0] = False
            return "bad_request"
        return None

    anthropic_server.hook = hook
    with ember.record() as run:
        with pytest.raises(ember.BadRequestError):
            models("anthropic/claude-haiku-4-5", "Name a colour", n=3, temperature=1.0)
    report = run.report()
    assert [r.status for r in anthropic_server.requests] == [400, 200, 200]
    assert (report.requests, report.failures, report.completions) == (3, 1, 2)


def test_backoff_between_attempts_is_not_counted_as_in_flight():
    """A retried call's span covers its backoff; the peak counts its attempts only (it
    counted every call sleeping between attempts: 40 'in flight' under a limit of 4)."""
    import asyncio

    from ember import providers
    from ember.backends.limits import configure_limits, limiter
    from ember.errors import ServerError

    seen: set[str] = set()

    async def flaky(request):
        await asyncio.sleep(0.02)
        prompt = request.messages[-1][1]
        if prompt not in seen:
            seen.add(prompt)
            raise ServerError("503, once per prompt", provider="flaky", status=503)
        return "ok"

    providers.register("flaky", flaky)
    limiter.reset()
    try:
        configure_limits("flaky", concurrency=2)
        ask = ember.retry(lambda i: models("flaky/m", f"q {i}", temperature=0).text,
                          initial_delay=0.3, jitter=False)
        mapped = ember.vmap(ask)
        assert mapped(list(range(8))) == ["ok"] * 8
        run = mapped.last_run
        assert run.requests == 8 and run.retries == 8
        assert run.peak_concurrency == 2
        assert all(len(c.flights) == 2 for c in run.calls)
    finally:
        providers._custom.pop("flaky", None)
        providers.reset()
        limiter.reset()


def test_a_request_its_caller_cancelled_is_reported_but_not_a_failure(openai_server):
    """asyncio.wait_for around a call: the provider got the request, so the report
    counts it (it was missing), as cancelled rather than failed."""
    import asyncio

    models("openai/gpt-4o-mini", "warm up")  # (the SDK's first use: imported, connected)
    openai_server.requests.clear()
    openai_server.latency = 0.3

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ember.amodels("openai/gpt-4o-mini", "slow"), 0.1)

    import time

    with ember.record() as run:
        asyncio.run(main())
        deadline = time.monotonic() + 2.0  # (the cancel reaches Ember's loop soon after)
        while not run.report().calls and time.monotonic() < deadline:
            time.sleep(0.01)
    report = run.report()
    assert len(openai_server.requests) == 1
    assert (report.requests, report.failures, report.completions) == (1, 0, 0)
    assert report.calls[0].error == "cancelled"


def test_the_estimate_counts_the_json_instruction_anthropic_is_sent(anthropic_server):
    """Anthropic has no response_format: Ember puts the format and its schema in the
    system prompt. The estimate left that out: 12 input tokens where 272 were billed,
    and the run cost more than the estimate's "up to"."""
    from pydantic import BaseModel

    class Report(BaseModel):
        title: str
        summary: str
        risks: list[str]
        priority: int

    def write(topic):
        return models("claude-haiku-4-5", f"Write a report on: {topic}",
                      response_format=Report, max_tokens=40).text

    estimate = ember.inspect(write, "the outage").estimate
    fast = jit(write)
    fast("the outage")
    billed = anthropic_server.requests[-1].response["usage"]["input_tokens"]
    assert fast.last_run.input_tokens == billed
    assert billed <= estimate.input_tokens <= billed * 1.2
    assert fast.last_run.cost <= estimate.cost_max
    plain = ember.inspect(lambda t: models("claude-haiku-4-5", t, max_tokens=40).text, "x")
    assert plain.estimate.input_tokens < 20  # nothing added without a format


def test_the_estimate_says_when_nothing_caps_an_answer(monkeypatch):
    """Without max_tokens an OpenAI answer can run past the 1,024 tokens the estimate's
    "up to" assumed (a 2,500-token essay cost $0.025 against "up to $0.010"): the
    estimate names the uncapped models. Anthropic's calls are capped (Ember sends
    max_tokens=1024), sim's answers are short, and max_tokens= caps any."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")

    def estimate(model, **params):
        return ember.inspect(lambda t: models(model, t, **params).text, "x").estimate

    uncapped = estimate("gpt-4o")
    assert uncapped.uncapped == ("openai/gpt-4o",)
    assert "no max_tokens for openai/gpt-4o" in str(uncapped)
    assert uncapped.cost_max > 0
    for model, params in (("gpt-4o", {"max_tokens": 50}), ("claude-haiku-4-5", {}),
                          ("sim", {})):
        capped = estimate(model, **params)
        assert capped.uncapped == () and "max_tokens" not in str(capped)


@pytest.mark.parametrize("messages", [False, True])
def test_the_estimate_covers_a_system_prompts_input(messages, openai_server):
    """A system prompt is a message of its own (OpenAI frames it; sim joins it to the
    prompt by a newline): the estimate, shown as an exact figure, came out low."""
    prompt = ([{"role": "user", "content": "Will it rain today?"}] if messages
              else "Will it rain today?")
    for model in ("sim", "openai/gpt-4o-mini"):
        def ask(q, model=model):
            return models(model, q, system="Be terse.", max_tokens=20).text

        estimate = ember.inspect(ask, prompt).estimate
        fast = jit(ask)
        fast(prompt)
        assert fast.last_run.input_tokens <= estimate.input_tokens, model


def test_the_report_says_how_often_jit_ran_the_python():
    """An agent loop with a slow tool was 2x slower jitted than eager (the tool ran 27
    times for 6) and the report gave no hint why."""
    import time as clock

    tool_runs = []

    def search(q):
        tool_runs.append(q)
        clock.sleep(0.02)
        return f"results for {q}"

    def agent(question):
        history = [{"role": "user", "content": question}]
        for _ in range(4):
            text = models("sim", history).text
            history += [{"role": "assistant", "content": text},
                        {"role": "user", "content": search(text.split()[1])}]  # a break
        return history[-1]["content"]

    fast = jit(agent)
    fast("fix the outage")
    report = fast.last_run
    assert report.python_runs > 2 and report.python_seconds >= 0.02 * len(tool_runs) * 0.9
    assert "python   ran" in str(report) and "effectful=True" in str(report)
    assert report.to_dict()["python_runs"] == report.python_runs
    plain = jit(lambda q: models("sim", q).text)
    plain("q")
    assert plain.last_run.python_runs == 2 and "python   ran" not in str(plain.last_run)


def test_the_estimate_is_exact_for_sim_and_spans_json_modes_line(openai_server):
    """A system prompt on sim is joined by a newline, not framed: the estimate read
    [15, 16] for 11 billed. OpenAI's JSON-mode line is only sent where no message says
    json: it was always counted (21 for 10 billed)."""
    for model, prompt, params in (("sim", "Hello there", {"system": "You are terse."}),
                                  (MODEL, "Give JSON with a name", {"response_format": "json"}),
                                  (MODEL, "Give a name", {"response_format": "json"})):
        def ask(q, model=model, params=params):
            return models(model, q, max_tokens=10, **params)

        estimate = ember.inspect(ask, prompt).estimate
        billed = ask(prompt).usage.input_tokens
        assert estimate.input_tokens_min <= billed <= estimate.input_tokens, (model, prompt)
        if model == "sim":
            assert estimate.input_tokens_min == estimate.input_tokens == billed
