"""The built-in simulated model: determinism, sampling, tokens, price, latency, faults, JSON."""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import statistics
import subprocess
import sys

import pydantic
import pytest

import ember
from ember import errors
from ember._request import build_request
from ember.backends.policy import CallOptions, RetryPolicy, options_var
from ember.backends.record import recording
from ember.backends.limits import limiter
from ember.providers import prices, sim
from ember.providers.sim import SimProvider, estimate_tokens


def _reset_limiter():
    # admission state (AIMD cuts after a 429, learned limits) must not leak between tests
    reset = getattr(limiter, "reset", None)
    if reset is not None:
        reset()


@pytest.fixture(autouse=True)
def _reset_sim():
    sim.reset_stats()
    _reset_limiter()
    yield
    sim.configure(latency=0, error_rate=0, fail_on=None, context_window=128_000, seed=0)
    sim.reset_stats()
    _reset_limiter()


@pytest.fixture
def no_retry():
    token = options_var.set(CallOptions(retry=RetryPolicy(max_attempts=1)))
    yield
    options_var.reset(token)


def req(prompt="hello", model="", **params):
    return build_request("sim", model, prompt, params)


def run(coro):
    return asyncio.run(coro)


# --------------------------------------------------------------- determinism


def test_same_prompt_same_text_different_prompt_different_text():
    a, b = ember.models("sim", "What is 2+2?"), ember.models("sim", "What is 2+2?")
    c = ember.models("sim", "What is 3+3?")
    assert a.text == b.text and a == b
    assert c.text != a.text
    assert a.model == "sim" and a.finish_reason == "stop"
    assert a.text.endswith(".") and len(a.text.split()) >= 12


def test_text_depends_on_model_name_and_system():
    base = ember.models("sim", "hello").text
    assert ember.models("sim/large", "hello").text != base
    assert ember.models("sim/large", "hello").model == "sim/large"
    assert ember.models("sim", "hello", system="You are terse.").text != base


def test_prompt_words_appear_in_the_answer():
    text = ember.models("sim", "zebras zebras zebras zebras zebras zebras zebras zebras").text
    assert "zebras" in text


def test_messages_list_prompt():
    msgs = [{"role": "system", "content": "Be kind."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "How are you?"}]
    r = ember.models("sim", msgs)
    assert sim.stats().prompts[-1] == "Be kind.\nHi\nHello!\nHow are you?"
    assert r.text == ember.models("sim", msgs).text
    assert r.text != ember.models("sim", msgs[:2]).text
    assert sim.stats().prompts[-1] == "Be kind.\nHi"
    # three messages remain after the system message is lifted out
    assert r.usage.input_tokens == estimate_tokens("Be kind.\nHi\nHello!\nHow are you?") + 3 * 4


def test_seed_changes_every_answer_reproducibly():
    base = ember.models("sim", "hello").text
    sim.configure(seed=1)
    other = ember.models("sim", "hello").text
    assert other != base
    sim.configure(seed=0)
    assert ember.models("sim", "hello").text == base


# ------------------------------------------------------------------ sampling


def test_sampled_calls_differ_across_calls():
    texts = [ember.models("sim", "Write a haiku", temperature=0.8).text for _ in range(4)]
    assert len(set(texts)) == 4
    assert sim.stats().requests == 4


def test_sampled_sequence_restarts_after_reset_stats():
    first = [ember.models("sim", "poem", temperature=1.0).text for _ in range(2)]
    sim.reset_stats()
    again = [ember.models("sim", "poem", temperature=1.0).text for _ in range(2)]
    assert first == again


def test_n_samples_are_distinct_and_sent_in_one_request():
    rs = ember.models("sim", "Name a color", temperature=1.0, n=5)
    assert isinstance(rs, list) and len(rs) == 5
    assert all(isinstance(r, ember.Response) for r in rs)
    assert len({r.text for r in rs}) == 5
    st = sim.stats()
    assert (st.requests, st.completions) == (1, 5)
    # the next sampled call continues the sequence instead of repeating a sample
    nxt = ember.models("sim", "Name a color", temperature=1.0)
    assert nxt.text not in {r.text for r in rs}


def test_deterministic_n_gives_identical_answers_in_one_request():
    rs = ember.models("sim", "Name a color", n=3)
    assert len(rs) == 3 and len({r.text for r in rs}) == 1
    assert sim.stats().requests == 1


def test_a_seed_makes_a_sampled_call_deterministic():
    a = ember.models("sim", "dice", temperature=1.5, seed=7)
    b = ember.models("sim", "dice", temperature=1.5, seed=7)
    c = ember.models("sim", "dice", temperature=1.5, seed=8)
    assert a.text == b.text != c.text


def test_default_is_greedy():
    assert SimProvider.default_temperature == 0.0
    assert req().deterministic(SimProvider.default_temperature)
    assert not req(temperature=0.5).deterministic(SimProvider.default_temperature)


# ------------------------------------------------------------ tokens and price


@pytest.mark.parametrize("prompt", ["hi", "x" * 401, "The quick brown fox jumps over the lazy dog. " * 20])
def test_token_counts_are_about_four_characters_a_token(prompt):
    r = ember.models("sim", prompt)
    assert r.usage.input_tokens == math.ceil(len(prompt) / 4) + 4
    assert r.usage.output_tokens == math.ceil(len(r.text) / 4)
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens


def test_estimate_tokens():
    assert estimate_tokens("") == 1 and estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2 and estimate_tokens("a" * 400) == 100


def test_price_gives_cost():
    r = ember.models("sim", "What does this cost?")
    p = prices.price_for("sim", "")
    expected = (r.usage.input_tokens * p.input + r.usage.output_tokens * p.output) / 1e6
    assert r.cost == pytest.approx(expected) and r.cost > 0
    with recording() as rec:
        ember.models("sim", "another call")
    assert rec.calls[0].cost == pytest.approx(
        (rec.calls[0].input_tokens * p.input + rec.calls[0].output_tokens * p.output) / 1e6)


def test_max_tokens_truncates_with_finish_reason_length():
    r = ember.models("sim", "Write at length", max_tokens=3)
    assert r.finish_reason == "length" and r.usage.output_tokens == 3
    assert len(r.text) <= 12
    assert ember.models("sim", "Write at length", max_tokens=500).finish_reason == "stop"


# ------------------------------------------------------------------- latency


def test_fixed_latency_is_reported():
    sim.configure(latency=0.01)
    r = ember.models("sim", "slow one")
    assert r.latency == pytest.approx(0.01)
    sim.configure(latency=("fixed", 0.02, 0))
    assert ember.models("sim", "slow two").latency == pytest.approx(0.02)


def test_uniform_latency_within_bounds():
    sim.configure(latency=("uniform", 0.001, 0.004))
    lat = [ember.models("sim", f"u{i}").latency for i in range(5)]
    assert all(0.001 <= x <= 0.004 for x in lat)
    assert len(set(lat)) > 1


def test_lognormal_latency_median_and_p95():
    rng = random.Random(1)
    xs = sorted(sim._sample_latency(("lognormal", 0.2, 0.6), rng) for _ in range(20_000))
    assert statistics.median(xs) == pytest.approx(0.2, rel=0.05)
    assert xs[int(0.95 * len(xs))] == pytest.approx(0.6, rel=0.07)
    assert min(xs) > 0


def test_lognormal_latency_end_to_end():
    sim.configure(latency=("lognormal", 0.002, 0.004))
    r = ember.models("sim", "lognormal")
    assert r.latency > 0


def test_zero_latency():
    assert ember.models("sim", "fast").latency == 0.0


@pytest.mark.parametrize("spec", [("bogus", 1, 2), ("uniform", 1), "slow", None])
def test_bad_latency_spec_is_rejected_by_configure(spec):
    with pytest.raises(ValueError):
        sim.configure(latency=spec)
    assert sim.configure().latency == 0  # unchanged


def test_configure_rejects_unknown_options():
    with pytest.raises(TypeError, match="no option 'speed'.*latency"):
        sim.configure(speed=2)


def test_latency_from_the_environment():
    code = "import ember; print(ember.models('sim', 'hi').latency)"
    env = {**os.environ, "EMBER_SIM_LATENCY": "0.015"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) == pytest.approx(0.015)


def test_a_malformed_latency_in_the_environment_names_the_variable():
    code = ("import ember\n"
            "try:\n"
            "    ember.models('sim', 'hi')\n"
            "except ember.ConfigurationError as exc:\n"
            "    print(exc.message)\n"
            "ember.providers.sim.configure(latency=0)  # a setting replaces the variable's\n"
            "print(ember.models('sim', 'hi').latency)\n")
    env = {**os.environ, "EMBER_SIM_LATENCY": "200ms"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr  # importing ember and sim did not fail
    message, latency = out.stdout.strip().splitlines()
    assert message.startswith("EMBER_SIM_LATENCY='200ms' is not a latency in seconds")
    assert "such as 0.2" in message and float(latency) == 0


@pytest.mark.parametrize("value,expected", [("", 0.5), (" 0.2 ", 0.2), ("0", 0.0),
                                            ("200ms", None), ("-1", None), ("nan", None),
                                            ("inf", None)])
def test_env_latency(monkeypatch, value, expected):
    monkeypatch.setenv("EMBER_SIM_LATENCY", value)
    if expected is None:
        with pytest.raises(errors.ConfigurationError, match="EMBER_SIM_LATENCY="):
            sim.env_latency(default=0.5)
    else:
        assert sim.env_latency(default=0.5) == expected


def test_concurrent_calls_overlap():
    sim.configure(latency=0.05)

    async def many():
        return await asyncio.gather(*(ember.amodels("sim", f"q{i}") for i in range(4)))

    rs = run(many())
    assert len(rs) == 4
    st = sim.stats()
    assert (st.requests, st.max_in_flight, st.in_flight) == (4, 4, 0)


# -------------------------------------------------------------------- faults


def test_error_rate_one_always_fails_with_a_transient_error():
    sim.configure(error_rate=1.0)
    for _ in range(10):
        with pytest.raises((errors.RateLimitError, errors.ServerError)) as info:
            run(SimProvider().complete(req()))
        assert info.value.transient and info.value.provider == "sim"
        assert info.value.status in (429, 503)


def test_error_rate_fraction_is_reproducible_with_a_seed():
    def outcomes():
        sim.configure(error_rate=0.5, seed=11)
        out = []
        for _ in range(40):
            try:
                run(SimProvider().complete(req()))
                out.append("ok")
            except (errors.RateLimitError, errors.ServerError) as exc:
                out.append(type(exc).__name__)
        return out

    first = outcomes()
    assert set(first) == {"ok", "RateLimitError", "ServerError"}
    assert 8 <= first.count("ok") <= 32
    assert outcomes() == first


def test_error_rate_through_models(no_retry):
    sim.configure(error_rate=1.0)
    with pytest.raises((errors.RateLimitError, errors.ServerError)) as info:
        ember.models("sim", "flaky")
    assert "'sim'" in str(info.value) and __file__ in str(info.value)


def test_fail_on_fails_matching_prompts_only():
    sim.configure(fail_on="FORBIDDEN")
    with pytest.raises(errors.BadRequestError, match="FORBIDDEN") as info:
        ember.models("sim", "this has a FORBIDDEN word")
    assert not info.value.transient and info.value.status == 400
    assert sim.stats().requests == 1  # a 400 is never retried
    assert ember.models("sim", "this is fine").text
    with pytest.raises(errors.BadRequestError):  # the system prompt counts too
        ember.models("sim", "fine", system="FORBIDDEN system")


def test_context_window_error_from_the_model():
    sim.configure(context_window=50)
    with pytest.raises(errors.ContextLengthError, match="context window of 50") as info:
        run(SimProvider().complete(req("x" * 400)))
    assert isinstance(info.value, errors.BadRequestError) and not info.value.transient
    assert sim.stats().requests == 1
    assert ember.models("sim", "x" * 100).text


def test_configured_context_window_is_checked_before_sending():
    sim.configure(context_window=50)
    with pytest.raises(errors.ContextLengthError, match="accepts 50"):
        ember.models("sim", "x" * 400)
    assert sim.stats().requests == 0
    sim.configure(context_window=1_000_000)  # a larger window lets a long prompt through
    assert ember.models("sim", "x" * 1_000_000).usage.input_tokens > 128_000


def test_oversized_prompt_is_refused_before_sending():
    with pytest.raises(errors.ContextLengthError, match="128,000"):
        ember.models("sim", "x" * 1_000_000)
    assert sim.stats().requests == 0


# ---------------------------------------------------------------------- JSON


def test_json_when_asked_with_response_format():
    r = ember.models("sim", "Classify this review: great phone", response_format="json")
    value = json.loads(r.text)
    assert set(value) == {"answer", "confidence"} and 0.5 <= value["confidence"] <= 0.99
    assert r.json() == value


def test_json_when_the_prompt_asks_for_json():
    value = ember.models("sim", "Reply in JSON: what is the capital of France?").json()
    assert isinstance(value, dict) and "answer" in value


def test_json_list_prompts_get_a_list():
    r = ember.models("sim", "Return a JSON list of fruits: apple, banana, cherry, mango")
    value = json.loads(r.text)
    assert isinstance(value, list) and 2 <= len(value) <= 4
    assert all(isinstance(v, str) and v[0].isupper() for v in value)
    arr = ember.models("sim", "Give a json array of planets: mars venus earth", temperature=1).json()
    assert isinstance(arr, list) and arr


class Review(pydantic.BaseModel):
    sentiment: str
    stars: int
    helpful: bool
    score: float
    tags: list[str]


class Part(pydantic.BaseModel):
    name: str
    count: int


class Node(pydantic.BaseModel):
    value: int
    children: list["Node"] = []


class Order(pydantic.BaseModel):
    parts: list[Part]
    priority: "Priority"
    note: int | None = None
    tree: Node


from enum import Enum  # noqa: E402


class Priority(str, Enum):
    low = "low"
    high = "high"


Order.model_rebuild()


@pytest.mark.parametrize("model", [Review, Order])
def test_json_schema_from_a_pydantic_model_validates(model):
    for i in range(5):
        r = ember.models("sim", f"Describe item {i}", response_format=model, temperature=1)
        obj = r.json(schema=model)
        assert isinstance(obj, model)


def test_json_schema_dict():
    schema = {"type": "object", "properties": {
        "city": {"type": "string"}, "population": {"type": "integer"},
        "coastal": {"type": "boolean"}, "kind": {"enum": ["town", "city"]},
        "mayor": {"type": ["string", "null"]}, "zip": {"const": "00000"},
        "unknown": {"type": "null"}}}
    value = ember.models("sim", "A city", response_format=schema).json()
    assert set(value) == set(schema["properties"])
    assert isinstance(value["city"], str) and isinstance(value["population"], int)
    assert isinstance(value["coastal"], bool) and value["kind"] in ("town", "city")
    assert isinstance(value["mayor"], str) and value["zip"] == "00000" and value["unknown"] is None


def test_openai_style_json_schema_format():
    fmt = {"type": "json_schema", "json_schema": {"name": "pt", "schema": {
        "type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}}}}}
    value = ember.models("sim", "a point", response_format=fmt).json()
    assert set(value) == {"x", "y"} and all(isinstance(v, float) for v in value.values())


def test_unresolvable_ref_gives_a_string():
    schema = {"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}}}
    value = ember.models("sim", "refs", response_format=schema).json()
    assert isinstance(value["a"], str)


# ---------------------------------------------------------------- batch, stats


def test_complete_batch_is_one_round_trip():
    out = run(SimProvider().complete_batch([req("a"), req("b", n=2, temperature=1), req("c")]))
    assert [len(rs) for rs in out] == [1, 2, 1]
    st = sim.stats()
    assert (st.requests, st.completions) == (1, 4)
    assert st.prompts == ["a", "b", "c"]


def test_a_batch_refuses_a_bad_prompt_alone():
    """One round trip answers the others; the refused prompt's error is in its place
    (a batch failed as a whole, and dispatch sent it again prompt by prompt)."""
    sim.configure(fail_on="bad")
    good, bad = run(SimProvider().complete_batch([req("good"), req("bad")]))
    assert good[0].text and isinstance(bad, errors.BadRequestError)
    st = sim.stats()
    assert (st.requests, st.completions, st.in_flight, st.prompts) == (1, 1, 0, ["good"])
    with pytest.raises(errors.BadRequestError):  # (alone: raised)
        run(SimProvider().complete_batch([req("bad")]))


def test_reset_stats():
    ember.models("sim", "count me")
    assert sim.stats().requests == 1 and sim.stats().prompts == ["count me"]
    sim.reset_stats()
    st = sim.stats()
    assert (st.requests, st.completions, st.max_in_flight, st.prompts) == (0, 0, 0, [])


def test_stats_keep_the_latest_prompts_not_all_of_them(monkeypatch):
    """A long run on sim holds a bounded number of prompts (the latest, in order)."""
    monkeypatch.setattr(sim, "MAX_PROMPTS", 3)
    run(SimProvider().complete_batch([req(f"p{i}") for i in range(7)]))
    assert sim.stats().prompts == [f"p{i}" for i in range(4, 7)]  # trimmed at 7 > 2 * 3
    run(SimProvider().complete_batch([req(f"q{i}") for i in range(3)]))
    assert sim.stats().prompts == ["p4", "p5", "p6", "q0", "q1", "q2"]  # 6: not yet
    assert sim.stats().requests == 2
