"""What crosses between the Ray driver and its actors: exceptions (packed so any class
survives pickling), Ember's context variables (by name), what the cluster's limiter
learns of a failure, call records (in wall-clock time) and the driver's settings."""

from __future__ import annotations

import copyreg
import importlib
import os
import sys
import time
from contextvars import ContextVar
from dataclasses import replace

from .. import errors, providers
from . import limits
from .record import CallRecord

__all__ = ["pack_error", "unpack_error", "portable_error", "failure", "as_error", "shifted",
           "clock_offset", "apply_settings"]


def pack_error(exc: BaseException) -> tuple:
    """An exception as (class, args, attributes): survives pickling even when the
    class's __init__ takes other arguments than its args."""
    return type(exc), exc.args, dict(getattr(exc, "__dict__", {}))


def unpack_error(packed: tuple) -> BaseException:
    cls, args, state = packed
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc


def portable_error(exc: BaseException) -> tuple:
    from ray import cloudpickle

    packed = pack_error(exc)
    try:
        cloudpickle.dumps(packed)
    except Exception:
        packed = pack_error(errors.EmberError(f"{type(exc).__name__}: {exc}"))
    return packed


def _contextvar(module: str, attr: str) -> ContextVar:
    return getattr(importlib.import_module(module), attr)


def _reduce_contextvar(var: ContextVar) -> tuple:
    """Ember's context variables travel by name: a function wrapped by `ember.retry`
    (say) refers to one, and functions from ``__main__`` are shipped by value."""
    for name, module in list(sys.modules.items()):
        if name == "ember" or name.startswith("ember."):
            for attr, value in list(vars(module).items()):
                if value is var:
                    return _contextvar, (name, attr)
    raise TypeError(f"cannot pickle the context variable {var.name!r}")


copyreg.pickle(ContextVar, _reduce_contextvar)


def failure(error: BaseException | None) -> tuple | None:
    """What the limiter learns from a failed request: no message, no payload."""
    if error is None:
        return None
    return (type(error).__name__, getattr(error, "status", None),
            getattr(error, "retry_after", None), dict(getattr(error, "headers", None) or {}))


def as_error(failure: tuple | None) -> BaseException | None:
    if failure is None:
        return None
    name, status, retry_after, headers = failure
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, errors.ProviderError)):
        cls = errors.ProviderError
    return cls(name, status=status, retry_after=retry_after, headers=headers)


def shifted(calls: list[CallRecord], by: float) -> list[CallRecord]:
    return [replace(c, start=c.start + by, end=c.end + by) for c in calls]


def clock_offset() -> float:
    """Wall clock minus this process's monotonic clock: records travel in wall time."""
    return time.time() - time.monotonic()


def apply_settings(settings: dict) -> None:
    """Take the driver's settings: forwarded environment, custom providers, limit caps."""
    os.environ.update(settings["env"])
    for name, provider in settings["providers"].items():
        if providers._custom.get(name) is not provider:
            providers._custom[name] = provider
            providers._instances.pop(name, None)
    caps = {name: dict(conf) for name, conf in settings["limits"].items()}
    limits._user.clear()
    limits._user.update(caps)
