"""The provider interface: an object with an async ``complete(request)``."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, Awaitable, Callable, TypeVar

from .._request import Request
from .._response import Response, Usage
from .._runtime import FATAL, Raised
from ..errors import ConfigurationError, ResponseFormatError

__all__ = ["Provider", "FunctionProvider"]

T = TypeVar("T")


class Provider:
    """Base class of providers. ``complete`` returns ``request.n`` responses.

    ``supports_n``: one request can carry n samples (OpenAI-compatible chat).
    ``supports_batch``: ``complete_batch`` sends many prompts as one request (a prompt
    it refuses alone gets its exception in place of its responses).
    ``default_temperature``: the temperature the provider uses when none is given;
    it decides whether an unparameterized call is deterministic.
    """

    name = "provider"
    supports_n = False
    supports_batch = False
    default_temperature = 1.0
    # Limits Ember applies before the first response headers teach it the real ones.
    default_rpm: float | None = None
    default_tpm: float | None = None
    default_concurrency: int = 64
    # Set by the backend's rate limiter: called with the (lower-cased) headers of every
    # successful HTTP response, e.g. ``x-ratelimit-*`` / ``anthropic-ratelimit-*``.
    # Failures carry their headers on the `ProviderError` instead.
    on_headers: Callable[[dict[str, str]], None] | None = None

    async def complete(self, request: Request) -> list[Response]:  # pragma: no cover
        raise NotImplementedError

    def added_instruction(self, response_format: Any) -> str | None:
        """Text this provider adds to the prompt for a ``response_format`` (billed as
        input; the static estimate counts it). None: the format is a request field."""
        return None

    async def complete_batch(self, requests: list[Request]) -> list[list[Response] | Exception]:
        """Many requests at once: each one's responses, or the exception of one refused
        alone (raising fails them all). The default sends them concurrently."""
        done = await asyncio.gather(*(_carried(self.complete(r)) for r in requests),
                                    return_exceptions=True)
        for result in done:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # (a cancellation)
        return done

    async def aclose(self) -> None:
        """Release pooled connections."""


class FunctionProvider(Provider):
    """Wraps a user's ``async def fn(request) -> str | Response | list`` as a provider."""

    def __init__(self, name: str, fn: Callable[[Request], Awaitable[Any]], *,
                 supports_n: bool = False, default_temperature: float = 1.0) -> None:
        self.name = name
        self.fn = fn
        self.supports_n = supports_n
        self.default_temperature = default_temperature

    async def complete(self, request: Request) -> list[Response]:
        if request.n > 1 and not self.supports_n:
            singles = [self.complete(request.with_n(1)) for _ in range(request.n)]
            return [r for rs in await asyncio.gather(*singles) for r in rs]
        out = self.fn(request)
        if not inspect.isawaitable(out):
            raise ConfigurationError(
                f"Custom provider {self.name!r} must be an async function "
                f"(`async def fn(request)`); calling it returned {type(out).__name__}.")
        out = await _carried(out)  # (n samples: a task each, see below)
        items = out if isinstance(out, list) else [out]
        result = []
        for item in items:
            if isinstance(item, Response):
                result.append(item)
            elif isinstance(item, str):
                result.append(Response(item, model=request.model_id, usage=Usage(0, 0)))
            else:
                raise _bad_answer(
                    f"Custom provider {self.name!r} returned {type(item).__name__}; "
                    "return a str, a Response, or a list of them.", self.name)
        if len(result) != request.n:
            raise _bad_answer(
                f"Custom provider {self.name!r} returned {len(result)} answers for n={request.n}.",
                self.name)
        return result


async def _carried(aw: Awaitable[T]) -> T:
    """``aw``, its SystemExit or KeyboardInterrupt carried as `Raised`: raised in a
    task (gather makes one of each), they would stop Ember's loop."""
    try:
        return await aw
    except FATAL as exc:
        raise Raised(exc) from None


def _bad_answer(message: str, provider: str) -> ResponseFormatError:
    # a bug in the user's function, not a flaky server: retrying cannot fix it
    exc = ResponseFormatError(message, provider=provider)
    exc.transient = False
    return exc
