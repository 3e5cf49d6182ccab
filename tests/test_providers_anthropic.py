"""The anthropic provider, through the real SDK, against a loopback Messages API server."""

from __future__ import annotations

import asyncio
import json

import pytest
from servers import ANTHROPIC_KEY, Fault, anthropic_server, complete, complete_all  # noqa: F401

import ember
from ember import errors, providers
from ember._request import build_request
from ember.providers import prices
from ember.providers.anthropic import AnthropicProvider, json_instruction

MODEL = "claude-haiku-4-5"


def req(prompt="hello", model=MODEL, **params):
    return build_request("anthropic", model, prompt, params)


def fail(provider, request) -> BaseException:
    with pytest.raises(errors.EmberError) as info:
        complete(provider, request)
    return info.value


def test_success_text_usage_cost_and_headers(anthropic_server):
    seen: list[dict] = []
    provider = AnthropicProvider()
    provider.on_headers = seen.append
    [r] = complete(provider, req("hello"))
    rec = anthropic_server.requests[0]
    usage = rec.response["usage"]
    assert r.text == "echo: hello" and r.model == "anthropic/claude-haiku-4-5"
    assert tuple(r.usage) == (usage["input_tokens"], usage["output_tokens"])
    assert r.cost == pytest.approx(prices.cost_of("anthropic", MODEL, *r.usage)) and r.cost > 0
    assert r.finish_reason == "stop" and r.latency > 0
    assert rec.path == "/v1/messages" and "anthropic-version" in rec.headers
    assert rec.headers["x-stainless-retry-count"] == "0"
    [headers] = seen
    assert headers["anthropic-ratelimit-requests-limit"] == "4000"
    assert headers["anthropic-ratelimit-tokens-remaining"] == "399000"
    assert "request-id" in headers


def test_parameters_reach_the_wire(anthropic_server):
    messages = [{"role": "system", "content": "rule one"}, {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"}, {"role": "system", "content": "rule two"},
                {"role": "user", "content": "c"}]
    complete(AnthropicProvider(), req(messages, system="be brief", temperature=0.3, top_p=0.8,
                                      stop="END", seed=4, metadata={"user_id": "u1"}))
    body = anthropic_server.requests[0].body
    assert body["system"] == "be brief\nrule one\n\nrule two"
    assert body["messages"] == [{"role": "user", "content": "a"},
                                {"role": "assistant", "content": "b"},
                                {"role": "user", "content": "c"}]
    assert (body["temperature"], body["top_p"]) == (0.3, 0.8)  # sent through extra_body
    assert body["stop_sequences"] == ["END"]
    assert body["max_tokens"] == 1024  # Anthropic requires it: Ember's default
    assert body["metadata"] == {"user_id": "u1"}
    assert "seed" not in body and "stop" not in body


def test_explicit_max_tokens_and_finish_reasons(anthropic_server):
    [cut] = complete(AnthropicProvider(), req("a long prompt indeed", max_tokens=2))
    [stopped] = complete(AnthropicProvider(), req("say STOP now", stop=["STOP"]))
    assert anthropic_server.requests[0].body["max_tokens"] == 2
    assert (cut.text, cut.finish_reason) == ("echo: a ", "length")
    assert (stopped.text, stopped.finish_reason) == ("echo: say ", "stop")


def test_response_format_json_becomes_a_system_instruction(anthropic_server):
    [r] = complete(AnthropicProvider(), req("give json", response_format="json"))
    system = anthropic_server.requests[0].body["system"]
    assert system == json_instruction("json") and "only one valid JSON value" in system
    assert r.json() == {"echo": "give json", "index": 0}


def test_response_format_schema_is_in_the_instruction(anthropic_server):
    schema = {"title": "Answer", "type": "object", "properties": {"echo": {"type": "string"}}}
    complete(AnthropicProvider(), req(system="be brief", response_format=schema))
    system = anthropic_server.requests[0].body["system"]
    assert system.startswith("be brief\n\nRespond with only one valid JSON value")
    assert "'Answer'" in system and json.dumps(schema) in system  # (in its own order)


def test_n_samples_are_concurrent_requests(anthropic_server):
    anthropic_server.latency = 0.2
    rs = complete(AnthropicProvider(), req("hi", n=3, temperature=1.0))
    assert len(rs) == 3 and all(r.text == "echo: hi" for r in rs)
    assert len(anthropic_server.requests) == 3
    assert anthropic_server.max_in_flight == 3


def test_one_failed_sample_fails_the_call(anthropic_server):
    anthropic_server.latency = 0.2
    anthropic_server.script("server")
    err = fail(AnthropicProvider(), req(n=3))
    assert isinstance(err, errors.ServerError)


def test_cache_tokens_count_as_input_and_are_priced_as_billed(anthropic_server):
    body = {"content": [{"type": "text", "text": "a"}, {"type": "tool_use", "id": "t"},
                        {"type": "text", "text": "b"}],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 100, "output_tokens": 10,
                      "cache_creation_input_tokens": 1000, "cache_read_input_tokens": 10_000}}
    anthropic_server.script(Fault("malformed", body=json.dumps(body).encode()))
    [r] = complete(AnthropicProvider(), req())
    assert r.text == "ab" and r.finish_reason == "tool_calls"
    assert tuple(r.usage) == (11_100, 10)
    assert r.cost == pytest.approx(prices.cost_of("anthropic", MODEL, 100 + 1250 + 1000, 10))


def test_missing_usage_means_unknown_cost(anthropic_server):
    anthropic_server.script(Fault("malformed", body=b'{"content": [], "stop_reason": null}'))
    [r] = complete(AnthropicProvider(), req())
    assert (r.text, r.usage, r.cost, r.finish_reason) == ("", (0, 0), None, None)


STATUS_CASES = [
    ("auth", errors.AuthenticationError, 401),
    ("forbidden", errors.AuthenticationError, 403),
    ("not_found", errors.ModelNotFoundError, 404),
    ("context_length", errors.ContextLengthError, 400),
    ("bad_request", errors.BadRequestError, 400),
    ("quota", errors.QuotaExceededError, 400),  # "credit balance is too low"
    ("server", errors.ServerError, 500),
    ("overloaded", errors.ServerError, 529),
]


@pytest.mark.parametrize("fault,cls,status", STATUS_CASES)
def test_status_errors_map_to_ember_errors(anthropic_server, fault, cls, status):
    anthropic_server.script(fault)
    err = fail(AnthropicProvider(), req())
    assert type(err) is cls
    assert (err.provider, err.model, err.status) == ("anthropic", "anthropic/claude-haiku-4-5", status)
    assert "anthropic/claude-haiku-4-5" in str(err)
    assert err.headers["content-type"] == "application/json"
    assert ANTHROPIC_KEY not in str(err) and ANTHROPIC_KEY not in repr(err)
    assert len(anthropic_server.requests) == 1  # the SDK never retries


def test_overloaded_529_is_transient(anthropic_server):
    anthropic_server.script(Fault("overloaded", headers={"retry-after": "3"}))
    err = fail(AnthropicProvider(), req())
    assert err.transient and err.retry_after == 3.0 and "overloaded" in str(err)


def test_rate_limit_with_retry_after(anthropic_server):
    anthropic_server.script(Fault("rate_limit", retry_after=4))
    err = fail(AnthropicProvider(), req())
    assert type(err) is errors.RateLimitError and err.retry_after == 4.0
    assert err.headers["anthropic-ratelimit-requests-remaining"] == "0"


def test_rate_limit_without_retry_after_uses_the_reset_headers(anthropic_server):
    anthropic_server.script(Fault("rate_limit", retry_after=None))
    err = fail(AnthropicProvider(), req())
    assert type(err) is errors.RateLimitError and 0 <= err.retry_after <= 2


def test_dropped_connection_and_malformed_body(anthropic_server):
    anthropic_server.script("drop", "malformed", Fault("malformed", body=b'{"id": 1}'),
                            Fault("malformed", body=b'{"content": [{"type": "text"}]}'))
    provider = AnthropicProvider()
    dropped = fail(provider, req())
    assert type(dropped) is errors.ConnectionError and "ANTHROPIC_BASE_URL" in str(dropped)
    assert "not JSON" in str(fail(provider, req()))
    assert "no content" in str(fail(provider, req()))
    assert "no text" in str(fail(provider, req()))
    assert len(anthropic_server.requests) == 4


def test_timeout(anthropic_server):
    anthropic_server.script(Fault("slow", delay=1.0))
    err = fail(AnthropicProvider(timeout=0.2), req())
    assert isinstance(err, errors.TimeoutError) and "Anthropic did not answer" in str(err)


def test_huge_max_tokens_is_refused_before_sending(anthropic_server):
    err = fail(AnthropicProvider(), req(max_tokens=200_000))
    assert type(err) is errors.BadRequestError and "lower max_tokens" in str(err)
    assert not anthropic_server.requests


def test_missing_key_names_the_variable(anthropic_server, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    err = fail(AnthropicProvider(), req())
    assert isinstance(err, errors.MissingAPIKeyError) and "ANTHROPIC_API_KEY" in str(err)
    assert not anthropic_server.requests


def test_a_key_with_a_newline_is_stripped_or_refused(anthropic_server, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY + "\n")
    complete(AnthropicProvider(), req())
    sent = anthropic_server.requests[0].headers  # (x-api-key, or a bearer token)
    assert (sent.get("x-api-key") or sent["authorization"].removeprefix("Bearer ")) == ANTHROPIC_KEY
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY + "\nmore")
    err = fail(AnthropicProvider(), req())
    assert type(err) is errors.ConfigurationError and "ANTHROPIC_API_KEY" in str(err)
    assert ANTHROPIC_KEY not in str(err) and len(anthropic_server.requests) == 1


def test_a_malformed_base_url_is_a_configuration_error(anthropic_server, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "127.0.0.1:8000")
    err = fail(AnthropicProvider(), req())
    assert type(err) is errors.ConfigurationError and "ANTHROPIC_BASE_URL=" in str(err)
    assert "no scheme" in str(err) and "like `export ANTHROPIC_BASE_URL=https://" in str(err)


def test_wrong_key_is_rejected_and_not_shown(anthropic_server):
    anthropic_server.api_key = "sk-ant-the-right-one-123456"
    err = fail(AnthropicProvider(), req())
    assert type(err) is errors.AuthenticationError and "ANTHROPIC_API_KEY" in str(err)
    assert ANTHROPIC_KEY not in str(err)


def test_registry_and_client_settings(anthropic_server):
    provider, name = providers.resolve("claude-haiku-4-5")
    assert isinstance(provider, AnthropicProvider) and name == MODEL
    assert not provider.supports_n
    client = provider.client()
    assert client.max_retries == 0 and str(client.base_url).rstrip("/") == anthropic_server.url
    asyncio.run(provider.aclose())


def test_requests_per_minute_limiter(anthropic_server):
    anthropic_server.rpm = 1
    first, second = complete_all(AnthropicProvider(), [req("a"), req("b")])
    assert isinstance(first, list) != isinstance(second, list)  # one answered, one throttled
    throttled = first if isinstance(first, BaseException) else second
    assert isinstance(throttled, errors.RateLimitError) and throttled.retry_after > 50


def test_samples_are_requests_of_their_own_retried_and_limited_alone(anthropic_server):
    """n > 1 on a provider without n: a request per sample through admission, retries
    and the run report. One failed sample cancelled its siblings and the retry re-sent
    all n (6 requests for 3 answers); the limiter saw one request for n."""
    from ember.backends.limits import limiter

    anthropic_server.script(None, Fault("server", status=500), None)
    ask = ember.retry(lambda: ember.models(f"anthropic/{MODEL}", "Name a cat", n=3,
                                           temperature=1.0), initial_delay=0.01)
    with ember.record() as run:
        answers = ask()
    assert len(answers) == 3 and len(anthropic_server.requests) == 4
    assert (run.requests, run.retries, run.completions) == (3, 1, 3)
    limiter.reset()
    try:
        ember.configure_limits("anthropic", concurrency=2)
        anthropic_server.latency = 0.05
        with ember.record() as limited:
            assert len(ember.models(f"anthropic/{MODEL}", "Name a dog", n=4,
                                    temperature=1.0)) == 4
        # (Ember's own view: the server's count can see a next request arrive before it
        # has counted out the answer that freed its slot)
        assert limited.report().peak_concurrency == 2
    finally:
        limiter.reset()


def test_portable_parameters_anthropic_would_refuse(anthropic_server):
    """stop="\\n" (the commonest stop) and a temperature over 1 are fine on OpenAI and
    refused by Anthropic with a 400, found only at the first real request."""
    anthropic_server.answer = lambda body, i: "line one\nline two"
    answer = ember.models(f"anthropic/{MODEL}", "Two lines", stop=["\n", "END"])
    assert answer.text == "line one" and answer.finish_reason == "stop"
    assert anthropic_server.requests[-1].body["stop_sequences"] == ["END"]
    ember.models(f"anthropic/{MODEL}", "Two lines", stop="\n")
    assert "stop_sequences" not in anthropic_server.requests[-1].body
    sent = len(anthropic_server.requests)
    with pytest.raises(errors.ConfigurationError, match=r"Anthropic takes `temperature` in \[0, 1\]"):
        ember.models(f"anthropic/{MODEL}", "hi", temperature=1.5)
    assert len(anthropic_server.requests) == sent
    assert ember.models(f"anthropic/{MODEL}", "hi", temperature=1.0).text


def test_a_developer_message_goes_to_the_system_prompt(anthropic_server):
    """OpenAI's "developer" role (its newer name for system) was sent to Anthropic as a
    message role, which it refuses."""
    chat = [{"role": "developer", "content": "Be terse."}, {"role": "user", "content": "hi"}]
    ember.models(f"anthropic/{MODEL}", chat)
    body = anthropic_server.requests[-1].body
    assert body["system"] == "Be terse." and body["messages"] == [{"role": "user", "content": "hi"}]
