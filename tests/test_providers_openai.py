"""The openai provider, through the real SDK, against a loopback OpenAI server."""

from __future__ import annotations

import asyncio
import builtins
import gc
import json
import socket
import time

import pytest
from servers import OPENAI_KEY, FakeOpenAI, Fault, complete, complete_all, openai_server  # noqa: F401

import ember
from ember import errors, models, providers
from ember._request import build_request
from ember.providers import prices
from ember.backends.headers import parse_retry_after
from ember.providers.openai import OpenAIProvider, is_reasoning_model, split_tokens
from ember.providers.credentials import safe_url, scrub
from ember.providers.sdk import error_fields, reset_hint

MODEL = "gpt-4o-mini"


def req(prompt="hello", model=MODEL, **params):
    return build_request("openai", model, prompt, params)


@pytest.fixture(params=["aiohttp", "httpx"])
def transport(request, monkeypatch):
    """Both HTTP transports the SDKs offer (Ember's default is aiohttp)."""
    monkeypatch.setenv("EMBER_HTTP_TRANSPORT", request.param)
    return request.param


def fail(provider, request) -> BaseException:
    with pytest.raises(errors.EmberError) as info:
        complete(provider, request)
    return info.value


# ------------------------------------------------------------------------ success


def test_success_text_usage_cost_and_latency(openai_server, transport):
    [r] = complete(OpenAIProvider(), req("hello"))
    rec = openai_server.requests[0]
    usage = rec.response["usage"]
    assert r.text == "echo: hello"
    assert r.model == "openai/gpt-4o-mini"
    assert tuple(r.usage) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert r.cost == pytest.approx(prices.cost_of("openai", MODEL, *r.usage))
    assert r.cost > 0 and r.latency > 0 and r.finish_reason == "stop"
    assert rec.path == "/v1/chat/completions"
    assert rec.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert rec.headers["x-stainless-retry-count"] == "0"


def test_n_choices_in_one_request_split_usage(openai_server):
    rs = complete(OpenAIProvider(), req("hi", n=3, temperature=0.7))
    assert [r.text for r in rs] == ["echo: hi", "echo 1: hi", "echo 2: hi"]
    assert len(openai_server.requests) == 1
    assert openai_server.requests[0].body["n"] == 3
    usage = openai_server.requests[0].response["usage"]
    # the prompt is billed once: all on the first choice; completions split by length
    assert [r.usage.input_tokens for r in rs] == [usage["prompt_tokens"], 0, 0]
    assert sum(r.usage.output_tokens for r in rs) == usage["completion_tokens"]
    total = prices.cost_of("openai", MODEL, usage["prompt_tokens"], usage["completion_tokens"])
    assert sum(r.cost for r in rs) == pytest.approx(total)


def test_parameters_reach_the_wire(openai_server):
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"}]
    complete(OpenAIProvider(), req(messages, system="be brief", temperature=0.2, top_p=0.9,
                                   max_tokens=50, seed=7, stop="END", frequency_penalty=0.5))
    body = openai_server.requests[0].body
    assert body["messages"] == [{"role": "system", "content": "be brief"}] + messages
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["seed"]) == (0.2, 0.9, 50, 7)
    assert body["stop"] == ["END"]
    assert body["frequency_penalty"] == 0.5  # unknown params pass through extra_body
    assert "n" not in body and "response_format" not in body


def test_reasoning_models_use_max_completion_tokens_and_drop_temperature(openai_server):
    complete(OpenAIProvider(), req(model="o3-mini", temperature=0.2, top_p=0.5, max_tokens=9,
                                   reasoning_effort="low"))
    complete(OpenAIProvider(), req(model="gpt-5", temperature=1))
    first, second = openai_server.bodies()
    assert first["max_completion_tokens"] == 9 and "max_tokens" not in first
    assert "temperature" not in first and "top_p" not in first
    assert first["reasoning_effort"] == "low"
    assert second["temperature"] == 1


def test_response_format_json_object(openai_server):
    [r] = complete(OpenAIProvider(), req("give json", response_format="json"))
    assert openai_server.requests[0].body["response_format"] == {"type": "json_object"}
    assert r.json() == {"echo": "give json", "index": 0}


def test_response_format_json_schema(openai_server):
    schema = {"type": "object", "properties": {"echo": {"type": "string"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "my answer!", "schema": schema}}
    complete(OpenAIProvider(), req(response_format=fmt))
    sent = openai_server.requests[0].body["response_format"]
    assert sent == {"type": "json_schema",
                    "json_schema": {"name": "my_answer_", "schema": schema, "strict": False}}
    # the fields keep their order: the model writes them so (they were sorted by name)
    ordered = {"type": "object", "properties": {"reasoning": {"type": "string"},
                                                "answer": {"type": "integer"}}}
    complete(OpenAIProvider(), req(response_format=ordered))
    sent = openai_server.requests[1].body["response_format"]["json_schema"]["schema"]
    assert list(sent) == ["type", "properties"]
    assert list(sent["properties"]) == ["reasoning", "answer"]


def test_finish_reasons_from_stop_and_max_tokens(openai_server):
    [cut] = complete(OpenAIProvider(), req("a long prompt indeed", max_tokens=2))
    [stopped] = complete(OpenAIProvider(), req("say STOP now", stop=["STOP"]))
    assert cut.finish_reason == "length" and cut.text == "echo: a "
    assert stopped.finish_reason == "stop" and stopped.text == "echo: say "


def test_refusal_missing_usage_and_unordered_choices(openai_server):
    body = {"choices": [
        {"index": 1, "message": {"content": "second"}, "finish_reason": "stop"},
        {"index": 0, "message": {"content": None, "refusal": "I can't"},
         "finish_reason": "content_filter"}]}
    openai_server.script(Fault("malformed", body=json.dumps(body).encode()))
    first, second = complete(OpenAIProvider(), req(n=2))
    assert (first.text, second.text) == ("I can't", "second")
    assert first.finish_reason == "content_filter"
    assert first.usage == (0, 0) and first.cost is None  # no usage reported: cost unknown


def test_headers_go_to_on_headers_on_success_only(openai_server):
    seen: list[dict] = []
    provider = OpenAIProvider()
    provider.on_headers = seen.append
    complete_all(provider, [req(f"q{i}") for i in range(3)])
    assert len(seen) == 3
    assert all(h["x-ratelimit-limit-requests"] == "10000" for h in seen)
    assert all("x-ratelimit-remaining-tokens" in h and "x-request-id" in h for h in seen)
    openai_server.script("rate_limit")
    err = fail(provider, req())
    assert len(seen) == 3  # failures carry their headers instead
    assert err.headers["x-ratelimit-remaining-requests"] == "0"


def test_many_concurrent_slow_requests_are_served_in_parallel(openai_server):
    # long enough that starting all 120 (~2 ms of client CPU each, twice that under
    # coverage on a loaded machine) ends before the first answer: 0.3 s failed in CI
    openai_server.latency = 1.0
    results = complete_all(OpenAIProvider(), [req(f"q{i}") for i in range(120)])
    assert [r[0].text for r in results] == [f"echo: q{i}" for i in range(120)]
    assert openai_server.max_in_flight >= 100  # served together, not one after another


def test_slow_response_arrives(openai_server):
    openai_server.script(Fault("slow", delay=0.2))
    [r] = complete(OpenAIProvider(), req())
    assert r.text == "echo: hello" and r.latency >= 0.2


# ------------------------------------------------------------------------- errors

STATUS_CASES = [
    ("auth", errors.AuthenticationError, 401, "OPENAI_API_KEY"),
    ("forbidden", errors.AuthenticationError, 403, "OPENAI_API_KEY"),
    ("not_found", errors.ModelNotFoundError, 404, "gpt-4o-mini"),
    ("context_length", errors.ContextLengthError, 400, "context window"),
    ("bad_request", errors.BadRequestError, 400, "invalid"),
    ("quota", errors.QuotaExceededError, 429, "billing"),
    ("server", errors.ServerError, 500, "transient"),
    (Fault("server", status=503), errors.ServerError, 503, "transient"),
    ("overloaded", errors.ServerError, 503, "transient"),
]


@pytest.mark.parametrize("fault,cls,status,words", STATUS_CASES)
def test_status_errors_map_to_ember_errors(openai_server, fault, cls, status, words):
    openai_server.script(fault)
    err = fail(OpenAIProvider(), req())
    assert type(err) is cls
    assert (err.provider, err.model, err.status) == ("openai", "openai/gpt-4o-mini", status)
    assert words in str(err) and "openai/gpt-4o-mini" in str(err)
    assert err.headers["content-type"] == "application/json"
    assert OPENAI_KEY not in str(err) and OPENAI_KEY not in repr(err)
    assert len(openai_server.requests) == 1  # the SDK never retries
    assert err.transient == (cls is errors.ServerError)


def test_model_not_found_names_the_closest_known_model(openai_server):
    openai_server.script("not_found")
    err = fail(OpenAIProvider(), req(model="gpt-4o-mnii"))
    assert type(err) is errors.ModelNotFoundError
    assert "'gpt-4o-mnii'" in str(err) and "Did you mean 'gpt-4o-mini'?" in str(err)
    openai_server.script("not_found")  # a right name that 404s (no access) suggests nothing
    assert "Did you mean" not in str(fail(OpenAIProvider(), req()))


def test_api_key_echoed_by_the_server_is_scrubbed(openai_server):
    openai_server.script("auth")  # the fake echoes the whole key in its message
    err = fail(OpenAIProvider(), req())
    assert OPENAI_KEY in openai_server.requests[0].response["error"]["message"]
    assert OPENAI_KEY not in str(err) and OPENAI_KEY not in repr(err) and "***" in str(err)
    assert err.__cause__ is None and err.__suppress_context__


@pytest.mark.parametrize("fault,expected", [
    (Fault("rate_limit", retry_after=2), 2.0),
    (Fault("rate_limit", retry_after=3, retry_after_ms=1500), 1.5),
    (Fault("rate_limit", retry_after=None, retry_after_ms=250), 0.25),
    (Fault("rate_limit", retry_after=None), 1.0),  # x-ratelimit-reset-requests: 1s
])
def test_rate_limit_retry_after(openai_server, fault, expected):
    openai_server.script(fault)
    err = fail(OpenAIProvider(), req())
    assert type(err) is errors.RateLimitError and err.transient
    assert err.retry_after == pytest.approx(expected)
    assert f"{expected:.2f}s" in str(err)
    assert "billing" in openai_server.requests[0].response["error"]["message"]


def test_rate_limit_retry_after_http_date(openai_server):
    openai_server.script(Fault("rate_limit", retry_after=5, retry_after_date=True))
    err = fail(OpenAIProvider(), req())
    assert isinstance(err, errors.RateLimitError) and 3 <= err.retry_after <= 5


def test_a_request_larger_than_the_tokens_per_minute_limit_is_not_throttling(openai_server):
    too_large = ("Request too large for gpt-4o-mini in organization org-x on tokens per min "
                 "(TPM): Limit 30000, Requested 36278. The input or output tokens must be "
                 "reduced in order to run successfully.")
    openai_server.script(Fault("rate_limit", retry_after=1, message=too_large))
    err = fail(OpenAIProvider(), req())
    assert type(err) is errors.ContextLengthError and not err.transient
    assert err.status == 429 and err.retry_after is None
    assert "per-minute token limit" in str(err) and "lower max_tokens" in str(err)
    # through models(): one request, no retries, no pause of the provider (the
    # headers, as OpenAI's, show the request window not exhausted)
    openai_server.script(Fault("rate_limit", retry_after=1, message=too_large,
                               headers=openai_server.limit_headers()))
    with pytest.raises(errors.ContextLengthError):
        models("gpt-4o-mini", "big")
    assert len(openai_server.requests) == 2
    start = time.perf_counter()
    assert models("gpt-4o-mini", "small").text == "echo: small"
    assert time.perf_counter() - start < 0.5


def test_429_without_any_retry_hint_is_quota(openai_server):
    openai_server.script(Fault("server", status=429))  # no retry-after, no reset headers
    err = fail(OpenAIProvider(), req())
    assert type(err) is errors.QuotaExceededError and err.retry_after is None
    assert not err.transient


def test_requests_per_minute_limiter(openai_server):
    openai_server.rpm = 2
    results = [complete_all(OpenAIProvider(), [req(f"q{i}")])[0] for i in range(3)]
    assert [r.text for r in results[0] + results[1]] == ["echo: q0", "echo: q1"]
    err = results[2]
    assert isinstance(err, errors.RateLimitError) and 50 < err.retry_after <= 60
    assert len(openai_server.requests) == 3


def test_dropped_connection(openai_server, transport):
    openai_server.script("drop")
    err = fail(OpenAIProvider(), req())
    assert type(err) is errors.ConnectionError and err.transient
    assert "Server disconnected" in str(err) and "OPENAI_BASE_URL" in str(err)
    assert (err.provider, err.model) == ("openai", "openai/gpt-4o-mini")
    assert len(openai_server.requests) == 1


def test_a_reply_that_is_not_http_is_a_connection_error(openai_server, transport):
    """A wrong port or a broken proxy: the SDK's aiohttp transport raised a bare
    aiohttp.ClientResponseError ("400, message='Bad status line'"), not retried."""
    openai_server.script("not_http")
    err = fail(OpenAIProvider(), req())
    assert type(err) is errors.ConnectionError and err.transient
    assert "OPENAI_BASE_URL" in str(err) and OPENAI_KEY not in str(err)
    openai_server.script("not_http", "not_http")
    assert ember.retry(lambda: models("openai/gpt-4o-mini", "hi").text,
                       initial_delay=0.01)() == "echo: hi"
    assert len(openai_server.requests) == 1 + 3


@pytest.mark.parametrize("body", [
    # Anthropic's wording, and llama.cpp's (its numeric code is the HTTP status)
    {"error": {"type": "invalid_request_error", "message": "input length and `max_tokens` "
               "exceed context limit: 199759 + 8192 > 200000"}},
    {"error": {"code": 400, "type": "exceed_context_size_error", "n_ctx": 8192,
               "message": "the request exceeds the available context size, try increasing it"}},
])
def test_context_overflow_wordings_of_other_servers(openai_server, body):
    openai_server.script(Fault("bad_request", body=json.dumps(body).encode(),
                               headers={"content-type": "application/json"}))
    assert type(fail(OpenAIProvider(), req())) is errors.ContextLengthError


def test_a_404_without_an_api_error_suggests_the_base_urls_path(openai_server):
    openai_server.script(Fault("not_found", body=b'{"detail": "Not Found"}',
                               headers={"content-type": "application/json"}))
    err = fail(OpenAIProvider(), req())
    assert type(err) is errors.ModelNotFoundError
    assert "serve under /v1" in str(err) and "The server said: Not Found" in str(err)
    openai_server.script("not_found")  # the API's own 404: a model name problem only
    assert "serve under /v1" not in str(fail(OpenAIProvider(), req()))


@pytest.mark.parametrize("userinfo", ["user:pw@", ""])
def test_connection_refused(monkeypatch, transport, userinfo):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://{userinfo}127.0.0.1:{port}/v1?x=1")
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    err = fail(OpenAIProvider(), req())
    assert type(err) is errors.ConnectionError and err.transient
    assert f"http://127.0.0.1:{port}/v1 " in str(err) and "pw" not in str(err)
    # nothing listens there: said so, not "lost the connection ... usually transient"
    assert "connection was refused, so no server is listening there" in str(err)
    assert "(set by OPENAI_BASE_URL)" in str(err) and "Lost the connection" not in str(err)


def test_timeout(openai_server, transport):
    openai_server.script(Fault("slow", delay=1.0))
    err = fail(OpenAIProvider(timeout=0.2), req())
    assert isinstance(err, errors.TimeoutError) and isinstance(err, builtins.TimeoutError)
    assert "0.2s" in str(err) and "openai/gpt-4o-mini" in str(err)
    assert len(openai_server.requests) == 1


@pytest.mark.parametrize("body,words", [
    (None, "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"id": "x"}', "no choices"),
    (b'{"choices": []}', "no choices"),
    (b'{"choices": [{"index": 0}]}', "no message"),
    (b'{"choices": [{"message": {"content": 5}}]}', "not text"),
])
def test_malformed_bodies(openai_server, body, words):
    openai_server.script(Fault("malformed", body=body))
    err = fail(OpenAIProvider(), req())
    assert type(err) is errors.ResponseFormatError and err.transient
    assert words in str(err) and err.provider == "openai"


def test_wrong_number_of_choices(openai_server):
    openai_server.script(Fault("malformed", body=b'{"choices": [{"message": {"content": "x"}}]}'))
    err = fail(OpenAIProvider(), req(n=2))
    assert isinstance(err, errors.ResponseFormatError) and "n=2" in str(err)


def test_a_server_that_ignores_n_gets_a_request_per_sample(openai_server, caplog):
    """OpenAI-compatible servers that ignore n (Ollama's, llama.cpp's) answer once: jit's
    fused n=3 request failed ('asked for n=3 answers and got 1') where eager worked."""
    openai_server.answer = lambda body, i: f"sample {i}"
    real, sent_n = openai_server.success, []

    def one_choice(rec):
        sent_n.append(rec.body.pop("n", None))  # the server's view: no n
        return real(rec)

    openai_server.success = one_choice

    def names(topic):
        return [models("openai/gpt-4o-mini", f"Name a {topic}", temperature=1.0).text
                for _ in range(3)]

    fast = ember.jit(names)
    with caplog.at_level("WARNING", logger="ember"):
        assert len(fast("cat")) == 3
    assert "one request per sample" in caplog.text
    assert sent_n == [3, None, None, None]
    # the answer it could not use was billed all the same: the report counts it
    billed = [r.response["usage"] for r in openai_server.requests]
    assert fast.last_run.input_tokens == sum(u["prompt_tokens"] for u in billed)
    assert fast.last_run.output_tokens == sum(u["completion_tokens"] for u in billed)
    assert fast.last_run.cost == pytest.approx(ember.providers.prices.cost_of(
        "openai", "gpt-4o-mini", fast.last_run.input_tokens, fast.last_run.output_tokens))
    assert len(ember.jit(names)("dog")) == 3  # not fused again
    assert sent_n[4:] == [None] * 3


def test_html_error_page(openai_server):
    openai_server.script(Fault("server", status=502, body=b"<html>Bad gateway</html>"))
    err = fail(OpenAIProvider(), req())
    assert type(err) is errors.ServerError and err.status == 502 and "Bad gateway" in str(err)


def test_missing_key_names_the_variable(openai_server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    err = fail(OpenAIProvider(), req())
    assert isinstance(err, errors.MissingAPIKeyError) and err.env_var == "OPENAI_API_KEY"
    assert "OPENAI_API_KEY" in str(err) and not openai_server.requests


def test_a_key_read_from_a_file_loses_its_newline(openai_server, monkeypatch, transport):
    monkeypatch.setenv("OPENAI_API_KEY", f"  {OPENAI_KEY}\r\n")
    [r] = complete(OpenAIProvider(), req())
    assert r.text == "echo: hello"
    assert openai_server.requests[0].headers["authorization"] == f"Bearer {OPENAI_KEY}"


@pytest.mark.parametrize("key", [f"{OPENAI_KEY}\nsecond-line", f"{OPENAI_KEY} x", "sk-\x07abc",
                                 "sk-\u201cabc\u201d"])
def test_a_key_with_inner_whitespace_or_control_characters_is_a_configuration_error(
        openai_server, monkeypatch, key):
    monkeypatch.setenv("OPENAI_API_KEY", key)
    err = fail(OpenAIProvider(), req())
    assert type(err) is errors.ConfigurationError and not err.transient
    assert "OPENAI_API_KEY" in str(err) and "HTTP header" in str(err)
    assert key.strip() not in str(err) and OPENAI_KEY not in str(err) and "sk-" not in str(err)
    assert not openai_server.requests  # refused before sending


@pytest.mark.parametrize("url,problem", [
    ("localhost:8000/v1", "no scheme"),
    ("http://127.0.0.1:80OO/v1", "port"),
    ("http://127.0.0.1:99999/v1", "port"),
    ("ftp://127.0.0.1/v1", "scheme is 'ftp'"),
    ("http:///v1", "no host"),
    ("http://127.0.0.1:8000/v 1", "whitespace"),
])
def test_a_malformed_base_url_is_a_configuration_error(openai_server, monkeypatch, url, problem):
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    err = fail(OpenAIProvider(), req())
    assert type(err) is errors.ConfigurationError and not err.transient
    assert "OPENAI_BASE_URL=" in str(err) and problem in str(err)
    assert "like `export OPENAI_BASE_URL=https://" in str(err)  # (an example to follow)


def test_the_base_urls_whitespace_and_scheme_case_do_not_matter(openai_server, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", " " + openai_server.url.replace("http:", "HTTP:") + "\n")
    [r] = complete(OpenAIProvider(), req())
    assert r.text == "echo: hello" and len(openai_server.requests) == 1
    monkeypatch.setenv("OPENAI_BASE_URL", " ")  # blank: the default, not a URL " "
    assert OpenAIProvider().base_url() is None  # (the SDK's own default)


def test_a_malformed_base_url_is_shown_without_credentials(openai_server, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "user:hunter2@127.0.0.1:8000/v1?api-key=qsecret")
    err = fail(OpenAIProvider(), req())
    assert type(err) is errors.ConfigurationError and "'127.0.0.1:8000/v1'" in str(err)
    assert "hunter2" not in str(err) and "qsecret" not in str(err)


def test_base_url_credentials_echoed_by_the_server_are_scrubbed(openai_server, monkeypatch):
    # the fake's 404 echoes the path it got, where the SDK put the URL's query
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.url + "?api-key=qsecret-987&v=2")
    err = fail(OpenAIProvider(), req())
    assert "qsecret-987" in openai_server.requests[0].path
    assert type(err) is errors.ModelNotFoundError and "api-key=***" in str(err)
    assert "qsecret-987" not in str(err) and "qsecret-987" not in repr(err)


def test_model_id_without_model(openai_server):
    err = fail(OpenAIProvider(), build_request("openai", "", "hi", {}))
    assert isinstance(err, errors.ConfigurationError) and "openai/gpt-4o-mini" in str(err)


def test_unknown_exceptions_propagate(openai_server):
    provider = OpenAIProvider()

    async def broken(client, params):
        raise RuntimeError("a bug")

    provider.send = broken
    with pytest.raises(RuntimeError, match="a bug"):
        complete(provider, req())


def test_sdk_and_transport_exceptions_map():
    import httpx2
    import openai

    provider, request = OpenAIProvider(), req()
    http_request = httpx2.Request("POST", "http://x/v1/chat/completions")
    response = httpx2.Response(200, request=http_request, text="{}")
    mapped = provider.map_error(openai.APIResponseValidationError(response, {}), request)
    assert isinstance(mapped, errors.ResponseFormatError)
    assert isinstance(provider.map_error(httpx2.ReadError("gone"), request), errors.ConnectionError)
    assert isinstance(provider.map_error(httpx2.ReadTimeout("slow"), request), errors.TimeoutError)
    assert provider.map_error(KeyError("x"), request) is None


# ----------------------------------------------------------- clients and settings


def test_transport_follows_the_environment(openai_server, monkeypatch):
    from ember.providers.transport import http_transport

    def transport_of_a_client() -> str:
        async def make():
            provider = OpenAIProvider()
            try:
                return type(provider.client()._client).__name__
            finally:
                await provider.aclose()
        return asyncio.run(make())

    assert http_transport() == "aiohttp" and "AioHttp" in transport_of_a_client()
    monkeypatch.setenv("EMBER_HTTP_TRANSPORT", "httpx")
    assert http_transport() == "httpx" and "AioHttp" not in transport_of_a_client()
    # a URL with credentials: aiohttp would refuse it next to the SDK's auth header
    monkeypatch.setenv("EMBER_HTTP_TRANSPORT", "aiohttp")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://user:pw@127.0.0.1:9/v1")
    assert "AioHttp" not in transport_of_a_client()
    monkeypatch.setenv("EMBER_HTTP_TRANSPORT", "curl")
    with pytest.raises(errors.ConfigurationError, match="'aiohttp' or 'httpx'"):
        http_transport()
    monkeypatch.setitem(__import__("sys").modules, "aiohttp", None)  # not installed
    monkeypatch.setenv("EMBER_HTTP_TRANSPORT", "aiohttp")
    with pytest.raises(errors.ConfigurationError, match="pip install aiohttp"):
        http_transport()
    monkeypatch.delenv("EMBER_HTTP_TRANSPORT")
    assert http_transport() == "httpx"


def test_clients_are_pooled_per_loop_and_follow_the_environment(openai_server, monkeypatch):
    provider = OpenAIProvider()

    async def same_loop():
        try:
            a, b = provider.client(), provider.client()
            await provider.complete(req("one"))
            monkeypatch.setenv("OPENAI_BASE_URL", other.url)
            c = provider.client()
            await provider.complete(req("two"))
            return a, b, c
        finally:
            await provider.aclose()

    with FakeOpenAI() as other:
        a, b, c = asyncio.run(same_loop())
        other_url = other.url
    assert a is b and c is not a
    assert [r.body["messages"][-1]["content"] for r in openai_server.requests] == ["one"]
    assert [r.body["messages"][-1]["content"] for r in other.requests] == ["two"]
    outside = provider.client()  # outside a loop: a client for inspection
    assert str(outside.base_url) == other_url + "/" and outside.max_retries == 0
    asyncio.run(provider.aclose())


@pytest.mark.filterwarnings("ignore::ResourceWarning")  # dropped clients' sockets
def test_clients_of_closed_loops_are_dropped(openai_server):
    provider = OpenAIProvider()

    async def call():
        await provider.complete(req("again"))

    for _ in range(3):  # each asyncio.run is a new loop; the old loops' clients go
        asyncio.run(call())
    assert len(provider._pool._by_loop) == 1
    assert len(openai_server.requests) == 3
    del provider
    gc.collect()  # let the sockets go while the warnings are ignored


def test_registry_builds_the_openai_provider(openai_server):
    provider, name = providers.resolve("gpt-4o-mini")
    assert isinstance(provider, OpenAIProvider) and name == "gpt-4o-mini"
    assert provider.supports_n and provider.name == "openai"
    assert providers.get("openai") is provider


# --------------------------------------------------------------------- helpers


def test_parse_retry_after_variants():
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after-ms": "x", "retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after": "-3"}) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00"}) == 0.0  # past, naive


def test_reset_hint_variants():
    assert reset_hint({}) is None
    assert reset_hint({"x-ratelimit-reset-requests": "6m0s", "x-ratelimit-remaining-requests": "0",
                       "x-ratelimit-reset-tokens": "1h", "x-ratelimit-remaining-tokens": "5"}) == 360
    assert reset_hint({"x-ratelimit-reset-tokens": "20ms"}) == pytest.approx(0.02)
    assert reset_hint({"x-ratelimit-reset-tokens": "soon"}) is None
    assert reset_hint({"anthropic-ratelimit-tokens-reset": "2000-01-01T00:00:00"}) == 0.0
    assert reset_hint({"anthropic-ratelimit-tokens-reset": "garbage"}) is None


def test_split_tokens():
    assert split_tokens(10, [1, 1, 1]) == [4, 3, 3]
    assert split_tokens(7, [0, 0]) == [4, 3]
    assert split_tokens(9, [8, 1]) == [8, 1]
    assert split_tokens(5, []) == []


def test_scrub_and_safe_url():
    key = "my-very-secret-key"
    text = f"key {key} and sk-abcdefghijklmnop and Bearer abc.def, x-api-key: zzz"
    assert scrub(text, key, None) == "key *** and sk-*** and Bearer ***, x-api-key: ***"
    assert safe_url("https://u:p@host:8443/v1?token=t") == "https://host:8443/v1"
    assert safe_url("u:p@host:80OO/v1?token=t#x") == "host:80OO/v1"  # malformed too
    assert safe_url("http://u:p@[::1]:8000?k=v") == "http://[::1]:8000"
    from ember.providers.credentials import url_secrets

    assert sorted(url_secrets("https://u:p%40ss@host/v1?api-key=a%2Fb&x=")) == \
        ["a%2Fb", "a/b", "p%40ss", "p@ss"]
    assert safe_url(None) == ""
    # a pasted token holding "/" in the password: still taken out (it was shown whole)
    assert safe_url("http://bob:Zm9v/YmFyS3Vw=@127.0.0.1:9/v1?v=2") == "http://127.0.0.1:9/v1"
    assert url_secrets("http://bob:Zm9v/YmFyS3Vw=@127.0.0.1:9/v1?v=2") == ["Zm9v/YmFyS3Vw="]


def test_error_fields_shapes():
    assert error_fields({"error": {"message": "m", "type": "t"}}, "f") == ("m", "t")
    assert error_fields({"message": "m", "code": "c"}, "f") == ("m", "c")
    assert error_fields({"error": "just text"}, "f") == ("f", "")
    assert error_fields("<html>", "f") == ("<html>", "")
    assert error_fields(None, "f") == ("f", "")
    assert error_fields({"detail": "Not Found"}, "f") == ("Not Found", "")
    assert error_fields({"error": {"code": 400, "type": "t", "message": "m"}}, "f") == ("m", "t")
    # FastAPI's 422: what failed validation, not only "Error code: 422"
    detail = [{"loc": ["body", "top_p"], "msg": "Input should be a valid number",
               "type": "float_parsing"}, {"loc": [], "msg": "bad"}]
    assert error_fields({"detail": detail}, "f") == (
        "body.top_p: Input should be a valid number; bad", "")
    assert error_fields({"detail": []}, "f") == ("f", "")


def test_reasoning_model_names():
    assert all(map(is_reasoning_model, ["o1", "o3-mini", "o4-mini-2025", "gpt-5", "GPT-5-nano"]))
    assert not any(map(is_reasoning_model, ["gpt-4o", "o10", "gpt-50", "ollama-o1"]))


def test_reset_closes_the_old_clients_on_embers_loop(openai_server):
    # a dropped client's sockets closed by the garbage collector behind the loop's back
    # once left new connections unread (a hang); reset closes the clients properly
    import ember

    ember.models("openai/gpt-4o-mini", "hi")
    old = providers.get("openai")
    clients = [c for table in old._pool._by_loop.values() for c in table.values()]
    assert clients and not any(c.is_closed() for c in clients)
    providers.reset()
    assert all(c.is_closed() for c in clients)
    assert providers.get("openai") is not old
    assert ember.models("openai/gpt-4o-mini", "again").text


def test_reset_while_a_call_is_in_flight_lets_it_finish_on_its_client(openai_server):
    """reset() closed the client under a call in flight: the call failed, was sent again
    (the server got the prompt twice), and the old client was left unclosed."""
    import threading
    import time

    import ember

    ember.models("openai/gpt-4o-mini", "warm-up")
    old = providers.get("openai")
    clients = [c for table in old._pool._by_loop.values() for c in table.values()]
    openai_server.latency = 0.4
    out = {}
    call = threading.Thread(target=lambda: out.update(
        text=ember.models("openai/gpt-4o-mini", "expensive question").text))
    call.start()
    time.sleep(0.15)
    providers.reset()  # returns at once: the busy client closes when its call ends
    assert not any(c.is_closed() for c in clients)
    call.join()
    assert out["text"] == "echo: expensive question"
    prompts = [r.body["messages"][-1]["content"] for r in openai_server.requests]
    assert prompts.count("expensive question") == 1
    deadline = time.monotonic() + 5
    while not all(c.is_closed() for c in clients) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert all(c.is_closed() for c in clients)


@pytest.mark.parametrize("model, rate", [("gpt-4o-mini", 0.5), ("gpt-4.1", 0.25),
                                         ("o3", 0.25), ("o3-mini", 0.5), ("gpt-5-mini", 0.1)])
def test_cached_prompt_tokens_are_priced_at_the_cached_rate(openai_server, model, rate):
    """OpenAI's prompt cache: the cost took every prompt token at the full price (81%
    too much for 90% cached on gpt-4o-mini)."""
    answer = {"id": "c", "object": "chat.completion", "model": model, "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100_000, "completion_tokens": 100, "total_tokens": 100_100,
                  "prompt_tokens_details": {"cached_tokens": 90_000}}}
    # (a "malformed" fault sends the body given: here a well-formed one)
    openai_server.script(Fault("malformed", body=json.dumps(answer).encode()))
    [r] = complete(OpenAIProvider(), req(model=model))
    price = prices.price_for("openai", model)
    assert r.usage.input_tokens == 100_000  # tokens are as reported; the cost is discounted
    assert r.cost == pytest.approx((10_000 * price.input + 90_000 * rate * price.input
                                    + 100 * price.output) / 1e6)


def test_the_sdk_is_imported_off_embers_loop(openai_server):
    """Imported on the loop, the SDK's first use (about a second) held up every other
    call and timer: a 10 ms sim call took 1.2 s meanwhile."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (
        "import sys, threading, ember\n"
        "assert 'openai' not in sys.modules\n"
        "where = []\n"
        "class Spy:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'openai': where.append(threading.current_thread().name)\n"
        "sys.meta_path.insert(0, Spy())\n"
        "print(ember.models('openai/gpt-4o-mini', 'hi').text, where)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": root})
    assert done.returncode == 0, done.stderr
    text, threads = done.stdout.split(" [")
    assert text == "echo: hi" and "ember-loop" not in threads and threads != "]\n"


def test_rotated_keys_share_one_client_s_connections(openai_server, monkeypatch):
    """Each key got a client of its own, never closed: ~0.8 MB and ~30 ms on Ember's
    loop per key a service rotated through (300 keys: +250 MB). Now a key's client is a
    copy sharing the first one's connections, and only the latest MAX_KEYS are kept."""
    import ember
    from ember.providers.sdk import ClientPool

    openai_server.api_key = None  # any key
    monkeypatch.setattr(ClientPool, "MAX_KEYS", 3)
    keys = [f"sk-rotated-{i:03d}" for i in range(6)]
    for key in keys:
        monkeypatch.setenv("OPENAI_API_KEY", key)
        assert ember.models("openai/gpt-4o-mini", f"with {key[-3:]}").text
    sent = [r.headers["authorization"].removeprefix("Bearer ") for r in openai_server.requests]
    assert sent == keys  # each request with its own key
    provider = providers.get("openai")
    (table,) = provider._pool._by_loop.values()
    owners = {id(c) for k, c in table.items() if k[1] is None}
    assert len(owners) == 1 and len({id(c) for c in table.values()}) == 1 + 3
    providers.reset()
    assert all(c.is_closed() for c in table.values())  # the copies' connections too


def test_registering_a_prefix_again_closes_the_old_providers_clients(openai_server):
    """register() dropped the old instance with its clients open: 'Unclosed client
    session' errors, and sockets closed behind the loop's back."""
    import ember

    first = OpenAIProvider()
    providers.register("corp", first)
    try:
        assert ember.models("corp/gpt-4o-mini", "hi").text
        clients = [c for table in first._pool._by_loop.values() for c in table.values()]
        assert clients and not any(c.is_closed() for c in clients)
        providers.register("corp", OpenAIProvider())
        assert all(c.is_closed() for c in clients)
        assert ember.models("corp/gpt-4o-mini", "again").text
    finally:
        providers._custom.pop("corp", None)
        providers.reset()


def test_dict_and_list_parameters_are_sent_as_given(openai_server):
    """Frozen dicts and lists were one kind of tuple: an empty dict (a tool with no
    arguments: "properties": {}) went out as [], which OpenAI refuses, and a list of
    [name, value] pairs went out as a dict."""
    tool = {"type": "function", "function": {"name": "now", "description": "The time.",
                                             "parameters": {"type": "object", "properties": {}}}}
    pairs = [["yes", "1"], ["no", "0"]]
    models(MODEL, "What time is it?", tools=[tool], metadata={}, guided_choice=pairs)
    body = openai_server.requests[-1].body
    assert body["tools"] == [tool] and body["metadata"] == {}
    assert body["guided_choice"] == pairs
    request = build_request("openai", "gpt-4o-mini", "x", {"metadata": {"a": {}}})
    assert request.param("metadata") == {"a": {}} and "{'a': {}}" in repr(request.params)


def test_json_mode_says_json_where_the_messages_do_not(openai_server):
    """OpenAI's JSON mode refuses messages that never say "json" (a 400), where sim and
    Anthropic (told by Ember) answer: Ember says it, and the estimate counts it."""
    models(MODEL, "List three primary colors.", response_format="json")
    assert openai_server.requests[-1].body["messages"] == [
        {"role": "system", "content": "Respond with a JSON object."},
        {"role": "user", "content": "List three primary colors."}]
    models(MODEL, "Colors?", system="Be terse.", response_format="json")
    assert openai_server.requests[-1].body["messages"][0]["content"] == \
        "Be terse.\n\nRespond with a JSON object."
    models(MODEL, "Colors, as JSON", response_format="json")  # said already: as given
    assert openai_server.requests[-1].body["messages"] == [
        {"role": "user", "content": "Colors, as JSON"}]
    said = ember.inspect(lambda t: models(MODEL, t, response_format="json").text, "x")
    plain = ember.inspect(lambda t: models(MODEL, t).text, "x")
    assert said.estimate.input_tokens > plain.estimate.input_tokens


def _answer_body(message: dict, finish: str = "stop") -> bytes:
    return json.dumps({"id": "c", "object": "chat.completion", "created": 0, "model": MODEL,
                       "choices": [{"index": 0, "message": {"role": "assistant", **message},
                                    "finish_reason": finish}],
                       "usage": {"prompt_tokens": 5, "completion_tokens": 3,
                                 "total_tokens": 8}}).encode()


def test_a_refusal_is_content_filtered_and_not_parsed_again(openai_server):
    """A refusal read as an answer ('stop'), so .json() said 'not JSON, ask for JSON'
    and ember.retry sent the same request 3 times."""
    refusal = _answer_body({"content": None, "refusal": "I'm sorry, I can't help."})
    openai_server.script(*[Fault("malformed", body=refusal)] * 3)
    answer = models(MODEL, "Forbidden, as JSON", response_format="json")
    assert answer.finish_reason == "content_filter" and answer.text == "I'm sorry, I can't help."

    @ember.retry
    def parsed():
        return models(MODEL, "Forbidden, as JSON", response_format="json").json()

    openai_server.requests.clear()
    with pytest.raises(errors.ParseError, match="refused"):
        parsed()
    assert len(openai_server.requests) == 1


def test_an_answer_cut_off_by_max_tokens_is_not_sent_again_by_retry(openai_server):
    openai_server.answer = lambda body, i: '{"colors": ["red", "green", "blue", "yellow"]}'

    @ember.retry
    def parsed():
        return models(MODEL, "Colors, as JSON", max_tokens=3, temperature=0).json()

    with pytest.raises(errors.ParseError, match="cut off"):
        parsed()
    assert len(openai_server.requests) == 1


def test_content_in_parts_is_joined(openai_server):
    """Mistral's thinking models answer content as a list of parts: a 'content is not
    text' error, retried 3 times."""
    parts = _answer_body({"content": [{"type": "thinking", "thinking": "hmm"},
                                      {"type": "text", "text": "The answer"},
                                      {"type": "text", "text": " is 4."}]})
    openai_server.script(Fault("malformed", body=parts))
    assert models(MODEL, "2 + 2?").text == "The answer is 4."
    assert len(openai_server.requests) == 1


def test_reasoning_models_that_refuse_stop_get_it_applied_by_ember(openai_server):
    """o3 and o4-mini refuse `stop` with a 400; o3-mini and the rest take it."""
    openai_server.answer = lambda body, i: "1\n2\n3\n4\n5"
    for model in ("o3", "o4-mini-2025-04-16"):
        answer = models(f"openai/{model}", "Count to 5", stop=["4"])
        assert "stop" not in openai_server.requests[-1].body
        assert answer.text == "1\n2\n3\n" and answer.finish_reason == "stop"
    models("openai/o3-mini", "Count to 5", stop=["4"])
    assert openai_server.requests[-1].body["stop"] == ["4"]


def test_a_dict_and_a_list_of_its_pairs_are_two_requests_under_jit(openai_server):
    """A frozen dict still equalled the tuple of its pairs: jit merged the two requests
    and gave the second call the first one's answer."""
    openai_server.answer = lambda body, i: f"got {body['metadata']}"

    def both(q):
        a = models(MODEL, q, temperature=0, metadata={"user": "alice"}).text
        b = models(MODEL, q, temperature=0, metadata=[["user", "alice"]]).text
        return a, b

    eager = both("hi")
    openai_server.requests.clear()
    assert ember.jit(both)("hi") == eager and eager[0] != eager[1]
    assert len(openai_server.requests) == 2
