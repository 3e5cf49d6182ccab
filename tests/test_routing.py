"""Model ids -> providers: parsing, bare well-known names, and custom providers."""

from __future__ import annotations

import asyncio

import pytest

import ember
from ember import errors, providers
from ember._request import parse_model_id
from ember._response import Response, Usage
from ember.backends.limits import limiter
from ember.providers import sim
from ember.providers.base import FunctionProvider, Provider
from ember.providers.sim import SimProvider

KNOWN = providers.known()


def _reset_limiter():
    # admission state (AIMD cuts after a 429, learned limits) must not leak between tests
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


@pytest.fixture
def registry():
    """Register custom providers for one test; they are removed afterwards."""
    added: list[str] = []

    def add(prefix, fn, **kw):
        providers.register(prefix, fn, **kw)
        added.append(prefix)

    yield add
    for prefix in added:
        providers._custom.pop(prefix, None)
        providers._instances.pop(prefix, None)


# ------------------------------------------------------------------ parse_model_id


@pytest.mark.parametrize("model, expected", [
    ("openai/gpt-4o-mini", ("openai", "gpt-4o-mini")),
    ("openai:gpt-4o-mini", ("openai", "gpt-4o-mini")),
    ("anthropic/claude-3-5-haiku-latest", ("anthropic", "claude-3-5-haiku-latest")),
    ("ollama/meta-llama/Llama-3", ("ollama", "meta-llama/Llama-3")),
    ("ollama:llama3:8b", ("ollama", "llama3:8b")),
    ("ollama/llama3:8b", ("ollama", "llama3:8b")),
    ("vllm/Qwen/Qwen2.5-7B-Instruct", ("vllm", "Qwen/Qwen2.5-7B-Instruct")),
    ("OpenAI/gpt-4o", ("openai", "gpt-4o")),  # the provider part is case-insensitive
    ("sim", ("sim", "")),
    ("  sim  ", ("sim", "")),
    ("Sim", ("sim", "")),  # a provider alone, in any case as with "OpenAI/..."
    ("sim/big", ("sim", "big")),
    ("local:my-model", ("local", "my-model")),
])
def test_provider_and_model_split_on_the_first_separator(model, expected):
    assert parse_model_id(model, KNOWN) == expected


@pytest.mark.parametrize("model, provider", [
    ("gpt-4o-mini", "openai"), ("gpt-4.1", "openai"), ("chatgpt-4o-latest", "openai"),
    ("o1", "openai"), ("o1-mini", "openai"), ("o3", "openai"), ("o3-mini", "openai"),
    ("o4-mini", "openai"), ("o3_mini", "openai"),
    ("claude-3-5-haiku-latest", "anthropic"), ("claude-sonnet-4-5", "anthropic"),
    ("gpt-4o:latest", "openai"),  # a colon inside a bare name is not a provider separator
])
def test_bare_well_known_names(model, provider):
    assert parse_model_id(model, KNOWN) == (provider, model)


@pytest.mark.parametrize("model,example", [
    ("o10x", "openai"), ("o1x", "openai"), ("o30", "openai"), ("o4mini", "openai"),
    ("gpt4", "openai"), ("claude3", "anthropic"), ("claud-3-5-sonnet", "anthropic"),
    ("Claude_Sonnet", "anthropic"), ("haiku-4-5", "anthropic"),
])
def test_look_alikes_are_not_well_known_names(model, example):
    with pytest.raises(errors.ConfigurationError, match="Cannot tell which provider") as info:
        parse_model_id(model, KNOWN)
    assert f"e.g. '{example}/{model}'" in str(info.value)


def test_a_leading_slash_is_not_doubled_in_the_hint():
    with pytest.raises(errors.ConfigurationError, match="Cannot tell which provider") as info:
        parse_model_id("/gpt-4o", KNOWN)
    assert "e.g. 'openai/gpt-4o'" in str(info.value) and "//" not in str(info.value)


def test_empty_model_id():
    for model in ("", "   "):
        with pytest.raises(errors.ConfigurationError, match="empty"):
            ember.models(model, "hi")


def test_non_string_model_id():
    with pytest.raises(errors.ConfigurationError, match="must be a string.*got int"):
        ember.models(42, "hi")


def test_unknown_provider_lists_the_known_ones():
    with pytest.raises(errors.ConfigurationError) as info:
        ember.models("foo/bar", "hi")
    msg = str(info.value)
    assert "Unknown provider 'foo'" in msg and "'foo/bar'" in msg
    for name in ("anthropic", "ollama", "openai", "sim"):
        assert name in msg
    assert "ember.providers.register" in msg


def test_unknown_provider_with_colon():
    with pytest.raises(errors.ConfigurationError, match="Unknown provider 'foo'"):
        parse_model_id("foo:bar", KNOWN)


def test_bare_unknown_name():
    with pytest.raises(errors.ConfigurationError) as info:
        ember.models("mystery-model", "hi")
    msg = str(info.value)
    assert "'mystery-model'" in msg and "provider/model" in msg and "openai" in msg
    assert not isinstance(info.value, errors.ProviderError)


def test_provider_without_model():
    with pytest.raises(errors.ConfigurationError, match="names provider 'openai' but no model"):
        parse_model_id("openai/", KNOWN)


def test_bare_provider_name_without_model_fails_clearly(openai_server):
    with pytest.raises(errors.ConfigurationError, match="no model.*openai/gpt-4o-mini"):
        ember.models("openai", "hi")
    assert openai_server.requests == []


def test_resolve_and_get():
    inst, name = providers.resolve("sim/big")
    assert isinstance(inst, SimProvider) and name == "big"
    assert providers.get("sim") is inst  # one instance per provider
    assert set(KNOWN) >= {"sim", "openai", "anthropic", "ollama", "vllm", "llamacpp", "local"}


def test_reset_makes_new_instances():
    before = providers.get("sim")
    providers.reset()
    after = providers.get("sim")
    assert after is not before and isinstance(after, SimProvider)


# ---------------------------------------------------------------- custom providers


def test_custom_provider_returning_str(registry):
    seen = []

    async def acme(request):
        seen.append(request)
        return f"acme says: {request.messages[-1][1]}"

    registry("acme", acme)
    assert "acme" in providers.known()
    r = ember.models("acme/model-x", "hello", temperature=0.3, max_tokens=9, system="be brief")
    assert isinstance(r, ember.Response)
    assert r.text == "acme says: hello" and r.model == "acme/model-x"
    [req] = seen
    assert (req.provider, req.model, req.system) == ("acme", "model-x", "be brief")
    assert req.param("temperature") == 0.3 and req.param("max_tokens") == 9
    assert ember.models("acme:model-y", "x").model == "acme/model-y"


def test_custom_provider_returning_response(registry):
    async def acme(request):
        return Response("fixed", model="acme/custom", usage=Usage(3, 4), cost=0.5)

    registry("acme", acme)
    r = ember.models("acme/m", "hi")
    assert (r.text, r.model, tuple(r.usage), r.cost) == ("fixed", "acme/custom", (3, 4), 0.5)


def test_custom_provider_returning_a_list_for_n(registry):
    calls = []

    async def acme(request):
        calls.append(request.n)
        return [f"sample {i}" for i in range(request.n)]

    registry("acme", acme, supports_n=True)
    rs = ember.models("acme/m", "hi", n=3)
    assert [r.text for r in rs] == ["sample 0", "sample 1", "sample 2"]
    assert calls == [3]  # one call carries all three samples


def test_custom_provider_without_n_support_is_called_n_times(registry):
    calls = []

    async def acme(request):
        calls.append(request.n)
        return f"answer {len(calls)}"

    registry("acme", acme)
    rs = ember.models("acme/m", "hi", n=3)
    assert len(rs) == 3 and calls == [1, 1, 1]
    assert sorted(r.text for r in rs) == ["answer 1", "answer 2", "answer 3"]


def test_custom_provider_bad_return_type_is_a_clear_error_and_not_retried(registry):
    calls = []

    async def acme(request):
        calls.append(1)
        return 42

    registry("acme", acme)
    with pytest.raises(errors.ResponseFormatError) as info:
        ember.models("acme/m", "hi")
    msg = str(info.value)
    assert "'acme'" in msg and "returned int" in msg and "str, a Response" in msg
    assert "acme/m" in msg and __file__ in msg  # the model and the caller's line
    assert calls == [1]  # a programming error: retrying cannot fix it


def test_custom_provider_wrong_number_of_answers(registry):
    async def acme(request):
        return ["one"]

    registry("acme", acme, supports_n=True)
    with pytest.raises(errors.ResponseFormatError, match="returned 1 answers for n=2"):
        ember.models("acme/m", "hi", n=2)


def test_custom_provider_that_is_not_async_gets_a_clear_error(registry):
    registry("acme", lambda request: "sync answer")
    with pytest.raises(errors.ConfigurationError, match="async def"):
        ember.models("acme/m", "hi")


def test_register_rejects_non_callables():
    with pytest.raises(TypeError, match="async function"):
        providers.register("acme", "not a function")
    assert "acme" not in providers.known()


def test_custom_provider_errors_pass_through(registry):
    async def acme(request):
        raise errors.BadRequestError("acme refuses", provider="acme", status=400)

    registry("acme", acme)
    with pytest.raises(errors.BadRequestError, match="acme refuses") as info:
        ember.models("acme/m", "hi")
    assert "acme/m" in str(info.value)


@pytest.mark.parametrize("prefix", ["", "a/b", "a:b"])
def test_register_rejects_invalid_prefixes(prefix):
    async def fn(request):
        return "x"

    with pytest.raises(ValueError, match="plain name"):
        providers.register(prefix, fn)


def test_register_a_provider_instance(registry):
    class Echo(Provider):
        name = "echo"
        default_temperature = 0.0

        async def complete(self, request):
            return [Response(f"echo {request.prompt_text()}", model=request.model_id)
                    for _ in range(request.n)]

    inst = Echo()
    registry("echo", inst)
    assert providers.get("echo") is inst
    assert ember.models("echo/m", "hi").text == "echo hi"
    # complete_batch's default sends every request
    reqs = [ember._request.build_request("echo", "m", p, {}) for p in ("a", "b")]
    out = asyncio.run(inst.complete_batch(reqs))
    assert [[r.text for r in rs] for rs in out] == [["echo a"], ["echo b"]]
    asyncio.run(inst.aclose())  # the default aclose does nothing and does not fail


def test_register_replaces_a_cached_instance(registry):
    async def first(request):
        return "first"

    async def second(request):
        return "second"

    registry("acme", first)
    assert ember.models("acme/m", "hi").text == "first"
    registry("acme", second)
    assert ember.models("acme/m", "hi").text == "second"
    assert isinstance(providers.get("acme"), FunctionProvider)


def test_custom_default_temperature_decides_determinism(registry):
    calls = []

    async def acme(request):
        calls.append(1)
        await asyncio.sleep(0.02)
        return "same"

    registry("acme", acme, default_temperature=0.0)

    async def both():
        return await asyncio.gather(ember.amodels("acme/m", "hi"), ember.amodels("acme/m", "hi"))

    a, b = asyncio.run(both())
    assert a.text == b.text == "same"
    assert calls == [1]  # identical deterministic requests in flight are sent once


@pytest.mark.parametrize("model,meant", [
    ("gpt4o mini", "gpt-4o-mini"), ("simm", "sim"), ("o3mini", "o3-mini"),
    ("opena/gpt-4o", "openai"), ("antropic:claude-sonnet-4-5", "anthropic"),
])
def test_a_misspelt_model_id_names_the_closest_known_one(model, meant):
    with pytest.raises(errors.ConfigurationError) as info:
        ember.models(model, "hi")
    assert f"Did you mean {meant!r}?" in str(info.value)


@pytest.mark.parametrize("model", ["mistral-large", "zzz/model", "house-model"])
def test_no_suggestion_when_nothing_is_close(model):
    with pytest.raises(errors.ConfigurationError) as info:
        ember.models(model, "hi")
    assert "Did you mean" not in str(info.value)
