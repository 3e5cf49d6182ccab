"""What ran: one `CallRecord` per provider request, collected by the active `Recorder`."""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator
from dataclasses import dataclass, field

__all__ = ["CallRecord", "Recorder", "recorder_var", "record", "recording"]


CANCELLED = "cancelled"  # a CallRecord's error when its caller cancelled it in flight
RESENT = "resent"  # ... when a batch a prompt refused failed and went prompt by prompt
NOT_FAILURES = (CANCELLED, RESENT)  # errors that are no failure of the call


@dataclass(slots=True)
class CallRecord:
    model: str
    start: float
    end: float
    n: int = 1
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = 0.0
    attempts: int = 1
    cached: bool = False
    coalesced: bool = False
    error: str | None = None
    location: str | None = None
    throttle_wait: float = 0.0
    batched: bool = False  # a later element of a batch that went as one request
    # a retried call's attempts, (admitted, ended) each: the times it was in flight
    # (start..end also covers its backoff waits)
    flights: tuple[tuple[float, float], ...] = ()

    def in_flight(self) -> tuple[tuple[float, float], ...]:
        return self.flights or ((self.start, self.end),)


@dataclass
class Recorder:
    calls: list[CallRecord] = field(default_factory=list)
    # output var id -> seconds, of each model-call node a compiled graph ran
    node_seconds: dict[int, float] = field(default_factory=dict)
    # the compiled graphs a jitted call ran, and the seconds it spent fetching calls
    # no graph planned (for its report's critical-path bound)
    graphs: list[Any] = field(default_factory=list)
    unplanned_seconds: float = 0.0
    # the times a jitted call ran the user's Python (trace rounds, check runs), and the
    # seconds that took (blocking fetches excluded)
    python_runs: int = 0
    python_seconds: float = 0.0

    @property
    def requests(self) -> int:
        """Requests that reached a provider (cache hits and coalesced ones excluded)."""
        return sum(1 for c in self.calls if not (c.cached or c.coalesced or c.batched))


recorder_var: ContextVar[list[Recorder]] = ContextVar("ember_recorders", default=[])


@contextmanager
def recording() -> Iterator[Recorder]:
    """Collect a `CallRecord` for every request made inside the block (any thread
    or task started from it)."""
    rec = Recorder()
    token = recorder_var.set([*recorder_var.get(), rec])
    try:
        yield rec
    finally:
        recorder_var.reset(token)


_UNSET: Any = object()
_emit: Any = _UNSET  # OpenTelemetry span emitter, resolved on the first record


def record_node(var_id: int, seconds: float) -> None:
    """How long a compiled graph's model-call node took (its requests, retries and
    admission waits), for the run report's critical path."""
    for rec in recorder_var.get():
        rec.node_seconds[var_id] = seconds


def record(call: CallRecord) -> None:
    global _emit
    for rec in recorder_var.get():
        rec.calls.append(call)
    if _emit is _UNSET:
        from .._otel import span_emitter

        _emit = span_emitter()
    if _emit is not None:
        _emit(call)
