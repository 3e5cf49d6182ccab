"""`import ember` is light: the provider SDKs load only when a provider is used."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import ember

HEAVY = ("openai", "anthropic", "httpx", "httpx2", "httpcore", "anyio", "pydantic")


def _loaded_after(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; report which heavy packages got imported."""
    script = (
        "import json, sys\n" + code + "\n"
        f"heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))\n"
        "ours = sorted(m for m in sys.modules if m.startswith('ember.providers.'))\n"
        "print(json.dumps({'heavy': heavy, 'providers': ours}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_ember_loads_no_sdk():
    loaded = _loaded_after("import ember")
    assert loaded["heavy"] == []
    assert "ember.providers.openai" not in loaded["providers"]
    assert "ember.providers.anthropic" not in loaded["providers"]
    assert "ember.providers.sim" not in loaded["providers"]


def test_the_sim_model_needs_no_sdk():
    loaded = _loaded_after("import ember\nember.models('sim', 'hello')")
    assert loaded["heavy"] == []
    assert "ember.providers.sim" in loaded["providers"]
    assert "ember.providers.openai" not in loaded["providers"]


def test_an_sdk_loads_when_its_provider_is_used():
    loaded = _loaded_after("from ember import providers\nproviders.get('openai')")
    assert "ember.providers.openai" in loaded["providers"]
    assert "ember.providers.anthropic" not in loaded["providers"]
    assert "anthropic" not in loaded["heavy"]  # only what is used gets loaded


def test_provider_modules_are_attributes_after_import_ember():
    """The README's ``ember.providers.sim.configure(...)`` right after ``import ember``
    (it raised AttributeError: the submodule was not imported yet); an SDK provider's
    module as an attribute still loads no SDK."""
    loaded = _loaded_after("import ember\n"
                           "ember.providers.sim.configure(latency=0.0)\n"
                           "assert ember.providers.openai.OpenAIProvider\n"
                           "assert ember.providers.prices\n"
                           "try:\n    ember.providers.nope\nexcept AttributeError:\n    pass\n"
                           "else:\n    raise SystemExit('no AttributeError')")
    assert "ember.providers.sim" in loaded["providers"]
    assert "ember.providers.openai" in loaded["providers"]
    assert "openai" not in loaded["heavy"] and "anthropic" not in loaded["heavy"]


def test_public_api():
    for name in ember.__all__:
        assert hasattr(ember, name), name
    assert len(set(ember.__all__)) == len(ember.__all__)
    assert ember.__version__ == "0.1.0"
    assert ember.models("sim", "hi").model == "sim"


def test_error_hierarchy():
    e = ember
    for cls in (e.ConfigurationError, e.TraceError, e.ParseError, e.TimeoutError,
                e.ProviderError, e.BatchError):
        assert issubclass(cls, e.EmberError)
    assert issubclass(e.MissingAPIKeyError, e.ConfigurationError)
    for cls in (e.AuthenticationError, e.ModelNotFoundError, e.BadRequestError,
                e.ContextLengthError, e.RateLimitError, e.QuotaExceededError, e.ServerError,
                e.ResponseFormatError):
        assert issubclass(cls, e.ProviderError)
    assert issubclass(e.ContextLengthError, e.BadRequestError)  # (catch 400s in one place)
    assert issubclass(e.ParseError, ValueError)
    assert issubclass(e.TimeoutError, TimeoutError) and e.TimeoutError is not TimeoutError
    transient = {c.__name__ for c in (e.RateLimitError, e.TimeoutError, e.ParseError)
                 if c.transient}
    assert transient == {"RateLimitError", "TimeoutError", "ParseError"}
    assert not e.QuotaExceededError.transient and not e.AuthenticationError.transient


@pytest.mark.parametrize("name", ["ember.providers.openai", "ember.providers.anthropic",
                                  "ember.providers.local", "ember.providers.sim"])
def test_builtin_provider_modules_import(name):
    __import__(name)
