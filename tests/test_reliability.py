"""`retry` and `timeout` against a loopback OpenAI server that injects faults."""

from __future__ import annotations

import asyncio
import builtins
import inspect
import logging
import random
import threading
import time

import pytest
from faults import MODEL, OPENAI_KEY, Fault, fault_server, retry_gaps  # noqa: F401

import ember
from ember import providers
from ember._reliability import retry, timeout
from ember._runtime import loop
from ember.errors import (AuthenticationError, BadRequestError, ContextLengthError,
                          ModelNotFoundError, ParseError, QuotaExceededError, ServerError)
from ember.providers import sim

pytestmark = pytest.mark.filterwarnings("ignore:No price known")  # the custom provider

def call(prompt: str, **params):
    return ember.models(MODEL, prompt, **params)


def statuses(server) -> list:
    return [r.status for r in server.requests]


# ---- retry: what is retried, and how long it waits ----------------------------------------
def test_retry_waits_for_retry_after_ms(fault_server):
    fault_server.script(Fault("rate_limit", retry_after=None, retry_after_ms=300))
    r = retry(call, max_attempts=3, initial_delay=0.01)("hello")
    assert r.text == "echo: hello"
    assert statuses(fault_server) == [429, 200]
    [(asked, gap)] = retry_gaps(fault_server)
    assert asked == 0.3 and gap >= 0.3


def test_retry_waits_for_retry_after_seconds(fault_server):
    fault_server.script(Fault("rate_limit", retry_after=1))
    start = time.monotonic()
    assert retry(call, initial_delay=0.01)("x").text == "echo: x"
    [(asked, gap)] = retry_gaps(fault_server)
    assert asked == 1 and gap >= 1.0
    assert time.monotonic() - start < 2.0


def test_retries_5xx_timeouts_and_dropped_connections(fault_server):
    fault_server.script("overloaded", Fault("server", status=502), "drop", "malformed")
    r = retry(call, max_attempts=5, initial_delay=0.01)("y")
    assert r.text == "echo: y"
    assert len(fault_server.requests) == 5


@pytest.mark.parametrize("kind, error", [
    ("auth", AuthenticationError), ("forbidden", AuthenticationError),
    ("not_found", ModelNotFoundError), ("bad_request", BadRequestError),
    ("context_length", ContextLengthError), ("quota", QuotaExceededError)])
def test_non_retryable_errors_are_attempted_once(fault_server, kind, error):
    fault_server.script(kind)
    start = time.monotonic()
    with pytest.raises(error):
        retry(call, max_attempts=5, initial_delay=0.2)("z")
    assert len(fault_server.requests) == 1
    assert time.monotonic() - start < 0.5


def test_bare_429_is_a_quota_error_and_fails_fast(fault_server):
    # a 429 with neither Retry-After nor rate-limit headers, nor words of throttling,
    # comes from a spend cap
    fault_server.script(Fault("server", status=429, headers={"content-type": "application/json"},
                              body=b'{"error": {"message": "Request refused.", "code": null}}'))
    start = time.monotonic()
    with pytest.raises(QuotaExceededError):
        retry(call, max_attempts=5)("q")
    assert len(fault_server.requests) == 1
    assert time.monotonic() - start < 0.5
    assert call("after").text == "echo: after"  # a quota error pauses nothing
    assert time.monotonic() - start < 0.5


def test_a_bare_429_that_says_rate_limit_is_retried_with_backoff(fault_server):
    """A gateway's 429 saying "Rate limit exceeded" with no hint of when: it was taken
    for a used-up quota, and the call failed where the next attempt succeeded."""
    fault_server.script(Fault("rate_limit", retry_after=None,
                              message="Rate limit exceeded: 20 requests per minute."))
    assert retry(call, max_attempts=3, initial_delay=0.01)("q").text == "echo: q"
    assert len(fault_server.requests) == 2


def test_final_error_lists_attempts_and_attempts_never_multiply(fault_server):
    fault_server.hook = lambda rec: "overloaded"

    @retry(max_attempts=3, initial_delay=0.01)
    def outer(x):
        return retry(call, max_attempts=3, initial_delay=0.01)(x)

    with pytest.raises(ServerError) as info:
        outer("w")
    assert len(fault_server.requests) == 3  # not 9: one layer decides
    assert "failed after 3 attempts" in str(info.value)
    assert str(info.value).count("ServerError (HTTP 503)") == 3
    assert OPENAI_KEY not in str(info.value)


def test_default_policy_retries_twice(fault_server):
    fault_server.script("overloaded", "overloaded", "overloaded")
    with pytest.raises(ServerError):
        call("d")
    assert len(fault_server.requests) == 3  # like the SDKs' default, but in one place


def test_retry_logs_one_line_per_retry_without_secrets(fault_server, caplog):
    fault_server.script(Fault("rate_limit", retry_after=None, retry_after_ms=50), "overloaded")
    with caplog.at_level(logging.INFO, logger="ember"):
        retry(call, initial_delay=0.01)("a secret prompt")
    lines = [r.getMessage() for r in caplog.records if r.name == "ember"]
    assert sum("retrying in" in line for line in lines) == 2
    assert sum("throttling" in line for line in lines) == 1
    assert not any("secret prompt" in line or OPENAI_KEY in line for line in lines)


# ---- retry: both forms, async, parse errors ---------------------------------------------
class Flip:
    """A provider that answers prose first, then JSON: a parse error to retry."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, request):
        self.calls += 1
        return "Sure! Here it is" if self.calls == 1 else '{"ok": true}'


@pytest.fixture
def flip():
    provider = Flip()
    providers.register("flip", provider)  # sampled: default temperature 1.0
    yield provider
    providers._custom.pop("flip", None)
    providers.reset()


def ask_json(x):
    return ember.models("flip/m", f"JSON for {x}").json()


def test_parse_error_reruns_the_function_eagerly(flip):
    assert retry(ask_json)("a") == {"ok": True}
    assert flip.calls == 2


def test_decorator_form_and_give_up(flip):
    @retry(max_attempts=1)
    def once(x):
        return ask_json(x)

    with pytest.raises(ParseError):
        once("b")
    assert flip.calls == 1


def test_parse_error_retry_under_jit_fetches_a_fresh_sample(flip):
    fast = ember.jit(retry(ask_json, max_attempts=3))
    assert fast("c") == {"ok": True}
    assert flip.calls == 2  # the failed sample, then one new one: nothing else re-sent


def test_a_deterministic_call_retried_under_jit_and_vmap_is_sent_again(flip):
    """ember.retry runs its function again, and eager Python sends a temperature-0
    call again then; the check run used to answer it from the memo (the same prose,
    three 'attempts', one request, a ParseError where eager got JSON)."""
    def ask(x):
        return ember.models("flip/m", f"JSON for {x}", temperature=0).json()

    for run in (ember.jit(retry(ask)), lambda x: ember.vmap(retry(ask))([x])[0]):
        flip.calls = 0
        assert run("e") == {"ok": True}
        assert flip.calls == 2



def test_retry_around_jit(flip):
    assert retry(ember.jit(ask_json))("d") == {"ok": True}
    assert flip.calls == 2


def test_retry_under_jit_reruns_only_failed_calls(fault_server):
    fault_server.hook = lambda rec: "overloaded" if b"bad" in rec.raw and rec.status is None \
        and sum(b"bad" in r.raw for r in fault_server.requests) == 1 else None

    @ember.jit
    @retry(max_attempts=3, initial_delay=0.01)
    def pipeline(x):
        a, b = call(f"good {x}"), call(f"bad {x}")
        return call(f"join {a} {b}").text

    assert pipeline("1") == "echo: join echo: good 1 echo: bad 1"
    prompts = [r.body["messages"][-1]["content"] for r in fault_server.requests]
    assert prompts.count("good 1") == 1 and prompts.count("bad 1") == 2
    assert len(prompts) == 4


def test_async_retry(fault_server):
    fault_server.script("overloaded")

    @retry(initial_delay=0.01)
    async def acall(x):
        return await ember.amodels(MODEL, x)

    assert asyncio.run(acall("e")).text == "echo: e"
    assert len(fault_server.requests) == 2


def test_retry_validates_arguments():
    with pytest.raises(ValueError):
        retry(max_attempts=0)
    with pytest.raises(TypeError, match=r"max_attempts=42"):  # @retry(42) meant attempts
        retry(42)


# ---- timeout ------------------------------------------------------------------------------
def ember_tasks() -> int:
    async def count() -> int:
        return len(asyncio.all_tasks()) - 1
    return asyncio.run_coroutine_threadsafe(count(), loop()).result()


def eventually(check, limit: float = 1.0) -> bool:
    end = time.monotonic() + limit
    while not check():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def settled(baseline: int, limit: float = 1.0) -> bool:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if ember_tasks() <= baseline:
            return True
        time.sleep(0.01)
    return False


def test_timeout_cancels_in_flight_requests(fault_server):
    fault_server.stall = 5.0
    call("warm up")
    tasks, threads = ember_tasks(), threading.active_count()
    slow = timeout(lambda x: call(f"STALL {x}"), seconds=0.5)
    start = time.monotonic()
    with pytest.raises(ember.TimeoutError) as info:
        slow("a")
    took = time.monotonic() - start
    assert isinstance(info.value, builtins.TimeoutError)
    assert 0.5 <= took < 0.7
    assert eventually(lambda: fault_server.hangups)  # the HTTP request was closed
    assert fault_server.hangups[0] - start < 0.7
    assert settled(tasks) and threading.active_count() <= threads
    assert len(fault_server.requests) == 2  # a passed deadline is not retried


def test_async_timeout_cancels_the_function(fault_server):
    fault_server.stall = 5.0

    async def slow(x):
        first = await ember.amodels(MODEL, x)
        return await ember.amodels(MODEL, f"STALL {first}")

    async def main():
        start = time.monotonic()
        with pytest.raises(ember.TimeoutError):
            await timeout(slow, seconds=0.4)("b")
        return time.monotonic() - start

    took = asyncio.run(main())
    assert 0.4 <= took < 0.6
    assert eventually(lambda: len(fault_server.hangups) == 1)


def test_timeout_under_jit_bounds_parallel_calls(fault_server):
    fault_server.stall = 5.0

    @ember.jit
    @timeout(seconds=0.4)
    def fan(x):
        return [call(f"STALL {x} {i}") for i in range(3)]

    start = time.monotonic()
    with pytest.raises(ember.TimeoutError):
        fan("c")
    assert time.monotonic() - start < 0.6
    assert len(fault_server.requests) == 3
    assert eventually(lambda: len(fault_server.hangups) == 3)


def test_replayed_graph_starts_its_clock_per_call():
    sim.configure(latency=0.15)
    fast = ember.jit(timeout(lambda x: ember.models("sim", f"say {x}"), seconds=0.4))
    fast("a")
    time.sleep(0.5)  # an absolute deadline captured at trace time would have passed
    assert fast("b").text
    assert fast.entry("b").graph is not None  # the second call replayed the graph
    assert sim.stats().requests == 2


def test_each_call_of_a_timeout_wrapper_has_its_own_clock_under_jit():
    """step(step(x)): each step within its limit, as eagerly (the two calls of the
    wrapper shared one clock in the graph, and the second timed out)."""
    sim.configure(latency=0.3)

    @timeout(seconds=0.5)
    def step(text):
        return ember.models("sim", f"Refine: {text}").text

    def twice(text):
        return step(step(text))

    fast = ember.jit(twice)
    assert fast("draft") == twice("draft")
    assert fast("draft") == twice("draft")  # (replayed: the same)


def test_a_graph_break_does_not_restart_the_clock():
    """A timeout around a function with a graph break bounds the whole call, as eagerly
    (each round of the plan started a new clock: 0.6 s passed against a 0.5 s limit)."""
    sim.configure(latency=0.3)

    @timeout(seconds=0.5)
    def two_steps(text):
        first = ember.models("sim", f"Draft: {text}")
        if len(first.text) > 0:  # a break: the second call waits for the first answer
            return ember.models("sim", f"Refine: {first.text}").text
        return ""

    with pytest.raises(ember.TimeoutError):
        two_steps("x")
    fast = ember.jit(two_steps)
    for _ in range(2):
        start = time.monotonic()
        with pytest.raises(ember.TimeoutError):
            fast("x")
        assert time.monotonic() - start < 0.58


def test_a_server_that_refuses_n_gets_a_request_per_sample(fault_server, caplog):
    """An OpenAI-compatible server that refuses n > 1 with a 400 (Groq's wording):
    jit's fused samples failed where eager worked."""
    def refuse_n(rec):
        if isinstance(rec.body, dict) and (rec.body.get("n") or 1) > 1:
            return Fault("bad_request", message="'n' : number must be at most 1")
        return None

    def ideas(topic):
        return [call(f"An idea about {topic}", temperature=1.0).text for _ in range(3)]

    fault_server.script(Fault("bad_request"))  # another 400: the caller's, not re-sent
    with pytest.raises(BadRequestError):
        call("x", temperature=1.0, n=2)
    assert len(fault_server.requests) == 1
    fault_server.requests.clear()
    fault_server.hook = refuse_n
    with caplog.at_level("WARNING", logger="ember"):
        assert ember.jit(ideas)("cats") == ideas("cats")
    assert "refused n=3" in caplog.text
    assert [r.status for r in fault_server.requests] == [400] + [200] * 6


def test_retry_of_timeout_runs_a_new_region(fault_server):
    fault_server.stall = 5.0
    seen = []

    def flaky(x):
        seen.append(x)
        return call(f"STALL {x}" if len(seen) == 1 else x)

    assert retry(timeout(flaky, seconds=0.3), initial_delay=0.01)("f").text == "echo: f"
    assert len(seen) == 2


def test_retry_of_timeout_runs_a_new_region_under_jit_and_vmap(fault_server):
    """The check run replays the graph run's time-out: ember.retry runs the region
    again, as eager does (it gave up at once: the check run's own clock had not run
    out, so the error stayed final)."""
    def ask(q):
        return call(f"Q: {q}", temperature=0).text

    robust = retry(timeout(ask, seconds=0.3), initial_delay=0.01)
    call("warm-up")
    for run in (ember.jit(robust), lambda x: ember.vmap(robust)([x])[0]):
        fault_server.requests.clear()
        fault_server.script(Fault("slow", delay=1.0))  # only the first request is slow
        assert run("x") == "echo: Q: x"
        assert len(fault_server.requests) == 2


def test_timeout_inside_retry_is_not_retried(fault_server):
    fault_server.stall = 5.0
    start = time.monotonic()
    with pytest.raises(ember.TimeoutError):
        timeout(retry(lambda x: call(f"STALL {x}"), max_attempts=5), seconds=0.3)("g")
    assert time.monotonic() - start < 0.5
    assert len(fault_server.requests) == 1


def test_a_call_that_cannot_be_sent_in_time_says_so(fault_server):
    """A call whose provider a 429 paused past its time limit fails at once, saying it
    was never sent and why (it waited out the limit, then said 'the request was
    cancelled')."""
    fault_server.script(Fault("rate_limit", retry_after=5))
    with pytest.raises(ember.RateLimitError):
        retry(lambda x: call(x), max_attempts=1)("first")
    fault_server.requests.clear()
    start = time.monotonic()
    with pytest.raises(ember.TimeoutError, match=r"never sent(.|\n)*paused for another"):
        timeout(lambda x: call(x), seconds=1.0)("second")
    assert time.monotonic() - start < 0.3 and not fault_server.requests


def test_a_call_that_waited_for_admission_past_its_limit_says_so(fault_server):
    from ember.backends.limits import limiter

    fault_server.stall = 1.0
    ember.configure_limits("openai", concurrency=1)

    held: list[BaseException] = []

    def hold_the_slot():
        try:
            retry(call, max_attempts=1)("STALL")
        except ember.errors.ConnectionError as exc:  # (the stalled server hangs up)
            held.append(exc)

    blocker = threading.Thread(target=hold_the_slot, daemon=True)
    blocker.start()
    assert eventually(lambda: getattr(limiter._states.get("openai"), "in_flight", 0) == 1)
    with pytest.raises(ember.TimeoutError, match=r"never sent(.|\n)*waited 0\.[3-9]"):
        timeout(lambda x: call(x), seconds=0.3)("queued")
    blocker.join()
    assert held


def test_timeout_validates_arguments():
    with pytest.raises(ValueError):
        timeout(lambda: None, seconds=0)
    with pytest.raises(TypeError):
        timeout(seconds=1)(None)
    with pytest.raises(TypeError, match=r"needs the seconds"):
        timeout(lambda: None)
    with pytest.raises(ValueError):
        timeout(lambda: None, -1)


def test_timeout_takes_its_seconds_positionally():
    """``timeout(fn, 0.1)`` and ``@timeout(0.1)`` as well as the keyword (both raised
    TypeError: seconds was keyword-only)."""
    sim.configure(latency=2.0)
    try:
        slow = lambda x: ember.models("sim", x).text  # noqa: E731
        for limited in (timeout(slow, 0.1), timeout(0.1)(slow), timeout(seconds=0.1)(slow)):
            start = time.monotonic()
            with pytest.raises(ember.TimeoutError):
                limited("a")
            assert time.monotonic() - start < 1.0
    finally:
        sim.configure(latency=0.0)


# ---- acceptance ------------------------------------------------------------------------------
def test_acceptance_40_calls_through_429s_and_503s(fault_server):
    rng = random.Random(5)
    lock = threading.Lock()

    def hook(rec):
        with lock:
            r = rng.random()
        if r < 0.15:
            return Fault("rate_limit", retry_after=1, retry_after_ms=200)
        return "overloaded" if r < 0.25 else None

    fault_server.hook = hook
    safe = retry(lambda i: call(f"item {i}"), max_attempts=10, initial_delay=0.02)
    results = ember.vmap(safe)(list(range(40)))
    assert [r.text for r in results] == [f"echo: item {i}" for i in range(40)]
    codes = statuses(fault_server)
    assert codes.count(200) == 40 and codes.count(429) >= 3 and codes.count(503) >= 3
    gaps = retry_gaps(fault_server)
    assert all(gap >= asked for asked, gap in gaps), gaps


@pytest.mark.parametrize("call, meant", [
    (lambda: ember.retry(attempts=3), "max_attempts"),
    (lambda: ember.retry(max_retries=3), "max_attempts"),
    (lambda: ember.retry(max_attemps=3), "max_attempts"),  # a typo: the closest spelling
    (lambda: ember.timeout(timeout=3), "seconds"),
    (lambda: ember.cache(expire=60), "ttl"),
    (lambda: ember.vmap(max_concurrency=8), "batch_size"),
    (lambda: ember.jit(full_graph=True), "fullgraph"),
    (lambda: ember.configure_limits("sim", requests_per_minute=60), "rpm"),
])
def test_a_misspelt_option_names_the_one_meant(call, meant):
    with pytest.raises(TypeError, match=rf"has no option '\w+' \(did you mean {meant}\?\)\. "
                                        rf"Its options: .*\b{meant}\b"):
        call()


def test_an_unknown_option_lists_the_options_and_known_ones_still_work():
    with pytest.raises(TypeError, match=r"^retry\(\) has no option 'colour'\. Its options: "
                                        r"max_attempts, initial_delay, max_delay, multiplier, "
                                        r"jitter\.$"):
        ember.retry(colour="red")
    assert ember.retry(max_attempts=2)(lambda: "ran")() == "ran"
    assert "max_attempts" in str(inspect.signature(ember.retry))  # help() shows the options


# ---- coalesced requests: every caller keeps its own limits ------------------------------
def test_a_shared_request_gives_each_caller_its_own_time_limit_and_cancellation():
    """Identical requests in flight are sent once; the owner's ember.timeout, or its
    cancellation, reached the callers sharing it (a caller with no time limit got
    'did not finish within the time limit')."""
    sim.configure(latency=0.3)
    results = {}

    def hasty():
        try:
            ember.timeout(lambda: ember.models("sim", "same question"), 0.1)()
        except ember.TimeoutError as exc:
            results["hasty"] = exc

    def patient():
        results["patient"] = ember.models("sim", "same question").text

    first = threading.Thread(target=hasty)
    first.start()
    time.sleep(0.03)
    second = threading.Thread(target=patient)
    second.start()
    first.join(), second.join()
    assert isinstance(results["hasty"], ember.TimeoutError)
    assert results["patient"] == ember.models("sim", "same question").text

    async def cancel_the_owner():
        owner = asyncio.create_task(ember.amodels("sim", "shared"))
        await asyncio.sleep(0.03)
        sharer = asyncio.create_task(ember.amodels("sim", "shared"))
        await asyncio.sleep(0.03)
        owner.cancel()
        return (await sharer).text

    assert asyncio.run(cancel_the_owner()) == ember.models("sim", "shared").text


def test_a_shared_rejection_is_every_callers():
    sent = []

    async def rejects(request):
        sent.append(request)
        await asyncio.sleep(0.1)
        raise ember.BadRequestError("refused", provider="picky", status=400)

    providers.register("picky", rejects)
    try:
        async def both():
            return await asyncio.gather(
                *(ember.amodels("picky/m", "refused prompt", temperature=0) for _ in range(2)),
                return_exceptions=True)

        errors = asyncio.run(both())
        assert all(isinstance(e, ember.BadRequestError) for e in errors)
        assert len(sent) == 1  # a 400 is the same for everyone: sent once
    finally:
        providers._custom.pop("picky", None)
        providers._instances.pop("picky", None)


def test_duplicates_share_a_failure_their_common_retry_policy_gave_up_on():
    """During an outage, identical requests in flight share the owner's final failure
    when their retry policies are the same (each sharer spent its own attempts in turn:
    30 requests and 11.7 s for 10 duplicates). Another policy still sends its own."""
    sent = []

    async def down(request):
        sent.append(request)
        await asyncio.sleep(0.05)
        raise ServerError("503", provider="down", status=503)

    providers.register("down", down)
    try:
        ask = retry(lambda x: ember.models("down/m", x, temperature=0).text,
                    max_attempts=2, initial_delay=0.01)
        start = time.monotonic()
        out = ember.vmap(ask, return_exceptions=True)(["q"] * 10)
        assert all(isinstance(e, ServerError) for e in out)
        assert len(sent) == 2 and time.monotonic() - start < 1.0

        @retry(max_attempts=1)
        async def one():
            return await ember.amodels("down/m", "p", temperature=0)

        @retry(max_attempts=4, initial_delay=0.01)
        async def more():
            return await ember.amodels("down/m", "p", temperature=0)

        async def two_policies():
            return await asyncio.gather(one(), more(), return_exceptions=True)

        sent.clear()
        asyncio.run(two_policies())
        assert len(sent) == 1 + 4  # the first policy's attempt, then the second's own
    finally:
        providers._custom.pop("down", None)
        providers._instances.pop("down", None)
