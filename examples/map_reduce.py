"""Map-reduce summarization with `vmap`.

Summarize every chunk of a long report (the map), then combine the summaries
(the reduce). `vmap(summarize, batch_size=4)` keeps at most four chunks in flight
— a sliding window: a new chunk starts the moment one finishes — and returns the
summaries in input order. The same program written as one function and jitted
sends all chunk calls at once, then the reduce.

    python examples/map_reduce.py
"""

import ember
from ember import models, vmap
from ember.providers import sim

sim.configure(latency=0.05)

REPORT = [
    "Q3 revenue grew 12% year over year, driven by the new pricing tier.",
    "Churn fell to 2.1% after the onboarding redesign shipped in July.",
    "The September outage lasted 47 minutes; an expired certificate was the cause.",
    "Support tickets about sync speed doubled among customers with large files.",
    "The hospital pilot cut scheduling time by a third at three sites.",
    "Supplier delays pushed the hardware launch from January to March.",
    "Hiring is on plan: 14 of 16 engineering roles are filled.",
    "Cash runway is 30 months at the current burn rate.",
]


def summarize(chunk: str) -> str:
    return models("sim", f"Summarize in one line: {chunk}").text


def combine(summaries: list[str]) -> str:
    return models("sim", "Write an executive summary of:\n" + "\n".join(summaries)).text


def map_reduce(chunks: list[str]) -> str:
    """The whole job as one function: jit sends the eight map calls together."""
    return combine([summarize(c) for c in chunks])


def main() -> None:
    mapper = vmap(summarize, batch_size=4)
    summaries = mapper(REPORT)
    final = combine(summaries)
    run = mapper.last_run
    print(f"map: {len(summaries)} summaries in input order, at most "
          f"{run.peak_concurrency} in flight (batch_size=4), {run.wall_seconds:.2f}s")
    for chunk, summary in zip(REPORT, summaries):
        print(f"  {chunk[:40]:40} -> {summary[:40]}")
    print(f"reduce: {final[:80]}...")

    fast = ember.jit(map_reduce)
    assert fast(REPORT) == final  # the same answer, from one compiled program
    print(f"\njit(map_reduce): same answer; {fast.last_run.requests} requests, "
          f"{fast.last_run.completions} completions, {fast.last_run.wall_seconds:.2f}s "
          f"(critical-path bound {fast.last_run.bound_seconds:.2f}s)")


if __name__ == "__main__":
    main()
