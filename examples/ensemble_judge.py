"""Ensemble + judge, with a timeline you can open in Perfetto.

Five personas assess a question at the same time; a judge reads all five and
decides. Under `ember.jit` the five calls are in flight together, so the run takes
two model latencies instead of six. The run is written as a Chrome trace:
open https://ui.perfetto.dev and drag the file in — five parallel slices, then one.

    python examples/ensemble_judge.py [timeline.json]
"""

import json
import sys

import ember
from ember import models
from ember.providers import sim

sim.configure(latency=0.1)

PERSONAS = ["a skeptic", "an optimist", "an engineer", "a lawyer", "a customer"]


def panel(question: str) -> str:
    opinions = [models("sim", f"As {p}, assess in two sentences: {question}") for p in PERSONAS]
    verdict = models("sim", "You are the judge. Weigh these assessments and decide:\n"
                     + "\n".join(f"- {o.text}" for o in opinions))
    return verdict.text


def main(path: str = "ensemble_judge_timeline.json") -> None:
    fast = ember.jit(panel)
    verdict = fast("Should we ship the release on Friday afternoon?")
    report = fast.last_run

    print("verdict:", verdict[:90], "...")
    print()
    print(report)
    print()
    per_call = sum(c.cost for c in report.calls)
    print(f"run cost ${report.cost:.6f} == sum of {len(report.calls)} per-call costs "
          f"${per_call:.6f}: {abs(report.cost - per_call) < 1e-12}")

    report.timeline(path)
    with open(path) as fh:
        events = json.load(fh)["traceEvents"]
    slices = sorted((e for e in events if e["ph"] == "X"), key=lambda e: e["ts"])
    print(f"\ntimeline written to {path} (open it in https://ui.perfetto.dev):")
    for e in slices:
        start, dur = e["ts"] / 1000, e["dur"] / 1000
        print(f"  lane {e['tid']}  {start:6.1f} ms -> {start + dur:6.1f} ms  {e['name']}  "
              f"{e['args']['input_tokens']} in / {e['args']['output_tokens']} out tokens")


if __name__ == "__main__":
    main(*sys.argv[1:2])
