"""Providers: where a model id goes. Built-ins are imported lazily.

    ember.providers.register("mycorp", my_async_fn)   # then models("mycorp/model-x", ...)
"""

from __future__ import annotations

import importlib
import threading
from typing import Any, Awaitable, Callable

from .._request import Request, parse_model_id
from .base import FunctionProvider, Provider

__all__ = ["Provider", "register", "get", "resolve", "known", "reset", "Request"]

# name -> "module:factory"; imported on first use so `import ember` stays fast
_BUILTIN = {
    "sim": "ember.providers.sim:SimProvider",
    "openai": "ember.providers.openai:OpenAIProvider",
    "anthropic": "ember.providers.anthropic:AnthropicProvider",
    "ollama": "ember.providers.local:ollama",
    "vllm": "ember.providers.local:vllm",
    "llamacpp": "ember.providers.local:llamacpp",
    "local": "ember.providers.local:local",
}
_custom: dict[str, Provider] = {}
_instances: dict[str, Provider] = {}
_lock = threading.Lock()


# submodules reachable as attributes (``ember.providers.sim.configure(...)`` right after
# ``import ember``), imported on first access; the SDKs stay unimported until a request
_SUBMODULES = frozenset({"sim", "openai", "anthropic", "local", "prices", "base", "sdk",
                         "transport"})


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def known() -> tuple[str, ...]:
    return tuple(sorted(set(_BUILTIN) | set(_custom)))


def register(prefix: str, fn: Callable[[Request], Awaitable[Any]] | Provider, *,
             supports_n: bool = False, default_temperature: float = 1.0) -> None:
    """Route ``prefix/...`` model ids to ``fn``: an ``async def fn(request)`` returning a
    str, a `Response` or a list of them — or a `Provider` instance."""
    if not prefix or "/" in prefix or ":" in prefix:
        raise ValueError(f"A provider prefix is a plain name like 'mycorp', got {prefix!r}.")
    if not isinstance(fn, Provider) and not callable(fn):
        raise TypeError(f"A custom provider is an async function or a Provider, got {fn!r:.80}.")
    provider = fn if isinstance(fn, Provider) else FunctionProvider(
        prefix, fn, supports_n=supports_n, default_temperature=default_temperature)
    with _lock:
        replaced = [p for p in (_custom.get(prefix), _instances.pop(prefix, None))
                    if p is not None and p is not provider]
        _custom[prefix] = provider
    _close(list({id(p): p for p in replaced}.values()))  # (as reset() does)


def get(name: str) -> Provider:
    """The provider instance for a name (created once; clients inside are pooled)."""
    inst = _instances.get(name)
    if inst is not None:
        return inst
    with _lock:
        if name in _custom:
            inst = _custom[name]
        else:
            module, factory = _BUILTIN[name].split(":")
            inst = getattr(importlib.import_module(module), factory)()
        _instances[name] = inst
        return inst


def resolve(model: str) -> tuple[Provider, str]:
    """(provider instance, model name) for a model id."""
    provider, name = parse_model_id(model, known())
    return get(provider), name


def reset() -> None:
    """Forget provider instances (new clients are made on next use), closing the
    clients of the old ones on Ember's loop. Dropping an open client to the garbage
    collector instead lets its sockets be closed behind the loop's back, and a new
    connection that reuses such a file descriptor may then never be read."""
    with _lock:
        old = list(_instances.values())
        _instances.clear()
    _close(old)


def _close(old: list[Provider]) -> None:
    """Close retired provider instances' clients on Ember's loop."""
    from .. import _runtime

    loop = _runtime._loop
    if not old or loop is None or not loop.is_running():
        return

    async def close() -> None:
        for inst in old:
            try:
                await inst.aclose()
            except Exception:  # best effort: a client that fails to close is dropped
                pass

    if _runtime.on_loop():
        loop.create_task(close())
    else:
        import asyncio

        asyncio.run_coroutine_threadsafe(close(), loop).result(timeout=10)
