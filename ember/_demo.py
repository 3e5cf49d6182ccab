"""`ember demo`: a small real program on the offline `sim` model, eager vs jit."""

from __future__ import annotations

import time

from ._jit import jit
from ._models import models
from .backends.record import recording
from .providers import sim

__all__ = ["run_demo", "review", "DOCUMENTS"]

DOCUMENTS = [
    "Quarterly revenue grew 12% while churn fell; the new pricing tier drove upgrades.",
    "The outage lasted 47 minutes; root cause was an expired certificate on the gateway.",
    "Users praise the redesigned editor but report slow sync on large files.",
    "The pilot with three hospitals cut scheduling time by a third.",
    "Supplier delays pushed the launch to March; inventory is otherwise healthy.",
]
EXPERTS = ("a skeptical analyst", "a product manager", "a customer advocate")


def review(docs: list[str]) -> str:
    """Per document: three experts in parallel, a judge over them; then one summary."""
    verdicts = []
    for doc in docs:
        opinions = [models("sim", f"As {who}, assess in two sentences: {doc}") for who in EXPERTS]
        joined = "\n".join(f"- {o}" for o in opinions)
        verdicts.append(models("sim", f"Judge these assessments and decide:\n{joined}"))
    return models("sim", "Summarize the verdicts:\n" + "\n".join(v.text for v in verdicts)).text


def _measure(fn, docs: list[str]) -> tuple[str, float, object]:
    with recording() as rec:
        start = time.perf_counter()
        out = fn(docs)
        wall = time.perf_counter() - start
    return out, wall, rec


def run_demo(latency: float = 0.15, docs: int = 3) -> int:
    sim.configure(latency=latency)
    chosen = (DOCUMENTS * (docs // len(DOCUMENTS) + 1))[:max(1, docs)]
    print(f"Ember demo: {len(chosen)} documents; per document 3 experts + a judge, then a "
          f"summary.\nModel: the offline 'sim' model with {latency * 1000:.0f} ms latency "
          "(no API key, no network).\n")
    eager_out, eager_wall, eager_rec = _measure(review, chosen)
    fast = jit(review)
    jit_out, jit_wall, jit_rec = _measure(fast, chosen)
    bound = 3 * latency  # experts -> judges -> summary: three model latencies deep
    print(f"{'':14}{'wall time':>10}{'requests':>10}{'tokens':>9}{'cost (USD)':>13}")
    for name, wall, rec in (("eager Python", eager_wall, eager_rec),
                            ("ember.jit", jit_wall, jit_rec)):
        tokens = sum(c.input_tokens + c.output_tokens for c in rec.calls)
        cost = sum(c.cost or 0.0 for c in rec.calls)
        print(f"{name:14}{wall:>9.2f}s{rec.requests:>10}{tokens:>9,}{cost:>13.6f}")
    print(f"\ncritical-path bound: {bound:.2f}s (3 model latencies); "
          f"jit speed-up: {eager_wall / jit_wall:.1f}x; same answer: "
          f"{'yes' if eager_out == jit_out else 'NO'}")
    print(f"\nsummary: {jit_out[:150]}")
    print("\nSee the graph: python -c \"import ember, ember._demo as d; "
          "print(ember.inspect(d.review, d.DOCUMENTS[:2]))\"")
    return 0 if eager_out == jit_out else 1
