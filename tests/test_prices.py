"""The local price table: known costs, snapshots, unknown models, overrides, free locals."""

from __future__ import annotations

import warnings

import pytest

import ember
from ember.backends.limits import limiter
from ember.providers import prices, sim
from ember.providers.prices import Price, context_window, cost_of, price_for, set_price


def _reset_limiter():
    # admission state (AIMD cuts after a 429, learned limits) must not leak between tests
    reset = getattr(limiter, "reset", None)
    if reset is not None:
        reset()


@pytest.fixture(autouse=True)
def _isolated_prices(monkeypatch):
    """Each test sees the shipped table and warns afresh; overrides do not leak."""
    monkeypatch.setattr(prices, "_PRICES", dict(prices._PRICES))
    monkeypatch.setattr(prices, "_warned", set())
    _reset_limiter()
    yield
    sim.configure(latency=0, error_rate=0, fail_on=None)
    sim.reset_stats()
    _reset_limiter()


def test_known_model_price_and_cost():
    assert price_for("openai", "gpt-4o-mini") == Price(0.15, 0.60, 128_000)
    assert cost_of("openai", "gpt-4o-mini", 1_000_000, 0) == pytest.approx(0.15)
    assert cost_of("openai", "gpt-4o-mini", 0, 1_000_000) == pytest.approx(0.60)
    assert cost_of("openai", "gpt-4o-mini", 1000, 500) == pytest.approx((1000 * 0.15 + 500 * 0.60) / 1e6)
    assert cost_of("anthropic", "claude-3-5-haiku-latest", 100, 10) == pytest.approx(
        (100 * 0.80 + 10 * 4.00) / 1e6)


@pytest.mark.parametrize("snapshot, family", [
    ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),  # the longest family wins, not gpt-4o
    ("gpt-4o-2024-08-06", "gpt-4o"),
    ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
    ("o3-mini-2025-01-31", "o3-mini"),
    ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
    ("claude-3-5-haiku-20241022", "claude-3-5-haiku-latest"),
    ("claude-3-7-sonnet-20250219", "claude-3-7-sonnet-latest"),
])
def test_dated_snapshot_takes_its_family_price(snapshot, family):
    provider = "anthropic" if snapshot.startswith("claude") else "openai"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known family never warns
        assert price_for(provider, snapshot) == price_for(provider, family)
        assert cost_of(provider, snapshot, 10, 10) == cost_of(provider, family, 10, 10)


def test_a_snapshot_with_its_own_price_keeps_it():
    """gpt-4o's first snapshot costs twice its family's price ($5/$15 per 1M)."""
    assert price_for("openai", "gpt-4o-2024-05-13")[:2] == (5.00, 15.00)
    assert price_for("openai", "gpt-4o-2024-11-20")[:2] == (2.50, 10.00)


@pytest.mark.parametrize("model", ["o3-pro", "o1-mini", "gpt-4o-mini-search-preview"])
def test_a_suffix_that_is_not_a_date_is_another_model(model):
    # "o3-pro" costs ten times "o3": no price is better than a wrong one
    with pytest.warns(UserWarning, match="No price known"):
        assert price_for("openai", model) is None


def test_unknown_model_costs_none_and_warns_exactly_once():
    with pytest.warns(UserWarning) as record:
        assert cost_of("openai", "gpt-unknown-9", 10, 10) is None
        assert cost_of("openai", "gpt-unknown-9", 99, 1) is None
        assert price_for("openai", "gpt-unknown-9") is None
    assert len(record) == 1
    msg = str(record[0].message)
    assert "openai/gpt-unknown-9" in msg and "set_price('gpt-unknown-9'" in msg
    with pytest.warns(UserWarning, match="other-model"):  # another model warns on its own
        price_for("openai", "other-model")


def test_a_misspelt_model_s_warning_names_the_closest_priced_one():
    with pytest.warns(UserWarning) as record:
        assert price_for("openai", "gpt-4o-mnii") is None
        assert price_for("anthropic", "claude-sonet-4-5") is None
        assert price_for("openai", "claude-sonet-4-5") is None  # only that provider's models
        assert price_for("openai", "GPT-4o-mini") is None  # names are case-sensitive
    msgs = [str(w.message) for w in record]
    assert "Did you mean 'gpt-4o-mini'?" in msgs[0]
    assert "Did you mean 'claude-sonnet-4-5'?" in msgs[1]
    assert "Did you mean" not in msgs[2]
    assert "Did you mean 'gpt-4o-mini'?" in msgs[3]


def test_unknown_model_end_to_end_cost_none_one_warning(openai_server):
    with pytest.warns(UserWarning) as record:
        r = ember.models("openai/house-model-1", "hi")
        r2 = ember.models("openai/house-model-1", "hello")
    assert r.text == "echo: hi" and r2.text == "echo: hello"
    assert r.cost is None and r2.cost is None
    assert r.usage.total_tokens > 0
    assert [str(w.message).count("house-model-1") > 0 for w in record] == [True]


def test_set_price_overrides_and_extends():
    set_price("gpt-4o-mini", input=1.0, output=2.0)
    assert cost_of("openai", "gpt-4o-mini", 1_000_000, 1_000_000) == pytest.approx(3.0)
    set_price("openai/my-finetune", input=4, output=8, context=1000)
    assert price_for("openai", "my-finetune") == Price(4.0, 8.0, 1000)
    assert context_window("openai", "my-finetune") == 1000
    with pytest.warns(UserWarning):  # a provider-qualified price is that provider's only
        assert price_for("anthropic", "my-finetune") is None
    set_price("house", input=0.5, output=0.5)
    assert cost_of("mycorp", "house", 2_000_000, 0) == pytest.approx(1.0)


@pytest.mark.parametrize("key", ["openai/gpt-4o", "gpt-4o"])
def test_set_price_reaches_dated_snapshots(key):
    set_price(key, input=100.0, output=100.0)
    assert cost_of("openai", "gpt-4o-2024-08-06", 1_000_000, 0) == pytest.approx(100.0)
    assert cost_of("openai", "gpt-4o-mini-2024-07-18", 1_000_000, 0) == pytest.approx(0.15)
    set_price("mycorp/model-x", input=1.0, output=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cost_of("mycorp", "model-x-2025-01-01", 1_000_000, 0) == pytest.approx(1.0)
    with pytest.warns(UserWarning):  # another provider's price is not this one's
        assert price_for("anthropic", "model-x-2025-01-01") is None


@pytest.mark.parametrize("key", ["gpt-4o", "openai/gpt-4o", "openai/gpt-4o-2024-08-06"])
def test_set_price_keeps_the_known_context_window(key):
    set_price(key, input=2.0, output=8.0)  # a negotiated price
    assert context_window("openai", key.rpartition("/")[2]) == 128_000
    set_price(key, input=2.0, output=8.0, context=64_000)
    assert context_window("openai", key.rpartition("/")[2]) == 64_000


def test_set_price_keeps_the_pre_send_context_check(openai_server):
    set_price("gpt-4o", input=2.0, output=8.0)
    with pytest.raises(ember.ContextLengthError):
        ember.models("gpt-4o", "word " * 150_000)  # ~190k tokens > 128k
    assert not openai_server.requests


def test_set_price_override_reaches_responses():
    set_price("sim", input=1000.0, output=0.0)
    r = ember.models("sim", "price me")
    assert r.cost == pytest.approx(r.usage.input_tokens * 1000.0 / 1e6)


def test_set_price_rejects_negative_prices():
    for bad in ({"input": -1, "output": 1}, {"input": 1, "output": -0.1}):
        with pytest.raises(ValueError, match="non-negative"):
            set_price("gpt-4o", **bad)
    assert price_for("openai", "gpt-4o").input == 2.50


@pytest.mark.parametrize("provider", ["ollama", "vllm", "llamacpp", "local"])
def test_local_providers_are_free(provider):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert price_for(provider, "anything-at-all") == Price(0.0, 0.0)
        assert cost_of(provider, "anything-at-all", 10_000, 10_000) == 0.0
    assert context_window(provider, "anything-at-all") is None


def test_local_price_can_be_set():
    set_price("ollama/big-model", input=0.1, output=0.1)
    assert cost_of("ollama", "big-model", 1_000_000, 0) == pytest.approx(0.1)


def test_local_server_response_cost_is_zero(local_server):
    r = ember.models("local/tiny", "hi")
    assert r.text == "echo: hi" and r.cost == 0.0


def test_sim_is_priced_and_sim_variants_share_it():
    assert price_for("sim", "") == prices._PRICES["sim"]
    assert price_for("sim", "big") == prices._PRICES["sim"]
    set_price("sim/big", input=9, output=9)
    assert price_for("sim", "big") == Price(9.0, 9.0)
    assert price_for("sim", "") == Price(0.15, 0.60, 128_000)


def test_context_window():
    assert context_window("openai", "gpt-4o-mini") == 128_000
    assert context_window("openai", "gpt-4o-mini-2024-07-18") == 128_000
    assert context_window("anthropic", "claude-sonnet-4-5") == 200_000
    assert context_window("sim", "") == sim.configure().context_window == 128_000
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # looking up a window never warns
        assert context_window("openai", "no-such-model") is None
    assert prices.PRICES_VERSION


def test_the_unknown_price_warning_points_at_the_users_line(monkeypatch):
    """It named estimate.py or dispatch.py, Ember's own lines."""
    import ember
    from ember import models

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with pytest.warns(UserWarning, match="No price known") as record:
        ember.inspect(lambda t: models("openai/my-finetune-7", t).text, "x").estimate.cost_max
    assert record[0].filename == __file__
