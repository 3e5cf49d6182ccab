"""Run reports and timelines: what a jitted or vmapped call actually did.

    fast = ember.jit(program)
    fast(x)
    print(fast.last_run)                       # requests, tokens, cost, wall vs bound
    fast.last_run.timeline("run.json")         # open in https://ui.perfetto.dev

    with ember.record() as run:                # any code, eager or compiled
        ...
    print(run.report())
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from .backends.record import NOT_FAILURES, CallRecord, Recorder, recorder_var

__all__ = ["RunReport", "record", "Run"]


@dataclass
class RunReport:
    """Facts about one run. ``cost`` is the sum of the per-call costs (``None`` when
    any call's price is unknown)."""

    calls: list[CallRecord]
    wall_seconds: float
    bound_seconds: float | None = None  # the critical-path estimate, when known
    label: str = "run"
    # the compiled graphs the run executed (jit), and how long each of their model-call
    # nodes took (output var id -> seconds), for `measured_bound_seconds`
    graphs: tuple = field(default=(), repr=False, compare=False)
    node_seconds: dict = field(default_factory=dict, repr=False, compare=False)
    unplanned_seconds: float = 0.0  # fetching calls no graph planned, after the graphs (jit)
    # jit: the times the user's Python ran (each trace round, each check run) and the
    # seconds it took: planning re-runs it from the top at every graph break
    python_runs: int = 0
    python_seconds: float = 0.0

    @property
    def measured_bound_seconds(self) -> float | None:
        """The critical path of the graphs that ran, at the time each of their calls
        took, plus the time spent on calls no graph planned (jit's check run fetched
        them, in turn): the wall time a perfect schedule would have reached with these
        latencies. (`bound_seconds` is the estimate from before the run: for hosted
        models it assumes every answer as long as allowed.) None without graphs."""
        cached = self.__dict__.get("_measured", False)
        if cached is False:
            planned = _measured_bound(self.graphs, self.node_seconds)
            cached = None if planned is None else planned + self.unplanned_seconds
            self.__dict__["_measured"] = cached
        return cached

    @property
    def requests(self) -> int:
        """Round trips to providers (coalesced duplicates and batch members excluded)."""
        return sum(1 for c in self.calls if not (c.cached or c.coalesced or c.batched))

    @property
    def completions(self) -> int:
        """Answers produced (a failed call produced none)."""
        return sum(c.n for c in self.calls if not (c.cached or c.coalesced or c.error))

    @property
    def cache_hits(self) -> int:
        return sum(1 for c in self.calls if c.cached)

    @property
    def coalesced(self) -> int:
        return sum(1 for c in self.calls if c.coalesced)

    @property
    def failures(self) -> int:
        """Calls that failed for good (not those their caller cancelled in flight, nor a
        batch round trip one prompt failed, whose prompts then went one by one)."""
        return sum(1 for c in self.calls if c.error and c.error not in NOT_FAILURES)

    @property
    def retries(self) -> int:
        return sum(max(0, c.attempts - 1) for c in self.calls)

    @property
    def throttle_seconds(self) -> float:
        return sum(c.throttle_wait for c in self.calls)

    @property
    def input_tokens(self) -> int:
        return sum(c.input_tokens for c in self.calls)

    @property
    def output_tokens(self) -> int:
        return sum(c.output_tokens for c in self.calls)

    @property
    def cost(self) -> float | None:
        total = 0.0
        for c in self.calls:
            if c.cost is None:
                return None
            total += c.cost
        return total

    @property
    def peak_concurrency(self) -> int:
        """The most requests in flight at once (a batch request is one)."""
        return _peak(self._sent())

    @property
    def peak_prompts(self) -> int:
        """The most prompts in flight at once (each prompt of a batch request counts)."""
        return _peak([c for c in self.calls if not (c.cached or c.coalesced)])

    @property
    def mean_concurrency(self) -> float:
        busy = sum(b - a for c in self._sent() for a, b in c.in_flight())
        return busy / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def _sent(self) -> list[CallRecord]:
        """The round trips (a batch's later prompts rode on its first)."""
        return [c for c in self.calls if not (c.cached or c.coalesced or c.batched)]

    def lanes(self) -> list[int]:
        """A lane per call such that calls in one lane never overlap (fewest lanes)."""
        order = sorted(range(len(self.calls)), key=lambda i: self.calls[i].start)
        lane_end: list[float] = []
        lanes = [0] * len(self.calls)
        for i in order:
            c = self.calls[i]
            for k, end in enumerate(lane_end):
                if end <= c.start + 1e-9:
                    lane_end[k] = c.end
                    lanes[i] = k
                    break
            else:
                lane_end.append(c.end)
                lanes[i] = len(lane_end) - 1
        return lanes

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label, "requests": self.requests, "completions": self.completions,
            "cache_hits": self.cache_hits, "coalesced": self.coalesced,
            "failures": self.failures, "retries": self.retries,
            "throttle_seconds": self.throttle_seconds, "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens, "cost": self.cost,
            "wall_seconds": self.wall_seconds, "bound_seconds": self.bound_seconds,
            "measured_bound_seconds": self.measured_bound_seconds,
            "peak_concurrency": self.peak_concurrency, "peak_prompts": self.peak_prompts,
            "mean_concurrency": self.mean_concurrency, "python_runs": self.python_runs,
            "python_seconds": self.python_seconds,
        }

    def trace_events(self) -> dict[str, Any]:
        """The run in Chrome Trace Event format (Perfetto, chrome://tracing): one track
        per concurrent lane, one slice per model call."""
        t0 = min((c.start for c in self.calls), default=0.0)
        events: list[dict[str, Any]] = [
            {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": f"ember: {self.label}"}}]
        lanes = self.lanes()
        for lane in sorted(set(lanes)):
            events.append({"ph": "M", "pid": 1, "tid": lane + 1, "name": "thread_name",
                           "args": {"name": f"lane {lane + 1}"}})
        for c, lane in zip(self.calls, lanes, strict=True):
            kind = "cache hit" if c.cached else "coalesced" if c.coalesced else "call"
            events.append({
                "ph": "X", "pid": 1, "tid": lane + 1, "name": c.model, "cat": kind,
                "ts": round((c.start - t0) * 1e6, 3),
                "dur": round(max(c.end - c.start, 1e-6) * 1e6, 3),
                "args": {"model": c.model, "input_tokens": c.input_tokens,
                         "output_tokens": c.output_tokens, "cost_usd": c.cost,
                         "samples": c.n, "attempts": c.attempts, "error": c.error,
                         "source": c.location},
            })
        return {"traceEvents": events, "displayTimeUnit": "ms"}

    def timeline(self, path: str) -> str:
        """Write the Chrome trace to ``path`` (open it in ui.perfetto.dev); returns path."""
        with open(path, "w") as fh:
            json.dump(self.trace_events(), fh)
        return path

    def __str__(self) -> str:
        cost = ("unknown (an unpriced model, or an answer without token counts)"
                if self.cost is None else f"${self.cost:.6f}")
        bound = ""
        best = self.measured_bound_seconds or self.bound_seconds
        if best:
            bound = f" (critical-path bound {best:.3f}s, {self.wall_seconds / best:.2f}x)"
        prompts = self.peak_prompts
        batched = f" ({prompts} prompts, in batches)" if prompts > self.peak_concurrency else ""
        lines = [
            f"{self.label}: {self.requests} requests, {self.completions} completions, "
            f"{self.cache_hits} cache hits, {self.coalesced} coalesced",
            f"  tokens   {self.input_tokens:,} in + {self.output_tokens:,} out",
            f"  cost     {cost}",
            f"  wall     {self.wall_seconds:.3f}s{bound}",
            f"  concurrency  peak {self.peak_concurrency}{batched}, mean "
            f"{self.mean_concurrency:.1f}",
            f"  retries  {self.retries}, throttled {self.throttle_seconds:.2f}s, "
            f"failures {self.failures}",
        ]
        if self.python_runs > 2 and self.python_seconds > 0.25 * self.wall_seconds:
            lines.append(
                f"  python   ran {self.python_runs} times, {self.python_seconds:.3f}s: jit "
                "re-runs the function from the top at each graph break, so a slow tool or "
                "an effect in it runs each time; make it an @ember.op(effectful=True)")
        return "\n".join(lines)


def _peak(calls: list[CallRecord]) -> int:
    """Most calls in flight at once (a retried call's backoff waits excluded)."""
    spans = [span for c in calls for span in c.in_flight()]
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    peak = level = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


@dataclass
class Run:
    """What `ember.record()` collects."""

    recorder: Recorder = field(default_factory=Recorder)
    start: float = field(default_factory=time.perf_counter)
    end: float | None = None
    label: str = "run"

    def report(self) -> RunReport:
        end = self.end if self.end is not None else time.perf_counter()
        return RunReport(list(self.recorder.calls), end - self.start, label=self.label)

    def __getattr__(self, name: str) -> Any:
        """The report's fields and methods on the run itself (``run.cost``,
        ``run.timeline(path)``), as of now: ``run.report().<name>``."""
        if not name.startswith("_") and (hasattr(RunReport, name)
                                         or name in RunReport.__dataclass_fields__):
            return getattr(self.report(), name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __str__(self) -> str:
        return str(self.report())


def _measured_bound(graphs: tuple, took: dict[int, float]) -> float | None:
    """`RunReport.measured_bound_seconds`."""
    if not graphs or not took:
        return None
    from .passes.estimate import priorities

    seconds = lambda node: took.get(node.out.id, 0.0)  # noqa: E731
    return sum(priorities(graph.nodes, seconds)[1] for graph in graphs) or None


@contextmanager
def record(label: str = "run") -> Iterator[Run]:
    """Record every model call made inside the block — eager, jitted or vmapped."""
    run = Run(label=label)
    token = recorder_var.set([*recorder_var.get(), run.recorder])
    try:
        yield run
    finally:
        run.end = time.perf_counter()
        recorder_var.reset(token)
