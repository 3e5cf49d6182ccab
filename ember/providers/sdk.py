"""`SDKProvider`: what every SDK-backed provider shares (`openai`, `anthropic`, and the
OpenAI-compatible local servers): client pooling, rate-limit headers, and the mapping
of HTTP failures to Ember's errors:


    401 / 403                       AuthenticationError
    404                             ModelNotFoundError
    400 "context length"            ContextLengthError
    429 "Request too large"         ContextLengthError  (over the tokens-per-minute limit)
    400 / 413 / 422 / other 4xx     BadRequestError
    429 insufficient_quota          QuotaExceededError  (also 402, 400 "credit balance")
    429 without any retry hint      QuotaExceededError  (a spend cap, not throttling)
    429                             RateLimitError      (``retry_after`` in seconds)
    408 / 409 / 5xx / 529           ServerError
    dropped / refused connection    ConnectionError
    client timeout                  TimeoutError
    non-JSON body, missing fields   ResponseFormatError

``retry_after`` comes from ``retry-after-ms``, then ``retry-after`` (seconds or an
HTTP date); a 429 without either falls back to the ``x-ratelimit-reset-*`` /
``anthropic-ratelimit-*-reset`` headers. Every error carries the response headers;
successful responses hand theirs to ``provider.on_headers`` when it is set. No error
message ever contains the API key, nor the base URL's user info or query values.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import re
import sys
import time
import weakref
from typing import Any, Callable, Mapping, TypeVar

from .._request import Request
from ..backends.dispatch import gather_all
from ..backends.headers import parse_duration, parse_retry_after, seconds_until
from .._response import Response
from ..errors import (
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ContextLengthError,
    EmberError,
    MissingAPIKeyError,
    ModelNotFoundError,
    ProviderError,
    QuotaExceededError,
    RateLimitError,
    ResponseFormatError,
    ServerError,
)
from ..errors import ConnectionError as EmberConnectionError
from ..errors import TimeoutError as EmberTimeoutError
from . import prices
from .transport import aiohttp_client, http_transport
from .base import Provider
from .credentials import check_url, clean_key, safe_url, scrub, url_secrets

__all__ = ["SDKProvider", "ClientPool", "header_dict", "reset_hint", "error_fields"]

T = TypeVar("T")

_DETAIL_LIMIT = 300
_CONTEXT_RE = re.compile(
    r"context[_ ]length|context window|maximum context|prompt is too long|too many (input )?tokens"
    r"|exceeds? (the )?context|context (limit|size)|exceed_context_size"
)
# quota wording only: OpenAI's throttling 429s also mention "billing" (to raise limits)
_QUOTA_RE = re.compile(
    r"insufficient_quota|exceeded your current quota|quota exceeded|billing_hard_limit"
    r"|credit balance|spend(ing)? limit"
)
# a 429's words for throttling (not a used-up quota, which _QUOTA_RE names)
_RATE_RE = re.compile(r"rate.?limit|too many requests|requests per (minute|second|min|sec)"
                      r"|\b(rpm|tpm)\b|slow down")


# --------------------------------------------------------------------------- helpers


def _shorten(text: str, limit: int = _DETAIL_LIMIT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def header_dict(headers: Any) -> dict[str, str]:
    """Response headers as a plain dict with lower-case names."""
    return {str(k).lower(): str(v) for k, v in headers.items()} if headers else {}


def reset_hint(headers: Mapping[str, str]) -> float | None:
    """Seconds until the exhausted rate-limit windows reset, from the
    ``x-ratelimit-reset-*`` / ``anthropic-ratelimit-*-reset`` headers (or ``None``)."""
    resets: list[tuple[bool, float]] = []
    for name, value in headers.items():
        if name.startswith("x-ratelimit-reset-"):
            kind = name[len("x-ratelimit-reset-"):]
            remaining, secs = headers.get(f"x-ratelimit-remaining-{kind}"), parse_duration(value)
        elif name.startswith("anthropic-ratelimit-") and name.endswith("-reset"):
            kind = name[len("anthropic-ratelimit-"):-len("-reset")]
            remaining = headers.get(f"anthropic-ratelimit-{kind}-remaining")
            secs = seconds_until(value)
        else:
            continue
        if secs is not None:
            resets.append((remaining == "0", secs))
    pool = [s for exhausted, s in resets if exhausted] or [s for _, s in resets]
    return max(pool) if pool else None


def _validation(detail: Any) -> str | None:
    """FastAPI's 422 ``detail``, a list of {"loc": [...], "msg": ...}, as one line."""
    if not isinstance(detail, list):
        return None
    said = [f"{'.'.join(str(p) for p in d.get('loc') or ())}: {d.get('msg')}".lstrip(": ")
            for d in detail if isinstance(d, dict) and d.get("msg")]
    return "; ".join(said) or None


def error_fields(body: Any, fallback: str) -> tuple[str, str]:
    """(message, code) from an error body in OpenAI's or Anthropic's shape."""
    if isinstance(body, dict):
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        message = inner.get("message")
        if not isinstance(message, str):  # FastAPI's (vLLM's) {"detail": ...}
            detail = inner.get("detail")
            message = detail if isinstance(detail, str) else _validation(detail) or fallback
        # (a number is an HTTP status echoed, as llama.cpp does; the type names the error)
        code = inner.get("code") if isinstance(inner.get("code"), str) else None
        return message, str(code or inner.get("type") or "")
    if isinstance(body, str) and body.strip():
        return body, ""
    return fallback, ""


def cut_at_stops(text: str, stops: Any) -> tuple[str, bool]:
    """``text`` up to its first stop sequence, as a server cuts an answer, for stops
    Ember applies itself (those the API refuses): (text, whether it was cut)."""
    cut = min((i for i in (text.find(x) for x in stops if x) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


@functools.lru_cache(maxsize=16)
def _digest(api_key: str) -> str:
    """A key's identity in the pool tables: its hash (the tables never hold the key;
    this small cache does, like the environment it came from)."""
    return hashlib.sha256(api_key.encode()).hexdigest()


class ClientPool:
    """SDK clients keyed by (event loop, base URL, key hash).

    Connections are reused within a loop but never shared across loops: an HTTP
    connection pool belongs to the loop that opened it. One client per base URL owns
    the connections; another key's client is a copy of it (``with_options``) that
    shares them. Building a client of its own per key cost ~0.8 MB and ~30 ms on the
    loop, for every key a service rotated through; copies are kept for the latest
    `MAX_KEYS` keys.
    """

    MAX_KEYS = 32  # key copies kept per loop (a copy holds no connections)

    def __init__(self, factory: Callable[[str | None, str], Any]) -> None:
        self._factory = factory
        self._by_loop: weakref.WeakKeyDictionary[Any, dict[tuple, Any]] = weakref.WeakKeyDictionary()
        self._no_loop: dict[tuple, Any] = {}

    def get(self, base_url: str | None, api_key: str) -> Any:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # outside a loop: for inspection only
            table = self._no_loop
        else:
            table = self._by_loop.get(loop)
            if table is None:
                # a client's connections keep its loop alive: drop the clients of closed loops
                for dead in [lp for lp in self._by_loop if lp.is_closed()]:
                    self._by_loop.pop(dead, None)
                table = self._by_loop[loop] = {}
        key = (base_url, _digest(api_key))
        client = table.get(key)
        if client is None:
            owner = table.get((base_url, None))  # (the client owning the connections)
            if owner is None:
                client = table[(base_url, None)] = table[key] = self._factory(base_url, api_key)
            else:
                copies = [k for k in table if k[1] is not None and table[k] is not table.get(
                    (k[0], None))]
                if len(copies) >= self.MAX_KEYS:  # the oldest copy goes (nothing to close)
                    table.pop(copies[0])
                client = table[key] = owner.with_options(api_key=api_key)
        return client

    async def aclose(self) -> None:
        """Close the clients of the running loop (and those made outside any loop): the
        owners of connections; their copies share them."""
        mine = self._by_loop.pop(asyncio.get_running_loop(), {})
        owners = [c for k, c in [*mine.items(), *self._no_loop.items()] if k[1] is None]
        self._no_loop.clear()
        for client in owners:
            await client.close()


# ---------------------------------------------------------------------- SDKProvider


closing: set[asyncio.Task] = set()  # retired providers' clients, closing once idle


class SDKProvider(Provider):
    """A provider that speaks HTTP through an official SDK client.

    Subclasses set ``sdk`` (the SDK's module name), ``key_env``, ``base_url_env`` and
    ``label``, and implement `make_client`, `params`, `send` and `parse`.
    """

    sdk = ""
    label = ""  # how messages name the service, e.g. "OpenAI"
    key_env: str | None = None
    base_url_env: str | None = None
    example_model = "model-name"
    default_base_url = ""  # shown in messages when base_url() is None
    start_hint = ""  # how to start a local server, for a refused connection

    def __init__(self, *, timeout: float | None = None) -> None:
        self.timeout = timeout  # seconds per HTTP request; None = the SDK's default
        self._pool = ClientPool(self.make_client)
        self._busy = 0  # requests on their way through this instance's clients
        self._retired = False  # replaced by `providers.reset()`

    # -- configuration, read at call time

    def api_key(self) -> str:
        key = os.environ.get(self.key_env, "") if self.key_env else ""
        key = clean_key(key, self.key_env) if key else ""  # (key_env is set when key is)
        if not key:
            raise MissingAPIKeyError(self.name, self.key_env or "API key")
        return key

    def base_url(self) -> str | None:
        value = os.environ.get(self.base_url_env, "") if self.base_url_env else ""
        if not value.strip():
            return None
        return check_url(value, self.base_url_env, self.default_base_url  # type: ignore[arg-type]
                         or "http://localhost:8000/v1")

    def client(self) -> Any:
        """The pooled SDK client for the current event loop and configuration."""
        return self._pool.get(self.base_url(), self.api_key())

    async def aclose(self) -> None:
        """Close the clients; those carrying requests close once the requests end
        (`providers.reset()` while calls are in flight: closing their client under
        them made them fail and be sent again). A later attempt on this instance goes
        to the provider's current one."""
        self._retired = True
        if self._busy:
            task = asyncio.get_running_loop().create_task(self._close_when_idle())
            closing.add(task)
            task.add_done_callback(closing.discard)
            return
        await self._pool.aclose()

    async def _close_when_idle(self) -> None:
        while self._busy:
            await asyncio.sleep(0.05)
        await self._pool.aclose()

    # -- subclass hooks

    def make_client(self, base_url: str | None, api_key: str) -> Any:  # pragma: no cover
        raise NotImplementedError

    def client_options(self, base_url: str | None, api_key: str) -> dict[str, Any]:
        """The SDK client's keyword arguments: no SDK retries (Ember owns them), the
        configured timeout, and the fastest HTTP transport available (`http_transport`)."""
        kwargs: dict[str, Any] = {"api_key": api_key, "max_retries": 0}
        if base_url:
            kwargs["base_url"] = base_url
        elif self.base_url_env and self.default_base_url and self.base_url_env in os.environ:
            kwargs["base_url"] = self.default_base_url  # (set but blank: the SDK would use it)
        if self.timeout is not None:
            kwargs["timeout"] = self.timeout
        # aiohttp refuses a URL with credentials next to the SDK's auth header
        http_client = None if base_url and "@" in base_url else aiohttp_client(self.sdk)
        if http_client is not None:
            kwargs["http_client"] = http_client
        return kwargs

    def params(self, request: Request) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError

    async def send(self, client: Any, params: dict[str, Any]) -> tuple[Any, bytes]:  # pragma: no cover
        """Make the request; return (raw response, body bytes)."""
        raise NotImplementedError

    def parse(self, body: dict, request: Request, latency: float,
              headers: dict[str, str]) -> list[Response]:  # pragma: no cover
        raise NotImplementedError

    # -- the call

    async def complete(self, request: Request) -> list[Response]:
        if not request.model:
            raise ConfigurationError(
                f"Model id {request.model_id!r} names provider {self.name!r} but no model; "
                f"write it as '{self.name}/{self.example_model}'.")
        if request.n > 1 and not self.supports_n:
            singles = await gather_all(self.complete(request.with_n(1)) for _ in range(request.n))
            return [r for rs in singles for r in rs]
        if self._retired:  # (a retry of a call made before providers.reset())
            from . import get

            current = get(self.name)
            if current is self:  # (retired by Ember's exit handler: nothing replaces it)
                raise RuntimeError(
                    f"{self.name}: Ember is shutting down (the interpreter is exiting); "
                    "the request was not sent.")
            return await current.complete(request)
        if self.sdk not in sys.modules:  # (~1-3 s on first use: on the loop, every
            await asyncio.to_thread(_import_sdk, self.sdk)  # other call would wait)
        params = self.params(request)
        client = self.client()
        start = time.perf_counter()
        self._busy += 1
        try:
            raw, content = await self.send(client, params)
        except Exception as exc:
            mapped = self.map_error(exc, request)
            if mapped is None:
                raise
            raise mapped from None
        finally:
            self._busy -= 1
        latency = time.perf_counter() - start
        headers = header_dict(raw.headers)
        if self.on_headers is not None:
            self.on_headers(headers)
        return self.parse(self.decode(content, request, headers), request, latency, headers)

    def decode(self, content: bytes, request: Request, headers: dict[str, str]) -> dict:
        try:
            body = json.loads(content)
        except ValueError:
            raise self.format_error(request, "the body is not JSON", content, headers) from None
        if not isinstance(body, dict):
            raise self.format_error(request, "the body is not a JSON object", content, headers)
        return body

    def format_error(self, request: Request, what: str, content: Any,
                     headers: dict[str, str]) -> ResponseFormatError:
        if isinstance(content, bytes):
            content = content.decode("utf-8", "replace")
        elif not isinstance(content, str):
            content = json.dumps(content, default=str)
        snippet = _shorten(scrub(content, *self._secrets()), 200)
        return ResponseFormatError(
            f"{self.title} sent a malformed answer for model {request.model_id!r}: {what}. "
            f"Body starts: {snippet!r}. This is usually transient (ember.retry retries it); "
            f"if it persists, check that {self._where()}{self._url_hint()} is a compatible "
            "endpoint.",
            provider=self.name, model=request.model_id, status=200, headers=headers)

    def cost(self, request: Request, input_tokens: float, output_tokens: float) -> float | None:
        return prices.cost_of(self.name, request.model, input_tokens, output_tokens)  # type: ignore[arg-type]

    def cost_without_usage(self, request: Request) -> float | None:
        """The cost of an answer that came without token counts (some OpenAI-compatible
        servers omit ``usage``): nothing for a free model, else unknown."""
        price = prices.price_for(self.name, request.model)  # type: ignore[arg-type]
        free = price is not None and not price.input and not price.output
        return 0.0 if free else None

    # -- errors

    @property
    def title(self) -> str:
        """The label, capitalized to start a sentence."""
        return self.label[:1].upper() + self.label[1:]

    def _key_or_none(self) -> str | None:
        try:
            return self.api_key()
        except EmberError:
            return None

    def _secrets(self) -> list[str | None]:
        """What `scrub` takes out of server text: the API key and the base URL's user
        info and query values (a server may echo the URL it was sent)."""
        try:
            url = self.base_url()
        except EmberError:
            url = None
        return [self._key_or_none(), *url_secrets(url)]

    def _where(self) -> str:
        return safe_url(self.base_url() or self.default_base_url) or "the default endpoint"

    def _url_hint(self) -> str:
        env = self.base_url_env
        if not env:
            return ""
        return f" (set by {env})" if os.environ.get(env) else f" (the default; {env} overrides it)"

    def map_error(self, exc: BaseException, request: Request) -> EmberError | None:
        """Ember's error for an SDK or transport exception, or ``None`` if it is not one."""
        sdk = sys.modules.get(self.sdk)
        model = request.model_id
        timed_out = _is(exc, sdk, "APITimeoutError") or _is_transport(exc, "TimeoutException")
        if timed_out and not _refused(exc):
            limit = f"{self.timeout:g}s" if self.timeout is not None else "the client timeout"
            return EmberTimeoutError(
                f"{self.title} did not answer within {limit} for model {model!r}. The request "
                "was abandoned; retry it (ember.retry does) or allow a longer timeout.")
        if timed_out or _is(exc, sdk, "APIConnectionError") \
                or _is_transport(exc, "TransportError", "StreamError"):
            if _nothing_listening(exc):
                return EmberConnectionError(
                    f"Could not connect to {self.label} at {self._where()}{self._url_hint()} "
                    f"for model {model!r}: the connection was refused, so no server is "
                    f"listening there. {self.start_hint}Check the URL and that the server is "
                    "running.", provider=self.name, model=model)
            return EmberConnectionError(
                f"Lost the connection to {self.label} at {self._where()}{self._url_hint()} for "
                f"model {model!r}: {self._cause(exc)}. Check the network and that the server "
                "is running; this is usually transient.", provider=self.name, model=model)
        if _is(exc, sdk, "APIStatusError"):
            headers = header_dict(exc.response.headers)  # type: ignore[attr-defined]
            message, code = error_fields(exc.body, exc.message)  # type: ignore[attr-defined]
            detail = _shorten(scrub(message, *self._secrets()))
            return self.status_error(exc.status_code, headers, detail, code, request)  # type: ignore[attr-defined]
        if _is(exc, sdk, "APIError"):  # e.g. the SDK's response validation
            return self.format_error(request, "the SDK could not read it", str(exc), {})
        aiohttp = sys.modules.get("aiohttp")
        if aiohttp is not None and isinstance(exc, aiohttp.ClientError):
            # a reply that is not HTTP (a wrong port, a broken proxy), cut off or garbled:
            # the SDKs' aiohttp transport passes these on unwrapped
            return EmberConnectionError(
                f"{self.label} at {self._where()}{self._url_hint()} sent a reply that is not "
                f"valid HTTP for model {model!r}: {self._cause(exc)}. Check the URL (is "
                "something else listening there?) and any proxy; if it is transient, "
                "ember.retry retries it.", provider=self.name, model=model)
        return None

    def _cause(self, exc: BaseException) -> str:
        root: BaseException = exc
        for _ in range(10):  # the innermost cause says what actually happened
            nxt = root.__cause__ or root.__context__
            if nxt is None:
                break
            root = nxt
        text = f"{type(root).__name__}: {root}" if str(root) else type(root).__name__
        return _shorten(scrub(text, *self._secrets()), 200).rstrip(".")

    def status_error(self, status: int, headers: dict[str, str], detail: str, code: str,
                     request: Request) -> ProviderError:
        """Map one HTTP error status (with its body's message and code) to Ember's error."""
        model, label = request.model_id, self.title
        retry_after = parse_retry_after(headers)
        said = f" The server said: {detail}" if detail else ""
        text = f"{code} {detail}".lower()
        key_hint = f"Check {self.key_env}" if self.key_env else "Check the server's API key setting"

        def make(cls: type[ProviderError], message: str, after: float | None = retry_after) -> ProviderError:
            return cls(message + said, provider=self.name, model=model, status=status,
                       retry_after=after, headers=headers)

        if status == 401:
            return make(AuthenticationError,
                        f"{label} rejected the API key for model {model!r} (HTTP 401). {key_hint}.")
        if status == 403:
            return make(AuthenticationError,
                        f"{label} refused access to model {model!r} (HTTP 403). {key_hint} and "
                        "that the key's account or project may use this model.")
        if status == 404:
            # (no error body in the API's shape: the URL's path is wrong, not the model)
            path_hint = " If the server has this model, the base URL's path may be wrong " \
                "(OpenAI-compatible servers serve under /v1)." if not code else ""
            return make(ModelNotFoundError,
                        f"{label} has no model {request.model!r} at {self._where()}{self._url_hint()} "
                        f"(HTTP 404).{prices.did_you_mean(request.model, prices.known_models(self.name))}"
                        f" Check the model name in {model!r}, and that this key or server may "
                        f"use it.{path_hint}")
        if status == 402 or (status in (400, 403, 429) and _QUOTA_RE.search(text)):
            return make(QuotaExceededError,
                        f"{label} says the quota, credit or spend limit of your account is used "
                        f"up (HTTP {status}, model {model!r}). Check billing and usage limits; "
                        "retrying will not help.", None)
        if status == 429 and "request too large" in text:
            # OpenAI's "Request too large ... tokens per min (TPM)": bigger than a whole
            # minute's budget, so waiting cannot help (and must not pause the provider)
            return make(ContextLengthError,
                        f"The request for model {model!r} asks for more tokens than the "
                        f"account's per-minute token limit allows (HTTP 429), so it cannot "
                        "succeed however long you wait. Shorten the prompt or lower max_tokens "
                        "(or raise the limit); retrying will not help.", None)
        if status == 429:
            return self._throttled(make, retry_after, headers, model, text)
        if status in (400, 413) and _CONTEXT_RE.search(text):
            return make(ContextLengthError,
                        f"The prompt for model {model!r} does not fit its context window "
                        f"(HTTP {status}). Shorten the prompt or lower max_tokens.")
        if status in (408, 409, 425) or status >= 500:
            kind = "is overloaded" if status == 529 else "had a server error"
            return make(ServerError,
                        f"{label} {kind} (HTTP {status}) for model {model!r}. This is usually "
                        "transient; ember.retry retries it.")
        return make(BadRequestError,
                    f"{label} rejected the request for model {model!r} as invalid (HTTP {status}). "
                    "Check the parameters passed to models().")

    def _throttled(self, make: Callable[..., ProviderError], retry_after: float | None,
                   headers: dict[str, str], model: str, text: str = "") -> ProviderError:
        if retry_after is None:
            retry_after = reset_hint(headers)
        if retry_after is None and _RATE_RE.search(text):  # (a gateway that says so, with
            return make(RateLimitError,  # no hint of when: the retry policy's backoff)
                        f"{self.title} is throttling requests for model {model!r} (HTTP "
                        "429, with no hint of when to retry). ember.retry backs off and "
                        "retries automatically.", None)
        if retry_after is None:
            return make(QuotaExceededError,
                        f"{self.title} refused model {model!r} with HTTP 429 and no hint of when "
                        "to retry, which means an exhausted quota or spend limit rather than "
                        "throttling. Check billing and usage limits; retrying will not help.")
        return make(RateLimitError,
                    f"{self.title} is throttling requests for model {model!r} (HTTP 429); retry "
                    f"after {retry_after:.2f}s. ember.retry waits and retries automatically.",
                    retry_after)


def _import_sdk(name: str) -> None:
    """Import an SDK, and its aiohttp transport when that is the one chosen."""
    import importlib

    importlib.import_module(name)
    if http_transport() == "aiohttp":
        importlib.import_module("aiohttp")


def _is(exc: BaseException, module: Any, name: str) -> bool:
    cls = getattr(module, name, None) if module is not None else None
    return isinstance(cls, type) and isinstance(exc, cls)


def _nothing_listening(exc: BaseException) -> bool:
    """Was the connection refused (no server at that address), not dropped or slow?"""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, ConnectionRefusedError) or "Connection refused" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False  # pragma: no cover - a cause chain this deep


def _refused(exc: BaseException) -> bool:
    """Did the connection fail (refused, dropped) rather than time out? The SDKs'
    aiohttp transport reports every aiohttp connection error as a connect timeout."""
    aiohttp = sys.modules.get("aiohttp")
    kinds: tuple[type, ...] = (ConnectionError,)  # the builtin: refused, reset, aborted
    if aiohttp is not None:
        kinds += (aiohttp.ClientConnectionError,)
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, kinds) and not isinstance(seen, TimeoutError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False  # pragma: no cover - a cause chain this deep


def _is_transport(exc: BaseException, *names: str) -> bool:
    """Is ``exc`` one of the HTTP library's exceptions (httpx2, or httpx for older SDKs)?"""
    return any(_is(exc, sys.modules.get(lib), name) for lib in ("httpx2", "httpx") for name in names)
