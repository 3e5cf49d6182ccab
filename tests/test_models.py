"""`models()` / `amodels()` end to end: real SDKs against loopback servers, and sim.

Every bad input raises its clear `EmberError` before anything is sent, and the API
key never shows up in an error, a request or a response.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import subprocess
import threading
import traceback

import pydantic
import pytest
from servers import ANTHROPIC_KEY, OPENAI_KEY, Fault  # noqa: F401

import ember
from ember import errors
from ember._request import build_request
from ember.backends.limits import limiter
from ember.providers import prices, sim


def _reset_limiter():
    # rate limits learned from one loopback server's headers must not slow the next test
    reset = getattr(limiter, "reset", None)
    if reset is not None:
        reset()


@pytest.fixture(autouse=True)
def _reset_sim():
    _reset_limiter()
    yield
    sim.configure(latency=0, error_rate=0, fail_on=None)
    sim.reset_stats()
    _reset_limiter()


class Verdict(pydantic.BaseModel):
    label: str
    score: float


VERDICT_SCHEMA = {"title": "verdict", "type": "object",
                  "properties": {"label": {"type": "string"}, "score": {"type": "number"}},
                  "required": ["label", "score"]}


def in_thread(fn, timeout=20.0):
    """Run ``fn`` in a fresh thread; fail (instead of hanging) if it deadlocks."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(fn)
        try:
            return fut.result(timeout=timeout)
        except concurrent.futures.TimeoutError:  # pragma: no cover - the failure mode
            pytest.fail(f"deadlock: no answer within {timeout}s")


# ------------------------------------------------------------------ end to end


def test_openai_end_to_end(openai_server):
    r = ember.models("gpt-4o-mini", "hi")
    assert isinstance(r, ember.Response)
    assert r.text == str(r) == "echo: hi"
    assert r.model == "openai/gpt-4o-mini" and r.finish_reason == "stop"
    [rec] = openai_server.requests
    usage = rec.response["usage"]
    assert tuple(r.usage) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert r.cost == pytest.approx(prices.cost_of("openai", "gpt-4o-mini", *r.usage)) and r.cost > 0
    assert r.latency > 0
    assert rec.path == "/v1/chat/completions"
    assert rec.body["model"] == "gpt-4o-mini"
    assert rec.body["messages"] == [{"role": "user", "content": "hi"}]
    assert rec.headers["authorization"] == f"Bearer {OPENAI_KEY}"


def test_anthropic_end_to_end(anthropic_server):
    r = ember.models("claude-3-5-haiku-latest", "hi")
    assert r.text == "echo: hi" and r.model == "anthropic/claude-3-5-haiku-latest"
    assert r.finish_reason == "stop"
    [rec] = anthropic_server.requests
    assert rec.path == "/v1/messages"
    assert rec.body["model"] == "claude-3-5-haiku-latest"
    assert rec.body["messages"] == [{"role": "user", "content": "hi"}]
    assert rec.body["max_tokens"] == 1024  # Anthropic requires it: Ember fills a default
    assert r.usage.input_tokens == rec.response["usage"]["input_tokens"]
    assert r.cost == pytest.approx(prices.cost_of("anthropic", "claude-3-5-haiku-latest", *r.usage))


def test_explicit_provider_prefixes(openai_server, anthropic_server):
    assert ember.models("openai/gpt-4o-mini", "a").text == "echo: a"
    assert ember.models("openai:gpt-4o", "b").model == "openai/gpt-4o"
    assert ember.models("anthropic/claude-haiku-4-5", "c").text == "echo: c"
    assert [r.body["model"] for r in openai_server.requests] == ["gpt-4o-mini", "gpt-4o"]
    assert anthropic_server.requests[0].body["model"] == "claude-haiku-4-5"


# ---------------------------------------------------------------- parameters


def test_openai_params_are_normalized(openai_server):
    ember.models("gpt-4o-mini", "hi", system="Be terse.", temperature=0.2, max_tokens=50,
                 seed=7, stop="\n", top_p=0.9)
    body = openai_server.requests[0].body
    assert body["messages"] == [{"role": "system", "content": "Be terse."},
                                {"role": "user", "content": "hi"}]
    assert (body["temperature"], body["max_tokens"], body["seed"], body["top_p"]) == (0.2, 50, 7, 0.9)
    assert body["stop"] == ["\n"]  # one stop string becomes a list
    assert "response_format" not in body and "n" not in body


def test_anthropic_params_are_normalized(anthropic_server):
    ember.models("claude-3-5-haiku-latest", "hi", system="Be terse.", temperature=0.2,
                 max_tokens=50, seed=7, stop="END")
    body = anthropic_server.requests[0].body
    assert body["system"] == "Be terse."
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert (body["temperature"], body["max_tokens"]) == (0.2, 50)
    assert body["stop_sequences"] == ["END"]
    assert "seed" not in body and "stop" not in body  # no Anthropic equivalent


def test_passthrough_params_reach_the_provider(openai_server):
    ember.models("gpt-4o-mini", "hi", user="u-123", logit_bias={"50256": -100})
    body = openai_server.requests[0].body
    assert body["user"] == "u-123" and body["logit_bias"] == {"50256": -100}
    ember.models("gpt-4o-mini", "hi", extra_body={"top_k": 5})  # merged, as the SDK does
    assert openai_server.requests[1].body["top_k"] == 5
    assert "extra_body" not in openai_server.requests[1].body


@pytest.mark.parametrize("fmt, expected", [
    ("json", {"type": "json_object"}),
    ({"type": "json_object"}, {"type": "json_object"}),
    (Verdict, {"type": "json_schema", "json_schema": {
        "name": "Verdict", "schema": Verdict.model_json_schema(), "strict": False}}),
    (VERDICT_SCHEMA, {"type": "json_schema", "json_schema": {
        "name": "verdict", "schema": VERDICT_SCHEMA, "strict": False}}),
    ({"type": "json_schema", "json_schema": {"name": "v", "schema": VERDICT_SCHEMA}},
     {"type": "json_schema", "json_schema": {"name": "v", "schema": VERDICT_SCHEMA, "strict": False}}),
    # (the caller's strict is kept; it was sent as false)
    ({"type": "json_schema", "json_schema": {"name": "v", "schema": VERDICT_SCHEMA,
                                             "strict": True}},
     {"type": "json_schema", "json_schema": {"name": "v", "schema": VERDICT_SCHEMA, "strict": True}}),
    ("text", None),
    ({"type": "text"}, None),  # (it was sent as a JSON schema {"type": "text"})
    (None, None),
])
def test_openai_response_format(openai_server, fmt, expected):
    ember.models("gpt-4o-mini", "hi", response_format=fmt)
    assert openai_server.requests[0].body.get("response_format") == expected


def test_anthropic_response_format_becomes_a_system_instruction(anthropic_server):
    ember.models("claude-3-5-haiku-latest", "hi", system="Judge.", response_format=Verdict)
    system = anthropic_server.requests[0].body["system"]
    assert system.startswith("Judge.") and "only one valid JSON value" in system
    assert '"score"' in system  # the schema itself is included
    assert "response_format" not in anthropic_server.requests[0].body
    ember.models("claude-3-5-haiku-latest", "hi", response_format={"type": "text"})
    assert "system" not in anthropic_server.requests[1].body  # plain text: no instruction


def test_messages_list_prompt(openai_server, anthropic_server):
    msgs = [{"role": "system", "content": "You are a poet."},
            {"role": "user", "content": "Rhyme with cat."},
            {"role": "assistant", "content": "Hat."},
            {"role": "user", "content": "Another?"}]
    assert ember.models("gpt-4o-mini", msgs).text == "echo: Another?"
    assert openai_server.requests[0].body["messages"] == msgs
    assert ember.models("claude-3-5-haiku-latest", msgs, system="Be brief.").text == "echo: Another?"
    body = anthropic_server.requests[0].body
    assert body["system"] == "Be brief.\nYou are a poet."
    assert body["messages"] == msgs[1:]


def test_a_tuple_of_messages_and_a_response_as_content(openai_server):
    first = ember.models("gpt-4o-mini", "one")
    ember.models("gpt-4o-mini", ({"role": "user", "content": first},))
    ember.models("gpt-4o-mini", first)  # a Response as the prompt itself
    assert [r.body["messages"][-1]["content"] for r in openai_server.requests[1:]] == [
        "echo: one", "echo: one"]


def test_n_returns_a_list_from_one_openai_request(openai_server):
    rs = ember.models("gpt-4o-mini", "hi", n=3)
    assert isinstance(rs, list) and [r.text for r in rs] == ["echo: hi", "echo 1: hi", "echo 2: hi"]
    assert len(openai_server.requests) == 1 and openai_server.requests[0].body["n"] == 3
    assert ember.models("gpt-4o-mini", "hi", n=1).text == "echo: hi"  # n=1: one Response


def test_n_on_anthropic_sends_n_requests(anthropic_server):
    rs = ember.models("claude-3-5-haiku-latest", "hi", n=3)
    assert isinstance(rs, list) and len(rs) == 3
    assert len(anthropic_server.requests) == 3


# ------------------------------------------------------------- async and loops


def test_amodels_inside_asyncio_run(openai_server):
    async def main():
        one = await ember.amodels("gpt-4o-mini", "a")
        many = await asyncio.gather(*(ember.amodels("gpt-4o-mini", f"q{i}") for i in range(5)))
        several = await ember.amodels("gpt-4o-mini", "s", n=2)
        local = await ember.amodels("sim", "offline")
        return one, many, several, local

    one, many, several, local = in_thread(lambda: asyncio.run(main()))
    assert one.text == "echo: a"
    assert [r.text for r in many] == [f"echo: q{i}" for i in range(5)]
    assert [r.text for r in several] == ["echo: s", "echo 1: s"]
    assert local.model == "sim"
    assert len(openai_server.requests) == 7


def test_amodels_errors_propagate():
    async def main():
        await ember.amodels("sim", 123)

    with pytest.raises(errors.ConfigurationError, match="prompt must be"):
        asyncio.run(main())


def test_sync_models_inside_a_running_event_loop(openai_server):
    async def main():
        asyncio.get_running_loop()  # really inside a running loop
        return ember.models("gpt-4o-mini", "from a coroutine"), ember.models("sim", "and sim")

    r, s = in_thread(lambda: asyncio.run(main()))
    assert r.text == "echo: from a coroutine" and s.model == "sim"


def test_sync_models_from_many_threads(openai_server):
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(lambda i: ember.models("gpt-4o-mini", f"t{i}").text, range(16)))
    assert texts == [f"echo: t{i}" for i in range(16)]


def test_models_repeated_across_event_loops(openai_server):
    for i in range(3):  # each asyncio.run is a new loop; Ember's own loop serves them all
        assert asyncio.run(ember.amodels("gpt-4o-mini", f"r{i}")).text == f"echo: r{i}"


def test_blocking_call_on_embers_own_loop_is_a_clear_error(monkeypatch):
    from ember import providers

    async def nested(request):
        return ember.models("sim", "inner").text  # blocking call on Ember's loop

    providers.register("nestedsync", nested)
    try:
        with pytest.raises(RuntimeError, match="await ember.amodels"):
            ember.models("nestedsync/m", "outer")
    finally:
        providers._custom.pop("nestedsync", None)
        providers._instances.pop("nestedsync", None)


def test_amodels_on_embers_own_loop_works():
    from ember import providers

    async def nested(request):
        inner = await ember.amodels("sim", "inner")
        return f"wrapped {inner.text}"

    providers.register("nestedasync", nested)
    try:
        r = ember.models("nestedasync/m", "outer")
        assert r.text == "wrapped " + ember.models("sim", "inner").text
    finally:
        providers._custom.pop("nestedasync", None)
        providers._instances.pop("nestedasync", None)


# ---------------------------------------------------------------------- JSON


def test_json_on_a_schema_constrained_answer_openai(openai_server):
    openai_server.answer = lambda body, i: json.dumps({"label": "positive", "score": 0.75})
    r = ember.models("gpt-4o-mini", "Rate: I love it", response_format=Verdict)
    assert r.json() == {"label": "positive", "score": 0.75}
    v = r.json(schema=Verdict)
    assert isinstance(v, Verdict) and v.score == 0.75
    r2 = ember.models("gpt-4o-mini", "Rate: meh", response_format=VERDICT_SCHEMA)
    assert r2.json() == {"label": "positive", "score": 0.75}


def test_json_mode_default_answer(openai_server, anthropic_server):
    assert ember.models("gpt-4o-mini", "hi", response_format="json").json() == {
        "echo": "hi", "index": 0}
    assert ember.models("claude-3-5-haiku-latest", "yo", response_format="json").json() == {
        "echo": "yo", "index": 0}


@pytest.mark.parametrize("fmt", [Verdict, VERDICT_SCHEMA])
def test_json_on_a_schema_constrained_answer_sim(fmt):
    r = ember.models("sim", "Rate: I love it", response_format=fmt)
    value = r.json()
    assert set(value) == {"label", "score"}
    assert isinstance(value["label"], str) and isinstance(value["score"], float)
    assert isinstance(r.json(schema=Verdict), Verdict)


def test_json_on_prose_raises_parse_error_showing_the_text(openai_server):
    r = ember.models("gpt-4o-mini", "tell me a story")
    with pytest.raises(ember.ParseError) as info:
        r.json()
    assert "Text was: echo: tell me a story" in str(info.value)
    assert info.value.text == "echo: tell me a story"


def test_code_fenced_json_parses(openai_server, anthropic_server):
    fenced = '```json\n{"label": "ok", "score": 1.0}\n```'
    openai_server.answer = lambda body, i: fenced
    anthropic_server.answer = lambda body, i: "Here you go:\n" + fenced
    assert ember.models("gpt-4o-mini", "x").json() == {"label": "ok", "score": 1.0}
    assert ember.models("claude-3-5-haiku-latest", "x").json(schema=Verdict) == Verdict(
        label="ok", score=1.0)


# ------------------------------------------------------------------ bad input


def _refused(server, *args, match, **kwargs):
    with pytest.raises(errors.ConfigurationError, match=match) as info:
        ember.models(*args, **kwargs)
    assert server.requests == []  # nothing was sent
    assert not isinstance(info.value, errors.ProviderError)
    return info.value


@pytest.mark.parametrize("value", [-0.1, 2.5, "hot", float("nan"), True, [0.5]])
def test_bad_temperature(openai_server, value):
    _refused(openai_server, "gpt-4o-mini", "hi", temperature=value,
             match=r"`temperature` must be a number in \[0, 2\]")


@pytest.mark.parametrize("value", [0, -5, 1.5, "10", True])
def test_bad_max_tokens(openai_server, value):
    _refused(openai_server, "gpt-4o-mini", "hi", max_tokens=value,
             match="`max_tokens` must be a positive integer")


@pytest.mark.parametrize("value", [0, -1, 2.0, "3", True, None])
def test_bad_n(openai_server, value):
    _refused(openai_server, "gpt-4o-mini", "hi", n=value, match="`n` must be a positive integer")


@pytest.mark.parametrize("prompt, kind", [
    (123, "int"), (None, "NoneType"), (b"bytes", "bytes"), ({"role": "user", "content": "x"}, "dict"),
    (3.5, "float"),
])
def test_bad_prompt_type(openai_server, prompt, kind):
    _refused(openai_server, "gpt-4o-mini", prompt,
             match=f"prompt must be a string or a list of .*got {kind}")


@pytest.mark.parametrize("prompt, match", [
    ([], "empty list of messages"),
    ([{"role": "user"}], "Message 0 must be a dict with 'role' and 'content'"),
    ([{"content": "x"}], "Message 0 must be a dict"),
    ([{"role": "user", "content": "ok"}, "not a dict"], "Message 1 must be a dict.*'not a dict'"),
    ([("user", "x")], "Message 0 must be a dict"),
    ([{"role": "user", "content": 5}], "Message 0 content must be a string, got int"),
    ([{"role": "user", "content": None}], "content must be a string, got NoneType"),
    ([{"role": "system", "content": "only a system message"}], "no user message"),
])
def test_bad_messages(openai_server, prompt, match):
    _refused(openai_server, "gpt-4o-mini", prompt, match=match)


def test_bad_message_repr_is_truncated(openai_server):
    err = _refused(openai_server, "gpt-4o-mini", ["x" * 1000], match="Message 0")
    assert len(str(err)) < 300


@pytest.mark.parametrize("params, match", [
    ({"system": 5}, "`system` must be a string, got int"),
    ({"response_format": "yaml"}, "response_format must be 'json', a JSON schema"),
    ({"response_format": 42}, "response_format must be"),
    ({"logit_bias": {1, 2}}, "Parameter 'logit_bias' has a value of type set"),
    ({"metadata": object()}, "Parameter 'metadata' has a value of type object"),
])
def test_bad_params(openai_server, params, match):
    _refused(openai_server, "gpt-4o-mini", "hi", match=match, **params)


def test_bad_input_to_amodels_is_the_same_error():
    with pytest.raises(errors.ConfigurationError, match="`n` must be"):
        asyncio.run(ember.amodels("sim", "hi", n=0))


def test_oversized_prompt_is_refused_before_sending(openai_server, anthropic_server):
    prompt = "x" * 1_000_000
    with pytest.raises(ember.ContextLengthError) as info:
        ember.models("gpt-4o-mini", prompt)
    msg = str(info.value)
    assert "openai/gpt-4o-mini" in msg and "128,000" in msg and "250,004" in msg
    assert isinstance(info.value, errors.BadRequestError) and not info.value.transient
    assert __file__ in msg  # the caller's own line
    assert openai_server.requests == []
    with pytest.raises(ember.ContextLengthError, match="200,000"):
        ember.models("claude-3-5-haiku-latest", prompt)
    assert anthropic_server.requests == []


def test_context_length_error_from_the_server(openai_server):
    openai_server.script("context_length")
    with pytest.raises(ember.ContextLengthError):
        ember.models("gpt-4o-mini", "short but the server says no")
    assert len(openai_server.requests) == 1  # not retried


def test_missing_openai_key_names_the_variable(openai_server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(ember.MissingAPIKeyError) as info:
        ember.models("gpt-4o-mini", "hi")
    err = info.value
    assert isinstance(err, ember.ConfigurationError)
    assert "OPENAI_API_KEY" in str(err) and err.env_var == "OPENAI_API_KEY"
    assert err.provider == "openai" and "'sim'" in str(err)
    assert openai_server.requests == []


def test_missing_anthropic_key_names_the_variable(anthropic_server, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with pytest.raises(ember.MissingAPIKeyError, match="ANTHROPIC_API_KEY") as info:
        ember.models("claude-3-5-haiku-latest", "hi")
    assert info.value.env_var == "ANTHROPIC_API_KEY"
    assert anthropic_server.requests == []


def test_missing_key_is_not_retried(openai_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "")
    with pytest.raises(ember.MissingAPIKeyError):
        asyncio.run(ember.amodels("gpt-4o-mini", "hi"))


def test_errors_name_the_model_and_the_callers_line(openai_server):
    openai_server.script("not_found")
    with pytest.raises(ember.ModelNotFoundError) as info:
        ember.models("gpt-4o-mini", "hi")
    msg = str(info.value)
    assert "raised by the call to model 'openai/gpt-4o-mini' at" in msg
    assert __file__ in msg


# ------------------------------------------------------------- secret hygiene


def _secret_free(secret, *objects):
    for obj in objects:
        assert secret not in str(obj) and secret not in repr(obj)


def test_api_key_never_appears_in_auth_errors(openai_server, anthropic_server):
    openai_server.script("auth")  # this server echoes the key in its message
    with pytest.raises(ember.AuthenticationError) as info:
        ember.models("gpt-4o-mini", "hi")
    err = info.value
    assert OPENAI_KEY in json.dumps(openai_server.requests[0].response)  # it really was echoed
    assert "OPENAI_API_KEY" in str(err) and err.status == 401
    _secret_free(OPENAI_KEY, err, err.args, err.message, err.headers)
    assert OPENAI_KEY not in "".join(traceback.format_exception(err))

    anthropic_server.script("auth")
    with pytest.raises(ember.AuthenticationError) as info:
        ember.models("claude-3-5-haiku-latest", "hi")
    _secret_free(ANTHROPIC_KEY, info.value, info.value.headers)
    assert ANTHROPIC_KEY not in "".join(traceback.format_exception(info.value))


@pytest.mark.parametrize("model,env", [("gpt-4o-mini", "OPENAI_API_KEY"),
                                       ("anthropic/claude-haiku-4-5", "ANTHROPIC_API_KEY"),
                                       ("local/m", "EMBER_LOCAL_API_KEY"), ("sim", None)])
def test_an_api_key_parameter_is_refused_and_never_shown(openai_server, model, env):
    secret = "sk-in-code-0123456789-SECRET"

    def ask(q):
        return ember.models(model, q, api_key=secret).text

    for run in (lambda: ask("hi"), lambda: ember.jit(ask)("hi")):
        with pytest.raises(errors.ConfigurationError, match="does not take api_key=") as info:
            run()
        assert (env or "takes no key") in str(info.value)
        assert "ember.providers.register" in str(info.value)
        _secret_free(secret, info.value)
    report = str(ember.inspect(ask, "hi"))  # (it reports where tracing stopped)
    assert "does not take api_key=" in report and secret not in report
    assert not openai_server.requests


def test_stream_true_is_refused_before_anything_is_sent(openai_server):
    """stream=True passed through: the server answered with events, taken for a
    malformed body, and the request was sent three times."""
    for run in (lambda: ember.models("gpt-4o-mini", "hi", stream=True),
                lambda: ember.jit(lambda q: ember.models("gpt-4o-mini", q, stream=True).text)("hi")):
        with pytest.raises(errors.ConfigurationError, match="does not take stream=True"):
            run()
    assert not openai_server.requests
    with pytest.raises(errors.ConfigurationError, match="api_key"):  # (stream=False: as given)
        ember.models("gpt-4o-mini", "hi", stream=False, api_key="sk-x")
    assert ember.models("gpt-4o-mini", "hi", stream=False).text == "echo: hi"


def test_extra_headers_are_refused_and_a_custom_provider_gets_both(openai_server):
    with pytest.raises(errors.ConfigurationError, match="does not take extra_headers="):
        ember.models("gpt-4o-mini", "hi", extra_headers={"x-key": "v"})
    seen = []

    async def mine(request):
        seen.append((request.param("api_key"), request.param("extra_headers")))
        return "ok"

    ember.providers.register("mycorp", mine)
    try:
        assert ember.models("mycorp/m", "hi", api_key="k", extra_headers={"a": "b"}).text == "ok"
    finally:
        ember.providers._custom.pop("mycorp", None)
        ember.providers.reset()
    assert seen == [("k", {"a": "b"})] and not openai_server.requests


def test_api_key_never_appears_in_requests_and_responses(openai_server):
    r = ember.models("gpt-4o-mini", "hi")
    req = build_request("openai", "gpt-4o-mini", "hi", {})
    _secret_free(OPENAI_KEY, r, r.to_dict(), req, req.key)


@pytest.mark.parametrize("fault", ["server", "rate_limit", "malformed", "bad_request", "quota"])
def test_api_key_never_appears_in_other_errors(openai_server, fault):
    from ember.backends.policy import CallOptions, RetryPolicy, options_var

    openai_server.script(Fault(fault, retry_after=0.01, message=f"bad thing {OPENAI_KEY}"),
                         *(["server"] * 5))
    token = options_var.set(CallOptions(retry=RetryPolicy(max_attempts=1)))
    try:
        with pytest.raises(errors.ProviderError) as info:
            ember.models("gpt-4o-mini", "hi")
    finally:
        options_var.reset(token)
    _secret_free(OPENAI_KEY, info.value, info.value.headers)
    assert OPENAI_KEY not in "".join(traceback.format_exception(info.value))


def test_threads_are_left_clean():
    ember.models("sim", "warm up")
    names = [t.name for t in threading.enumerate()]
    assert names.count("ember-loop") == 1  # one background loop, however many calls


# ---------------------------------------------------------------- request forms


def test_request_forms_graph_tuple_and_response_system():
    frozen = build_request("sim", "", (("system", "be kind"), ("user", "hi")), {})
    assert frozen.system == "be kind" and frozen.messages == (("user", "hi"),)
    sys_resp = ember.Response("from a response")
    req = build_request("sim", "", "hi", {"system": sys_resp})
    assert req.system == "from a response"
    both = build_request("sim", "", [{"role": "system", "content": "b"},
                                     {"role": "user", "content": "u"}], {"system": "a"})
    assert both.system == "a\nb"
    assert "hi" in repr(req) and "sim" in repr(req)
    long = build_request("sim", "", "y" * 100, {})
    assert "..." in repr(long) and len(repr(long)) < 80
    assert long.key == build_request("sim", "", "y" * 100, {"n": 3}).key  # n is not in the key
    assert long.key != build_request("sim", "", "y" * 99, {}).key


# ------------------------------------------------------------------- the runtime


def test_ctrl_c_while_waiting_cancels_the_call(monkeypatch):
    from ember import _runtime

    class Future:
        cancelled = False

        def result(self, timeout=None):
            raise KeyboardInterrupt

        def cancel(self):
            Future.cancelled = True

    def fake_submit(coro):
        coro.close()
        return Future()

    monkeypatch.setattr(_runtime, "submit", fake_submit)
    with pytest.raises(KeyboardInterrupt):
        ember.models("sim", "interrupted")
    assert Future.cancelled


def _poll(predicate, limit=5.0):
    import time

    end = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > end:
            return False
        time.sleep(0.005)
    return True


def test_cancelling_an_amodels_task_cancels_the_request():
    sim.configure(latency=30.0)

    async def main():
        task = asyncio.create_task(ember.amodels("sim", "very slow"))
        while sim.stats().in_flight == 0:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    in_thread(lambda: asyncio.run(main()))
    assert _poll(lambda: sim.stats().in_flight == 0)  # the request on Ember's loop stopped
    assert sim.stats().completions == 0


def test_cancelling_a_submitted_call_cancels_it_on_the_loop():
    from ember import _runtime

    sim.configure(latency=30.0)
    fut = _runtime.submit(ember.amodels("sim", "very slow, then cancelled"))
    assert _poll(lambda: sim.stats().in_flight == 1)
    assert fut.cancel()
    assert _poll(lambda: sim.stats().in_flight == 0)
    assert sim.stats().completions == 0
    sim.configure(latency=0.0)
    assert ember.models("sim", "the loop goes on").text  # the loop still serves calls


def test_a_call_cancelled_before_the_loop_starts_it_never_runs():
    import time

    from ember import _runtime

    ran = []

    async def work() -> None:
        ran.append(True)

    busy = threading.Event()
    _runtime.loop().call_soon_threadsafe(lambda: (busy.set(), time.sleep(0.3)))
    assert busy.wait(5)  # the loop is inside that callback: nothing else starts
    coro = work()
    fut = _runtime.submit(coro)
    assert fut.cancel()
    assert _poll(lambda: coro.cr_frame is None)  # closed unstarted
    assert ran == []


def test_a_submitted_call_runs_in_the_callers_context_and_hands_back_any_exception():
    import contextvars

    from ember import _runtime

    var = contextvars.ContextVar("var", default="unset")

    async def read() -> str:
        return var.get()

    async def leave() -> None:
        raise SystemExit(3)

    var.set("the caller's")
    assert _runtime.run_sync(read()) == "the caller's"
    with pytest.raises(SystemExit):  # the caller's to handle: it does not stop Ember's loop
        _runtime.submit(leave()).result(timeout=10)
    # (before, SystemExit stopped the loop thread and every later call hung)
    assert _runtime.submit(read()).result(timeout=10) == "the caller's"


def test_shutdown_closes_provider_clients_and_stops_the_loop(monkeypatch):
    from ember import _runtime, providers

    closed = []

    class Closable:
        async def aclose(self):
            closed.append(True)

    new = asyncio.new_event_loop()
    thread = threading.Thread(target=new.run_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(_runtime, "_loop", new)
    monkeypatch.setattr(_runtime, "_thread", thread)
    monkeypatch.setattr(providers, "_instances", {"x": Closable()})
    _runtime._shutdown()
    thread.join(5)
    assert not thread.is_alive() and closed == [True]
    assert _runtime._loop is None  # (a later call starts a new loop)
    new.close()
    monkeypatch.setattr(_runtime, "_loop", None)
    _runtime._shutdown()  # nothing to do without a loop


def test_on_loop():
    from ember import _runtime

    assert not _runtime.on_loop()
    assert asyncio.run_coroutine_threadsafe(_async_on_loop(), _runtime.loop()).result(5)


async def _async_on_loop():
    from ember import _runtime

    return _runtime.on_loop()


# ----------------------------------------------------------------------- errors


def test_where_notes_are_added_once():
    err = errors.ProviderError("failed", provider="p", model="p/m", status=500,
                               retry_after=1.5, headers={"x": "y"})
    assert (err.provider, err.model, err.status, err.retry_after, err.headers) == (
        "p", "p/m", 500, 1.5, {"x": "y"})
    err.where("p/m", "app.py:3").where("p/m", "app.py:3")
    assert str(err) == "failed\n  (raised by the call to model 'p/m' at app.py:3)"
    assert str(errors.EmberError("x").where(None, None)) == "x"
    assert str(errors.EmberError("x").where(None, "a.py:1")).endswith("(raised by the call to a.py:1)")
    assert errors.ProviderError("y").headers == {}


def test_batch_error_keeps_finished_results():
    boom = ValueError("bad element")
    err = errors.BatchError(["a", boom, "c", boom], {3: boom, 1: boom})
    msg = str(err)
    assert msg.startswith("2 of 4 elements failed; first failure at index 1: ValueError: bad element")
    assert "The 2 finished results are kept" in msg
    assert err.succeeded == {0: "a", 2: "c"}
    assert err.results[1] is boom and set(err.errors) == {1, 3}
    # one period after the failure's own message, whether or not it ends with one
    for cause in (ValueError("got NoneType."), ValueError("bad"), ValueError()):
        msg = str(errors.BatchError([cause], {0: cause}))
        assert ".." not in msg and ": ." not in msg
        assert msg.count(". The 0 finished results") == 1


def _run_script(code: str) -> subprocess.CompletedProcess:
    import os
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30, env={**os.environ, "PYTHONPATH": root})


def test_a_forked_child_makes_calls_of_its_own():
    """After os.fork() (gunicorn --preload, a multiprocessing fork pool) every call in
    the child hung: it had the parent's loop but not the thread that ran it."""
    done = _run_script(
        "import os, ember\n"
        "print('parent', bool(ember.models('sim', 'hi').text))\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    print('child', bool(ember.models('sim', 'in the child').text), flush=True)\n"
        "    os._exit(0)\n"
        "print('exit', os.waitpid(pid, 0)[1])\n")
    assert done.stdout.split("\n")[:3] == ["parent True", "child True", "exit 0"], done.stderr


def test_a_forked_child_runs_a_map_whose_check_runs_block():
    """A parent whose vmap used the pool of blocking check runs (a prompt with a
    timestamp: no plan foresees it) forked a child whose vmap then hung forever: the
    pool's workers were the parent's."""
    done = _run_script(
        "import os, time, ember\n"
        "f = lambda x: ember.models('sim', f'{x} at {time.time()}').text[:3]\n"
        "for _ in range(3): ember.vmap(f)(['a', 'b'])\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    print('child', len(ember.vmap(f)(['c', 'd'])), flush=True)\n"
        "    os._exit(0)\n"
        "print('exit', os.waitpid(pid, 0)[1])\n")
    assert done.stdout.split("\n")[:2] == ["child 2", "exit 0"], done.stderr


def test_exit_closes_the_loop():
    """`python -X dev` warned 'unclosed event loop' at the exit of every program."""
    import os
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-X", "dev", "-c",
                           "import ember; print(bool(ember.models('sim', 'hi').text))"],
                          capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PYTHONPATH": root})
    assert done.stdout.strip() == "True" and "unclosed" not in done.stderr, done.stderr


def test_a_jit_made_per_call_leaves_no_report_behind():
    """Each jitted function kept its own context variable, and every context that set
    it kept the report (graphs, call records) after the function was gone: ~5 MB per
    1,000 requests in a worker thread making a jit per request."""
    import gc
    import weakref

    reports = []
    for i in range(5):
        fast = ember.jit(lambda x: ember.models("sim", x).text)
        fast(f"q{i}")
        assert fast.last_run.requests == 1
        reports.append(weakref.ref(fast.last_run))
    del fast
    gc.collect()
    assert [r() for r in reports] == [None] * 5


def test_the_report_table_is_copied_only_by_a_caller_that_did_not_make_it():
    """Every jitted call copied the whole table of latest reports: a call cost time in
    proportion to the jitted functions the thread had called (20 ms with 5,000)."""
    import asyncio
    import contextvars
    import threading

    from ember import _latest

    fns = [ember.jit(lambda x, i=i: ember.models("sim", f"{i} {x}").text) for i in range(3)]
    fns[0]("a")
    table = _latest._own.get()[1]
    for f in fns:
        f("b")
    assert _latest._own.get()[1] is table and len(table) == 3  # changed in place
    mine = fns[1].last_run

    # a thread running a copy of this context, and tasks: tables of their own
    worker = threading.Thread(target=contextvars.copy_context().run, args=(fns[1], "w"))
    worker.start()
    worker.join(10)

    @ember.jit
    async def ask(k):
        return [(await ember.amodels("sim", f"{j} {k}")).text for j in range(k)]

    async def one(k):
        await ask(k)
        await asyncio.sleep(0)
        return ask.last_run.completions

    async def both():
        return await asyncio.gather(one(1), one(3))

    assert asyncio.run(both()) == [1, 3]
    assert _latest._own.get()[1] is table and fns[1].last_run is mine


def test_a_call_from_a_later_exit_handler_works():
    """A call made by an exit handler that runs after Ember's own hung forever."""
    done = _run_script(
        "import atexit\n"
        "def report():\n"
        "    import ember\n"
        "    print('at exit', bool(ember.models('sim', 'summary').text))\n"
        "atexit.register(report)\n"
        "import ember\n"
        "print('main', bool(ember.models('sim', 'hi').text))\n")
    assert done.returncode == 0 and done.stdout.split() == ["main", "True", "at", "exit", "True"]


def test_a_call_whose_loop_thread_dies_raises_instead_of_hanging(monkeypatch):
    from ember import _runtime

    monkeypatch.setattr(_runtime, "_WATCH_SECONDS", 0.05)

    async def stop_the_loop() -> None:
        asyncio.get_running_loop().stop()  # (its thread ends; this call is never answered)
        await asyncio.sleep(3600)

    with pytest.raises(RuntimeError, match="event loop thread stopped"):
        _runtime.run_sync(stop_the_loop())
    assert ember.models("sim", "a new loop").text  # the next call starts one


def test_a_lone_surrogate_in_a_prompt_is_a_clear_error(openai_server):
    """Half an emoji from a model's JSON failed inside the SDK as a bare
    UnicodeEncodeError, naming neither the model nor the call."""
    half = json.loads('"smile \\ud83d"')
    for run in (lambda: ember.models("gpt-4o-mini", f"Say: {half}"),
                lambda: ember.models("gpt-4o-mini", "hi", system=half)):
        with pytest.raises(errors.ConfigurationError, match="lone surrogate"):
            run()
    assert not openai_server.requests
    assert ember.models("gpt-4o-mini", "smile 😀").text == "echo: smile 😀"


def test_copying_the_report_table_while_its_maker_changes_it():
    """A thread running a copy of this context (copy_context().run, asyncio.to_thread)
    copied the table while this thread changed it in place: 'dictionary changed size
    during iteration' from a jitted call in a threaded server."""
    import contextvars
    import threading

    from ember import _latest

    class Owner:
        pass

    owners = [Owner() for _ in range(3000)]
    for o in owners:
        _latest.set_own_report(o, "r")
    snapshot = contextvars.copy_context()
    errors: list = []
    stop = threading.Event()

    def other():
        mine = Owner()
        while not stop.is_set():
            try:
                snapshot.run(lambda: contextvars.copy_context().run(
                    _latest.set_own_report, mine, "x"))
            except Exception as exc:
                errors.append(exc)
                return

    worker = threading.Thread(target=other)
    worker.start()
    import time

    deadline = time.monotonic() + 1.0  # (the old code failed within a few thousand)
    try:
        for _ in range(30_000):
            if time.monotonic() > deadline:
                break
            owners.append(Owner())
            _latest.set_own_report(owners[-1], "r")  # in place: this thread's table
            if errors:
                break
    finally:
        stop.set()
        worker.join()
    assert not errors
