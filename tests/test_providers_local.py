"""ollama / vllm / llamacpp / local: OpenAI-compatible servers, one real loopback request."""

from __future__ import annotations

import asyncio
import socket

import pytest
from servers import complete, local_server  # noqa: F401

from ember import errors, providers
from ember._request import build_request
from ember.providers.local import OpenAICompatibleProvider, llamacpp, local, ollama, vllm
from ember.providers.openai import OpenAIProvider


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("OLLAMA_HOST", "EMBER_LOCAL_BASE_URL", "EMBER_LOCAL_API_KEY", "VLLM_API_KEY",
                "LLAMA_API_KEY"):
        monkeypatch.delenv(var, raising=False)


def req(provider="local", model="llama3.2", prompt="hello", **params):
    return build_request(provider, model, prompt, params)


def client_url(provider) -> str:
    client = provider.client()
    try:
        return str(client.base_url)
    finally:
        asyncio.run(provider.aclose())


@pytest.mark.parametrize("factory,url", [
    (ollama, "http://localhost:11434/v1/"),
    (vllm, "http://localhost:8000/v1/"),
    (llamacpp, "http://localhost:8080/v1/"),
])
def test_default_base_urls(factory, url):
    provider = factory()
    assert isinstance(provider, OpenAIProvider) and provider.name == factory.__name__
    assert client_url(provider) == url
    assert provider.api_key() == "not-needed"


@pytest.mark.parametrize("host,url", [
    ("gpu-box:1234", "http://gpu-box:1234/v1"),
    ("http://gpu-box:1234/", "http://gpu-box:1234/v1"),
    ("0.0.0.0", "http://0.0.0.0:11434/v1"),
    ("https://ollama.example.com", "https://ollama.example.com/v1"),
    ("http://[::1]:11434/v1", "http://[::1]:11434/v1"),
])
def test_ollama_host_overrides(monkeypatch, host, url):
    monkeypatch.setenv("OLLAMA_HOST", host)
    assert ollama().base_url() == url


@pytest.mark.parametrize("host", ["http://gpu:99999", "ftp://gpu:1", "http://"])
def test_bad_ollama_host_names_the_variable(monkeypatch, host):
    monkeypatch.setenv("OLLAMA_HOST", host)
    with pytest.raises(errors.ConfigurationError, match="OLLAMA_HOST"):
        ollama().base_url()


@pytest.mark.parametrize("value", [None, "localhost:8000"])
def test_local_requires_its_base_url(monkeypatch, value):
    if value:
        monkeypatch.setenv("EMBER_LOCAL_BASE_URL", value)
    with pytest.raises(errors.ConfigurationError, match="EMBER_LOCAL_BASE_URL") as info:
        complete(local(), req())
    assert "export EMBER_LOCAL_BASE_URL=" in str(info.value)


@pytest.mark.parametrize("var,value,model", [
    ("EMBER_LOCAL_BASE_URL", "user:hunter2@gpu-box:8000/v1", local),
    ("EMBER_LOCAL_BASE_URL", "http://gpu-box:80OO/v1?api-key=qsecret", local),
    ("OLLAMA_HOST", "http://user:hunter2@gpu-box:11434x", ollama),
])
def test_bad_urls_are_shown_without_credentials(monkeypatch, var, value, model):
    monkeypatch.setenv(var, value)
    with pytest.raises(errors.ConfigurationError, match=var) as info:
        complete(model(), req(model.__name__))
    assert "gpu-box" in str(info.value)
    assert "hunter2" not in str(info.value) and "qsecret" not in str(info.value)


def test_upper_case_schemes_and_surrounding_whitespace_are_accepted(monkeypatch):
    monkeypatch.setenv("EMBER_LOCAL_BASE_URL", " HTTPS://gpu-box/v1/\n")
    assert local().base_url() == "https://gpu-box/v1"
    monkeypatch.setenv("OLLAMA_HOST", "HTTP://gpu-box")
    assert ollama().base_url() == "http://gpu-box:11434/v1"


def test_a_local_key_with_a_newline_is_stripped(local_server, monkeypatch):
    monkeypatch.setenv("EMBER_LOCAL_API_KEY", "local-secret\n")
    complete(local(), req())
    assert local_server.requests[0].headers["authorization"] == "Bearer local-secret"
    monkeypatch.setenv("EMBER_LOCAL_API_KEY", "local\tsecret")
    with pytest.raises(errors.ConfigurationError, match="EMBER_LOCAL_API_KEY") as info:
        complete(local(), req())
    assert "local\tsecret" not in str(info.value) and len(local_server.requests) == 1


def test_local_real_request(local_server):
    [r] = complete(local(), req(model="meta-llama/Llama-3.1-8B", temperature=0.3))
    rec = local_server.requests[0]
    assert r.text == "echo: hello" and r.model == "local/meta-llama/Llama-3.1-8B"
    assert r.cost == 0.0 and r.usage.input_tokens > 0
    assert rec.body["model"] == "meta-llama/Llama-3.1-8B" and rec.body["temperature"] == 0.3
    assert rec.headers["authorization"] == "Bearer not-needed"


def test_an_answer_without_usage_costs_nothing_on_a_free_model(local_server):
    """A server that omits ``usage``: a local model is still free (its cost was None,
    'unknown (unpriced model)'); a priced one's cost stays unknown."""
    import json

    real = local_server.success

    def no_usage(rec):
        status, headers, payload = real(rec)
        body = json.loads(payload)
        body.pop("usage")
        return status, headers, json.dumps(body).encode()

    local_server.success = no_usage
    [r] = complete(local(), req())
    assert r.cost == 0.0 and r.usage.input_tokens == 0
    assert OpenAIProvider().cost_without_usage(build_request("openai", "gpt-4o-mini", "x",
                                                             {})) is None


def test_local_sends_n_requests_and_an_optional_key(local_server, monkeypatch):
    monkeypatch.setenv("EMBER_LOCAL_API_KEY", "local-secret")
    rs = complete(local(), req(n=2))
    assert len(rs) == 2 and len(local_server.requests) == 2
    assert all("n" not in r.body for r in local_server.requests)
    assert local_server.requests[0].headers["authorization"] == "Bearer local-secret"


def test_no_openai_model_rules_for_local_models(local_server):
    complete(local(), req(model="o3-mini", temperature=0.3, max_tokens=5))
    body = local_server.requests[0].body
    assert body["temperature"] == 0.3 and body["max_tokens"] == 5
    assert "max_completion_tokens" not in body


def test_ollama_through_ollama_host(local_server, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{local_server.port}")
    provider, name = providers.resolve("ollama/qwen2.5:7b")
    assert name == "qwen2.5:7b" and provider.name == "ollama"
    [r] = complete(provider, req("ollama", name))
    assert r.text == "echo: hello" and local_server.requests[0].body["model"] == "qwen2.5:7b"


def test_local_errors_name_the_server_settings(local_server):
    local_server.script("auth", "not_found")
    auth = pytest.raises(errors.AuthenticationError, complete, local(), req()).value
    assert "EMBER_LOCAL_API_KEY" in str(auth) and auth.provider == "local"
    missing = pytest.raises(errors.ModelNotFoundError, complete, local(), req()).value
    assert "EMBER_LOCAL_BASE_URL" in str(missing) and local_server.url in str(missing)


def test_server_without_key_setting(local_server, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", local_server.root)
    local_server.script("auth")
    err = pytest.raises(errors.AuthenticationError, complete, ollama(), req("ollama")).value
    assert "the server's API key setting" in str(err) and err.message.startswith("Ollama ")


def test_unreachable_ollama(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{port}")
    err = pytest.raises(errors.ConnectionError, complete, ollama(), req("ollama")).value
    assert f"http://127.0.0.1:{port}/v1" in str(err) and "(set by OLLAMA_HOST)" in str(err)
    assert "no server is listening there. Start it with `ollama serve`." in str(err)


def test_unreachable_default_port_says_which_variable_overrides_it(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    provider = OpenAICompatibleProvider("ollama", url=lambda: f"http://127.0.0.1:{port}/v1",
                                        label="Ollama", url_env="OLLAMA_HOST",
                                        start_hint="Start it with `ollama serve`. ")
    err = pytest.raises(errors.ConnectionError, complete, provider, req("ollama")).value
    assert "(the default; OLLAMA_HOST overrides it)" in str(err)


def test_capabilities():
    assert vllm().supports_n and not ollama().supports_n and not llamacpp().supports_n
    assert local().label == "the local server" and local().title == "The local server"
    assert isinstance(providers.get("vllm"), OpenAICompatibleProvider)


def test_model_id_without_model(local_server):
    with pytest.raises(errors.ConfigurationError, match="'local/model-name'"):
        complete(local(), build_request("local", "", "hi", {}))
