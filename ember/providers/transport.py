"""The SDKs' HTTP transport: which one, and the SDK's raw response type.

Ember gives the official SDKs their own aiohttp client (``DefaultAioHttpClient``,
installed with Ember through ``openai[aiohttp]`` and ``anthropic[aiohttp]``), which
they recommend for concurrency; ``EMBER_HTTP_TRANSPORT=httpx`` keeps their default.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
from typing import Any

from ..errors import ConfigurationError

__all__ = ["http_transport", "aiohttp_client", "http_response_type"]


def http_transport() -> str:
    """The SDKs' HTTP transport: ``aiohttp`` when it is installed (the SDKs' own
    ``DefaultAioHttpClient``, which their docs recommend for concurrency: about 40%
    less CPU per request than their default HTTPX transport), else ``httpx``.
    ``EMBER_HTTP_TRANSPORT=httpx`` forces the SDK default."""
    choice = os.environ.get("EMBER_HTTP_TRANSPORT", "").strip().lower()
    if choice not in ("", "aiohttp", "httpx"):
        raise ConfigurationError(
            f"EMBER_HTTP_TRANSPORT={choice!r} is not a transport; use 'aiohttp' or 'httpx' "
            "(or unset it for the fastest one installed).")
    if choice == "httpx":
        return "httpx"
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        if choice == "aiohttp":
            raise ConfigurationError(
                "EMBER_HTTP_TRANSPORT=aiohttp but aiohttp is not installed; "
                "pip install aiohttp, or unset EMBER_HTTP_TRANSPORT.") from None
        return "httpx"
    return "aiohttp"


def aiohttp_client(sdk: str) -> Any:
    """An SDK's aiohttp-backed HTTP client, when that transport is chosen and a loop
    runs (an aiohttp session belongs to its loop); else ``None`` (the SDK default)."""
    if http_transport() != "aiohttp":
        return None
    make = getattr(__import__(sdk), "DefaultAioHttpClient", None)  # SDKs of 2025 on
    try:
        asyncio.get_running_loop()
        return make() if make is not None else None
    except RuntimeError:  # no loop, or an SDK installed without its aiohttp extra
        return None


@functools.lru_cache(maxsize=None)
def http_response_type(sdk: str) -> type:
    """The HTTP response class of an SDK's transport (``httpx`` or ``httpx2``,
    depending on the SDK version): passed as ``cast_to``, the SDK returns the
    response unparsed, with its headers."""
    for base in __import__(sdk).DefaultAsyncHttpxClient.__mro__:
        root = base.__module__.split(".")[0]
        if base.__name__ == "AsyncClient" and root in ("httpx", "httpx2"):
            return sys.modules[root].Response
    raise RuntimeError(f"cannot find the HTTP response class of the {sdk} SDK")  # pragma: no cover
