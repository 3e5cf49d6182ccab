"""Ember's exceptions.

    EmberError
    ├── ConfigurationError          bad model id, unknown provider, missing API key
    │   └── MissingAPIKeyError      names the environment variable to set
    ├── TraceError                  jit(fullgraph=True) met data-dependent Python, bad tracer use
    ├── ParseError (ValueError)     Response.json() on text that is not JSON or not the schema's
    ├── TimeoutError (builtins.TimeoutError)
    ├── ProviderError               the provider refused or failed a request
    │   ├── AuthenticationError     401 / 403
    │   ├── ModelNotFoundError      404
    │   ├── BadRequestError         400 / 422
    │   │   └── ContextLengthError  the prompt does not fit the model's context window
    │   ├── RateLimitError          429 throttling (transient; honours Retry-After)
    │   ├── QuotaExceededError      429 from a spend cap or exhausted quota (not transient)
    │   ├── ServerError             5xx (transient)
    │   ├── ConnectionError         dropped connection, DNS, refused (transient)
    │   └── ResponseFormatError     the provider answered with a malformed body
    └── BatchError                  vmap: some elements failed; finished results are kept

Transient errors (`RateLimitError`, `ServerError`, `ConnectionError`, `TimeoutError`)
carry ``transient = True``; `ember.retry` retries exactly those, plus `ParseError`.
"""

from __future__ import annotations

import builtins
from typing import Any

__all__ = [
    "EmberError",
    "ConfigurationError",
    "MissingAPIKeyError",
    "TraceError",
    "ParseError",
    "TimeoutError",
    "ProviderError",
    "AuthenticationError",
    "ModelNotFoundError",
    "BadRequestError",
    "ContextLengthError",
    "RateLimitError",
    "QuotaExceededError",
    "ServerError",
    "ConnectionError",
    "ResponseFormatError",
    "BatchError",
]


class EmberError(Exception):
    """Base class of every error Ember raises on purpose."""

    transient = False

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.notes: list[str] = []

    def where(self, model: str | None, location: str | None) -> EmberError:
        """Attach the model and the user's source line of the failing call (once)."""
        parts = [p for p in (f"model {model!r}" if model else None, location) if p]
        note = "raised by the call to " + " at ".join(parts) if parts else ""
        if note and note not in self.notes:
            self.notes.append(note)
        return self

    def __str__(self) -> str:
        text = self.message
        for note in self.notes:
            text += f"\n  ({note})"
        return text


class ConfigurationError(EmberError):
    """The model id, provider or configuration is wrong; the message says how to fix it."""


class MissingAPIKeyError(ConfigurationError):
    """No API key is set for a provider; the message names the environment variable to
    set (e.g. ``OPENAI_API_KEY``) and the offline alternative, the 'sim' model."""

    def __init__(self, provider: str, env_var: str) -> None:
        super().__init__(
            f"No API key for provider {provider!r}. Set the environment variable {env_var} "
            f"(for example `export {env_var}=...`), or use the offline model 'sim'."
        )
        self.provider = provider
        self.env_var = env_var


class TraceError(EmberError):
    """jit could not trace the function as asked; the message names the line and the fix."""


class ParseError(EmberError, ValueError):
    """The model's answer is not what the program asked for (e.g. not JSON)."""

    transient = True  # a new sample may parse; ember.retry retries it

    def __init__(self, message: str, text: str = "") -> None:
        super().__init__(message)
        self.text = text


class TimeoutError(EmberError, builtins.TimeoutError):
    """A call or function exceeded its time limit; in-flight requests were cancelled."""

    transient = True


class ProviderError(EmberError):
    """A provider refused or failed a request."""

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        model: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.model = model
        self.status = status
        self.retry_after = retry_after
        self.headers = headers or {}


class AuthenticationError(ProviderError):
    """The provider rejected the API key (401 / 403)."""


class ModelNotFoundError(ProviderError):
    """The provider does not serve this model (404)."""


class BadRequestError(ProviderError):
    """The provider refused the request as malformed (400 / 422): not retried."""


class ContextLengthError(BadRequestError):
    """The prompt does not fit the model's context window (or is larger than the
    account's per-minute token limit, OpenAI's 429 "Request too large"): not retried."""


class RateLimitError(ProviderError):
    """Throttled (429): transient, retried no sooner than its Retry-After."""

    transient = True


class QuotaExceededError(ProviderError):
    """The account's quota or spend cap is exhausted: not retried."""


class ServerError(ProviderError):
    """The provider failed (5xx): transient, retried."""

    transient = True


class ConnectionError(ProviderError):
    """The connection was refused or dropped: transient, retried."""

    transient = True


class ResponseFormatError(ProviderError):
    """The provider's response body was malformed: transient, retried."""

    transient = True


class BatchError(EmberError):
    """Some elements of a vmap failed. ``results`` holds every element's result, with
    the exception in place for the failed ones; ``errors`` maps index -> exception."""

    def __init__(self, results: list[Any], errors: dict[int, BaseException]) -> None:
        first = min(errors)
        n = len(errors)
        cause = f"{type(errors[first]).__name__}: {errors[first]}".rstrip().rstrip(":")
        if not cause.endswith((".", "!", "?")):  # (most messages end with a period)
            cause += "."
        super().__init__(
            f"{n} of {len(results)} elements failed; first failure at index {first}: "
            f"{cause} The {len(results) - n} "
            "finished results are kept in `.results` (failed elements hold their "
            "exception); pass `return_exceptions=True` to get them without raising."
        )
        self.results = results
        self.errors = errors

    @property
    def succeeded(self) -> dict[int, Any]:
        return {i: r for i, r in enumerate(self.results) if i not in self.errors}
