"""Token counts for the static estimate: tiktoken for OpenAI models when it is
installed (the ``tokens`` extra) and its encoding loads, else ~4 characters a token,
the heuristic sim bills by."""

from __future__ import annotations

import math
import os
import threading
import warnings
from typing import Any, Callable

from .fuse import split_model

__all__ = ["count_tokens", "TIKTOKEN_TIMEOUT"]

_encodings: dict[str, Any] = {}
_tiktoken_ok = os.environ.get("EMBER_TIKTOKEN", "1") != "0"


TIKTOKEN_TIMEOUT = 5.0  # seconds to load an encoding (tiktoken downloads it on first use)


def _encoding(name: str) -> Any:
    """tiktoken's encoding for an OpenAI model, or None. Loaded lazily and cached; a
    failure (not installed, encoding not downloadable offline) is remembered. Loaded
    in a thread with a time limit: tiktoken downloads an encoding without one, and a
    network that takes the connection and never answers would hang ``inspect``."""
    global _tiktoken_ok
    if not _tiktoken_ok:
        return None
    if name in _encodings:
        return _encodings[name]
    try:
        import tiktoken
    except Exception:
        _tiktoken_ok = False
        return None
    loaded: list[Any] = []

    def load() -> None:
        try:
            try:
                loaded.append(tiktoken.encoding_for_model(name))
            except KeyError:
                loaded.append(tiktoken.get_encoding("o200k_base"))
        except Exception:  # (offline: counted by characters)
            pass

    worker = threading.Thread(target=load, name="ember-tiktoken", daemon=True)
    worker.start()
    worker.join(TIKTOKEN_TIMEOUT)
    if not loaded:
        _tiktoken_ok = False
        if worker.is_alive():
            warnings.warn(f"tiktoken did not load its encoding for {name} within "
                          f"{TIKTOKEN_TIMEOUT:g} s (it downloads it on first use): token "
                          "estimates count ~4 characters per token. Set EMBER_TIKTOKEN=0 "
                          "to skip tiktoken, or TIKTOKEN_CACHE_DIR to a directory holding "
                          "the encoding.", stacklevel=2)
        return None
    _encodings[name] = loaded[0]
    return loaded[0]


_chars = lambda text: len(text) / 4  # noqa: E731 - ceil'd once per call, as sim bills


def _counter(model: str) -> tuple[str, Callable[[str], float]]:
    """(kind, count) for a model: tiktoken for OpenAI models if available, else ~4 chars."""
    provider, name = split_model(model)
    enc = _encoding(name) if provider == "openai" else None
    if enc is None:
        return "chars", _chars
    return enc.name, lambda text: len(enc.encode(text, disallowed_special=()))


def count_tokens(text: str, model: str = "sim") -> int:
    """Tokens of a text for a model id (``"gpt-4o-mini"``, ``"openai/gpt-4o-mini"``, ...):
    tiktoken for OpenAI models if available, else ~4 chars."""
    if "/" not in model:  # a bare name or "provider:model": canonical, as models() makes it
        from .. import providers
        from .._request import parse_model_id

        try:
            model = "/".join(parse_model_id(model, providers.known()))
        except Exception:  # (not a model id Ember knows: counted by characters)
            pass
    return math.ceil(_counter(model)[1](text))
