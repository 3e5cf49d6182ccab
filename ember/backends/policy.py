"""Per-call options that travel with a request: the retry policy and time limits.

They are context variables, so `ember.retry` / `ember.timeout` scope every model call
made inside the wrapped function — eagerly, and under jit, where the tracer copies
them onto the recorded nodes.

Time limits are *relative*: a `CallOptions` holds ``(region, seconds)`` pairs, one per
enclosing `ember.timeout`, never an absolute time (a cached graph may run hours after
it was traced). The absolute deadline of a region lives in a per-execution table
(`deadlines_var`): an eager `timeout(fn)` starts its clock when it is called; in a
replayed graph the clock starts when the region's first call starts.
"""

from __future__ import annotations

import itertools
import random
import time
from typing import Any
from contextvars import ContextVar
from dataclasses import dataclass, field, replace

from ..errors import EmberError, QuotaExceededError

__all__ = ["RetryPolicy", "CallOptions", "DEFAULT_RETRY", "current_options", "options_var",
           "deadlines_var", "new_region", "deadline_of", "rerun_var", "binding_regions"]

_rng = random.Random()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff, jittered between half the delay and all of it;
    ``Retry-After`` is a floor, never shortened."""

    max_attempts: int = 3
    initial_delay: float = 0.5
    max_delay: float = 30.0
    multiplier: float = 2.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"max_attempts must be an integer >= 1, got {self.max_attempts!r}")
        for name in ("initial_delay", "max_delay", "multiplier"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
                raise TypeError(f"{name} must be a number of seconds, got {value!r}"
                                if name != "multiplier" else
                                f"multiplier must be a number >= 1, got {value!r}")
        if self.initial_delay < 0 or self.max_delay < 0 or self.multiplier < 1:
            raise ValueError("delays must be >= 0 and multiplier >= 1, got initial_delay="
                             f"{self.initial_delay!r}, max_delay={self.max_delay!r}, "
                             f"multiplier={self.multiplier!r}")

    def retryable(self, exc: BaseException) -> bool:
        """Transient errors: 429 throttling, 5xx, timeouts, dropped connections, malformed
        bodies, parse errors. Never 4xx, context length or quota exhaustion."""
        if isinstance(exc, QuotaExceededError) or getattr(exc, "final", False):
            return False
        return isinstance(exc, EmberError) and exc.transient

    def delay(self, attempt: int, exc: BaseException | None = None,
              rng: random.Random = _rng) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (attempts count from 1)."""
        base = min(self.max_delay, self.initial_delay * self.multiplier ** (attempt - 1))
        wait = rng.uniform(base / 2, base) if self.jitter else base
        floor = getattr(exc, "retry_after", None)
        if floor is not None:
            wait = max(wait, float(floor))
        return wait


# The SDKs' own default is two retries; Ember keeps that default and owns the loop
# (the SDK clients are made with max_retries=0), so attempts never multiply.
DEFAULT_RETRY = RetryPolicy()


@dataclass(frozen=True, slots=True)
class CallOptions:
    """What a call carries besides its request. Hashable: it is a node param and part
    of jit's cache key."""

    retry: RetryPolicy = DEFAULT_RETRY
    timeouts: tuple[tuple[int, float], ...] = ()  # (region id, seconds), outermost first
    # which call of each region's wrapper this is, in a traced function (-1: not
    # traced): two calls of one `timeout` wrapper have a clock each. Not compared: the
    # passes merge and fuse calls of different ones (they start together)
    entries: tuple[int, ...] = field(default=(), compare=False)
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __hash__(self) -> int:
        # cached: passes and jit's cache keys hash options per call (~4k instructions
        # each time otherwise); every field is a number, so the value is the same in
        # any process that unpickles it
        h = self._hash
        if not h:
            h = hash((self.retry, self.timeouts)) or 1
            object.__setattr__(self, "_hash", h)
        return h

    def with_(self, **changes) -> CallOptions:
        return replace(self, **changes)

    @property
    def timeout(self) -> float | None:
        """The tightest time limit in seconds (for display), or None."""
        return min((s for _, s in self.timeouts), default=None)


options_var: ContextVar[CallOptions] = ContextVar("ember_call_options", default=CallOptions())
# region id (or (region id, entry) in a traced graph) -> time.monotonic() deadline.
# Shared (mutated) by every task of one jitted call, across its plan's rounds; an eager
# `timeout` call installs its own copy.
deadlines_var: ContextVar[dict[Any, float] | None] = ContextVar("ember_deadlines", default=None)
# > 0 while `ember.retry` runs a function again: its calls are made again, as eager
# Python makes them (a jitted call's check run sends them anew, not from its memo)
rerun_var: ContextVar[int] = ContextVar("ember_rerun", default=0)
_regions = itertools.count(1)


def current_options() -> CallOptions:
    return options_var.get()


def new_region() -> int:
    """A fresh region id (one per `timeout` wrapper, stable across its calls)."""
    return next(_regions)


def deadline_of(options: CallOptions, now: float | None = None) -> float | None:
    """The absolute deadline of a call: the earliest of its regions' deadlines. A region
    not started in this execution starts now."""
    if not options.timeouts:
        return None
    now = time.monotonic() if now is None else now
    table = deadlines_var.get()
    if table is None:
        table = {}
    deadline = None
    entries = options.entries
    for i, (region, seconds) in enumerate(options.timeouts):
        key: Any = region if i >= len(entries) or entries[i] < 0 else (region, entries[i])
        d = table.get(key)
        if d is None:
            d = table[key] = now + seconds
        deadline = d if deadline is None else min(deadline, d)
    return deadline


def binding_regions(options: CallOptions) -> frozenset[int]:
    """The regions whose deadline is the call's (the earliest of its regions'): those a
    time-out of the call ends."""
    table = deadlines_var.get() or {}
    entries = options.entries
    keys = [(r, r if i >= len(entries) or entries[i] < 0 else (r, entries[i]))
            for i, (r, _) in enumerate(options.timeouts)]
    due = [(table[k], r) for r, k in keys if k in table]
    if not due:
        return frozenset()
    first = min(d for d, _ in due)
    return frozenset(r for d, r in due if d <= first)
