"""OpenTelemetry spans for model calls, when ``opentelemetry-api`` is installed.

One CLIENT span per provider request, named and attributed after the GenAI semantic
conventions (``chat gpt-4o-mini``; ``gen_ai.request.model``,
``gen_ai.usage.input_tokens``, ...), plus Ember's own facts under ``ember.*`` (cost,
attempts, throttling wait, cache hits). Spans are children of the caller's current
span: Ember runs calls on its own event loop but in a copy of the caller's context,
so the OpenTelemetry context travels with them. Without the package, or with no
tracer provider configured, nothing happens and nothing is paid but one check.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from .backends.record import CallRecord

__all__ = ["span_emitter", "emit"]

_UNRESOLVED: Any = object()
_tracer: Any = _UNRESOLVED


_idle: Callable[[], bool] = lambda: True  # noqa: E731  # set by _resolve


def _resolve() -> Any:
    """The ``ember`` tracer, or None when opentelemetry-api is not installed."""
    global _tracer, _idle
    try:
        from opentelemetry import trace
    except ImportError:
        _tracer = None
    else:
        from . import __version__

        _tracer = trace.get_tracer("ember", __version__)
        get_provider = trace.get_tracer_provider
        noop = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)

        def _idle() -> bool:
            """No tracer provider is configured yet: every span would be a no-op."""
            return isinstance(get_provider(), noop)
    return _tracer


def attributes(call: CallRecord) -> dict[str, Any]:
    provider, _, model = call.model.partition("/")
    if call.cached:  # an ember.cache hit: no provider was asked
        attrs: dict[str, Any] = {"ember.cached": True, "ember.cache.function": model}
        if call.location:
            attrs["code.location"] = call.location
        return attrs
    attrs = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider,
        "gen_ai.system": provider,  # the name before semconv 1.37, still widely read
        "gen_ai.request.model": model or provider,
        "gen_ai.usage.input_tokens": call.input_tokens,
        "gen_ai.usage.output_tokens": call.output_tokens,
        "ember.attempts": call.attempts,
        "ember.cached": call.cached,
        "ember.coalesced": call.coalesced,
        "ember.batched": call.batched,
        "ember.throttle_wait_s": round(call.throttle_wait, 6),
    }
    if call.n != 1:
        attrs["gen_ai.request.choice.count"] = call.n
    if call.cost is not None:
        attrs["ember.cost_usd"] = call.cost
    if call.location:
        attrs["code.location"] = call.location
    if call.error:
        attrs["error.type"] = call.error
    return attrs


def emit(call: CallRecord) -> None:
    """Record ``call`` as a finished span under the current context's span."""
    tracer = _get_tracer()
    if tracer is None or _idle():  # skip building a span nobody records
        return
    from opentelemetry.trace import SpanKind, Status, StatusCode

    # CallRecord times are monotonic; spans want wall-clock nanoseconds
    offset = time.time_ns() - time.monotonic_ns()
    name = call.model.partition('/')[2] or call.model
    span = tracer.start_span(f"ember.cache {name}" if call.cached else f"chat {name}",
                             kind=SpanKind.INTERNAL if call.cached else SpanKind.CLIENT, attributes=attributes(call),
                             start_time=offset + int(call.start * 1e9))
    if call.error:
        span.set_status(Status(StatusCode.ERROR, call.error))
    span.end(end_time=offset + int(call.end * 1e9))


def span_emitter() -> Callable[[CallRecord], None] | None:
    """`emit` if opentelemetry-api is importable, else None (checked once)."""
    return emit if _get_tracer() is not None else None


def _get_tracer() -> Any:
    return _tracer if _tracer is not _UNRESOLVED else _resolve()
