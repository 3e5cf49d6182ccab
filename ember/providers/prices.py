"""A local, versioned price table: USD per 1M input and output tokens.

Users override or extend it with `set_price`. Unknown models cost ``None`` and warn
once; they never crash a program.
"""

from __future__ import annotations

import re
import sys
import warnings
from typing import NamedTuple

from .._request import _bare_provider

__all__ = ["Price", "PRICES_VERSION", "price_for", "set_price", "cost_of", "context_window",
           "known_models", "did_you_mean", "cached_input_rate"]

PRICES_VERSION = "2026-11-01"


class Price(NamedTuple):
    input: float  # USD per 1M input tokens
    output: float  # USD per 1M output tokens
    context: int | None = None  # context window in tokens, when known


_PRICES: dict[str, Price] = {
    # openai
    "gpt-4o": Price(2.50, 10.00, 128_000),
    "gpt-4o-mini": Price(0.15, 0.60, 128_000),
    "gpt-4o-2024-05-13": Price(5.00, 15.00, 128_000),  # the first snapshot kept its price
    "gpt-4.1": Price(2.00, 8.00, 1_047_576),
    "gpt-4.1-mini": Price(0.40, 1.60, 1_047_576),
    "gpt-4.1-nano": Price(0.10, 0.40, 1_047_576),
    "gpt-5": Price(1.25, 10.00, 400_000),
    "gpt-5-mini": Price(0.25, 2.00, 400_000),
    "gpt-5-nano": Price(0.05, 0.40, 400_000),
    "o1": Price(15.00, 60.00, 200_000),
    "o3": Price(2.00, 8.00, 200_000),
    "o3-mini": Price(1.10, 4.40, 200_000),
    "o4-mini": Price(1.10, 4.40, 200_000),
    # anthropic
    "claude-3-5-haiku-latest": Price(0.80, 4.00, 200_000),
    "claude-3-5-sonnet-latest": Price(3.00, 15.00, 200_000),
    "claude-3-7-sonnet-latest": Price(3.00, 15.00, 200_000),
    # families, for dated snapshots ("claude-3-5-haiku-20241022")
    "claude-3-5-haiku": Price(0.80, 4.00, 200_000),
    "claude-3-5-sonnet": Price(3.00, 15.00, 200_000),
    "claude-3-7-sonnet": Price(3.00, 15.00, 200_000),
    "claude-haiku-4-5": Price(1.00, 5.00, 200_000),
    "claude-sonnet-4-5": Price(3.00, 15.00, 200_000),
    "claude-opus-4-1": Price(15.00, 75.00, 200_000),
    # the built-in simulated model: priced like a small hosted model
    "sim": Price(0.15, 0.60, 128_000),
}
_LOCAL = {"ollama", "vllm", "llamacpp", "local"}
# what may follow a family name in a snapshot id: a date or "latest" (not "-mini", "-pro")
_SNAPSHOT = re.compile(r"\d{4}-?\d{2}-?\d{2}|latest")
_warned: set[str] = set()


def _lookup(provider: str, model: str) -> Price | None:
    if provider == "sim":
        return _PRICES.get(f"sim/{model}") or _PRICES["sim"]
    for key in (f"{provider}/{model}", model):
        if key in _PRICES:
            return _PRICES[key]
    # dated snapshots ("gpt-4o-mini-2024-07-18") take their family's price (the
    # longest family; this provider's own price, as set_price("openai/gpt-4o") makes,
    # before a bare one); other suffixes name other models ("o3-pro" is not "o3")
    best, rank = None, (0, False)
    for key in _PRICES:
        owner, _, family = key.rpartition("/")
        if owner in ("", provider) and model.startswith(family + "-") \
                and _SNAPSHOT.fullmatch(model[len(family) + 1:]) \
                and (len(family), bool(owner)) > rank:
            best, rank = key, (len(family), bool(owner))
    return _PRICES[best] if best else None


def price_for(provider: str, model: str) -> Price | None:
    """The price of a model, or ``None`` (with one warning per model) when unknown.
    Local servers are free."""
    if provider in _LOCAL:
        return _PRICES.get(f"{provider}/{model}", Price(0.0, 0.0))
    price = _lookup(provider, model)
    if price is None and (provider, model) not in _warned:
        _warned.add((provider, model))
        warnings.warn(
            f"No price known for {provider}/{model}; its cost is reported as None (unknown), "
            "except for answers that carry their own cost (a registered provider's)."
            f"{did_you_mean(model, known_models(provider))} Set one with "
            f"ember.providers.prices.set_price({model!r}, input=..., output=...).",
            stacklevel=_user_level(),
        )
    return price


def _user_level() -> int:
    """The ``stacklevel`` that puts a warning from `price_for` at the user's line: the
    innermost caller outside Ember (price_for's caller, when none is: Ember's loop)."""
    from ..ir.locations import _EMBER_DIR

    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_code.co_filename.startswith(_EMBER_DIR):
        frame, level = frame.f_back, level + 1
    return level if frame is not None else 2


def known_models(provider: str | None = None) -> list[str]:
    """The model names the price table knows (of one provider, or all), without the
    provider prefix: what a misspelt model id is compared against."""
    names = []
    for key in _PRICES:
        owner, _, name = key.rpartition("/")
        if not owner:
            owner = "sim" if key == "sim" else _bare_provider(key) or ""
        if provider is None or owner == provider:
            names.append(name)
    return names


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    """" Did you mean 'x'?" for the closest of ``choices`` to a misspelt ``word``, or ""."""
    import difflib  # (only on an error path)

    low = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(low), n=1, cutoff=0.75)
    return f" Did you mean {low[close[0]]!r}?" if close and low[close[0]] != word else ""


def set_price(model: str, *, input: float, output: float, context: int | None = None) -> None:
    """Set USD per 1M input/output tokens for a model id ('gpt-4o' or 'openai/gpt-4o').
    Without ``context``, the model's known context window is kept."""
    if input < 0 or output < 0:
        raise ValueError("prices must be non-negative")
    if context is None:
        context = _known_context(model)
    _PRICES[model] = Price(float(input), float(output), context)


def _known_context(model: str) -> int | None:
    """The context window the table knows for a model id ('gpt-4o', 'openai/gpt-4o',
    a snapshot), before `set_price` replaces its entry."""
    if model in _PRICES:
        return _PRICES[model].context
    owner, _, name = model.rpartition("/")
    if owner == "sim" or owner in _LOCAL:  # (sim's window is sim.configure's)
        return None
    price = _lookup(owner or _bare_provider(name) or "", name)
    return price.context if price else None


def cost_of(provider: str, model: str, input_tokens: int, output_tokens: int) -> float | None:
    price = price_for(provider, model)
    if price is None:
        return None
    return (input_tokens * price.input + output_tokens * price.output) / 1_000_000


# OpenAI bills prompt tokens served from its prompt cache at a fraction of the input
# price, by model family (first match): gpt-5 10%, gpt-4.1 / o3 / o4-mini 25%, else 50%
_OPENAI_CACHED = ((re.compile(r"gpt-5"), 0.10),
                  (re.compile(r"gpt-4\.1|o3(?!-mini)|o4-mini"), 0.25))


def cached_input_rate(provider: str, model: str) -> float:
    """The fraction of the input price a cached prompt token costs (OpenAI's
    ``prompt_tokens_details.cached_tokens``)."""
    for pattern, rate in _OPENAI_CACHED:
        if pattern.match(model):
            return rate
    return 0.5


def context_window(provider: str, model: str) -> int | None:
    if provider == "sim":  # configurable: sim.configure(context_window=...)
        sim = sys.modules.get("ember.providers.sim")  # (an import statement per
        if sim is None:  # request cost as much as the rest of this check)
            from . import sim
        return sim._config.context_window
    price = _lookup(provider, model) if provider not in _LOCAL else None
    return price.context if price else None
