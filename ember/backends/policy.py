"""Per-call options that travel with a request: the retry policy and a deadline.

They are context variables, so `ember.retry` / `ember.timeout` scope every model call
made inside the wrapped function — eagerly, and under jit, where the tracer copies
them onto the recorded nodes.
"""

from __future__ import annotations

import random
from contextvars import ContextVar
from dataclasses import dataclass, replace

from ..errors import EmberError, QuotaExceededError

__all__ = ["RetryPolicy", "CallOptions", "DEFAULT_RETRY", "current_options", "options_var"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter; ``Retry-After`` is a floor, never shortened."""

    max_attempts: int = 3
    initial_delay: float = 0.5
    max_delay: float = 30.0
    multiplier: float = 2.0
    jitter: bool = True

    def retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, QuotaExceededError):
            return False
        return isinstance(exc, EmberError) and exc.transient

    def delay(self, attempt: int, exc: BaseException | None = None,
              rng: random.Random = random.Random()) -> float:
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
    retry: RetryPolicy = DEFAULT_RETRY
    deadline: float | None = None  # time.monotonic() by which the call must finish

    def with_(self, **changes) -> CallOptions:
        return replace(self, **changes)


options_var: ContextVar[CallOptions] = ContextVar("ember_call_options", default=CallOptions())


def current_options() -> CallOptions:
    return options_var.get()
