"""Quick start: five experts in parallel, then a judge — eager Python vs ember.jit.

    python examples/quickstart.py                  # offline, on the built-in `sim` model
    EMBER_MODEL=gpt-4o-mini python examples/quickstart.py   # a real provider (needs OPENAI_API_KEY)
    ember inspect examples.quickstart:analyze "some text"   # the graph, from the command line
"""

import os
import time

import ember
from ember import jit, models
from ember.providers import sim

MODEL = os.environ.get("EMBER_MODEL", "sim")
sim.configure(latency=0.05)  # the simulated model answers in 50 ms (a real one: ~1 s)


def analyze(text: str):
    opinions = [models(MODEL, f"As expert {i}, assess: {text}") for i in range(5)]
    return models(MODEL, "Judge:\n" + "\n".join(o.text for o in opinions))


def main() -> None:
    text = "The outage lasted 47 minutes."

    start = time.perf_counter()
    eager = analyze(text)
    eager_s = time.perf_counter() - start

    fast = jit(analyze)
    start = time.perf_counter()
    compiled = fast(text)
    jit_s = time.perf_counter() - start

    print(f"eager: {eager_s:.2f}s   jit: {jit_s:.2f}s   same answer: {eager.text == compiled.text}")
    print(f"answer: {compiled.text[:100]}")
    print(f"cost: ${compiled.cost:.6f} for the judge; the whole run:")
    print(fast.last_run)


if __name__ == "__main__":
    main()
