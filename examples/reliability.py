"""retry, timeout, cache and rate limits, on the simulated model.

- `retry`: sim fails 30% of its requests here (half 429s, half 503s); every call
  still succeeds, and the run report counts the retries.
- `timeout`: a call that would take 0.5 s is cancelled at 0.1 s.
- `cache`: the second call is answered from disk (SQLite) and sends nothing.
- `configure_limits`: at most 2 requests to `sim` in flight at once.

Each retry and each throttling pause logs one line to the `ember` logger at INFO.

    python examples/reliability.py
"""

import logging
import sys
import tempfile
import time

import ember
from ember import cache, configure_limits, models, retry, timeout, vmap
from ember.providers import sim

logging.basicConfig(stream=sys.stdout, format="    log: %(name)s %(levelname)s %(message)s")
logging.getLogger("ember").setLevel(logging.INFO)


def ask(question: str) -> str:
    return models("sim", f"Answer briefly: {question}").text


def demo_retry() -> None:
    print("== retry: 30% of requests fail with a 429 or a 503 ==")
    sim.configure(latency=0.01, error_rate=0.3, seed=7)
    robust = retry(ask, max_attempts=8, initial_delay=0.01, max_delay=0.05)
    mapped = vmap(robust)
    answers = mapped([f"question {i}" for i in range(12)])
    sim.configure(error_rate=0.0)
    run = mapped.last_run
    print(f"{len(answers)} of 12 answers; {run.retries} retries, {run.failures} failures, "
          f"{run.throttle_seconds:.2f}s of admission waits (summed over calls)")


def demo_timeout() -> None:
    print("== timeout: a 0.5 s call under a 0.1 s limit ==")
    sim.configure(latency=0.5)
    quick = timeout(ask, seconds=0.1)
    start = time.perf_counter()
    try:
        quick("a slow question")
    except ember.TimeoutError as exc:  # also a builtin TimeoutError
        print(f"ember.TimeoutError after {time.perf_counter() - start:.2f}s: "
              f"{str(exc).splitlines()[0]}")
    finally:
        sim.configure(latency=0.01)


def demo_cache(folder: str) -> None:
    print("== cache: the second call is read from disk ==")
    sim.configure(latency=0.2)

    @cache(path=folder, ttl=3600)
    def summarize(text: str):
        return models("sim", f"Summarize: {text}")

    for attempt in ("first", "second"):
        with ember.record() as run:
            start = time.perf_counter()
            summary = summarize("The outage lasted 47 minutes.")
            took = time.perf_counter() - start
        print(f"{attempt} call: {run.report().requests} request(s), {took:.3f}s, "
              f"text {summary.text[:30]!r}")
    print(f"entries removed by cache_clear(): {summarize.cache_clear()}")


def demo_limits() -> None:
    print("== configure_limits: at most 2 requests in flight ==")
    sim.configure(latency=0.05)
    configure_limits("sim", concurrency=2)
    sim.reset_stats()
    try:
        mapped = vmap(ask)
        mapped([f"item {i}" for i in range(6)])
        print(f"6 calls; at most {sim.stats().max_in_flight} reached sim at once; "
              f"{mapped.last_run.wall_seconds:.2f}s (three waves of 0.05 s)")
    finally:
        configure_limits("sim", concurrency=64)  # the default


def main() -> None:
    demo_retry()
    demo_timeout()
    with tempfile.TemporaryDirectory() as folder:
        demo_cache(folder)
    demo_limits()


if __name__ == "__main__":
    main()
