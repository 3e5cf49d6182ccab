"""Self-consistency: sample k answers, keep the one most of them agree on.

The k calls are *sampled* (temperature > 0), so they are distinct draws: `jit`
never merges them (that would silently break the vote); instead the fuse pass
sends them as one request with ``n=k`` where the provider supports it (`openai`,
`vllm` and `sim` do), billing the prompt once. The vote is a plain
Python function marked `@ember.op`, so it is a node in the graph, not a break.

    python examples/self_consistency.py
"""

from collections import Counter

import ember
from ember import models
from ember.providers import sim

sim.configure(latency=0.05)
K = 7


@ember.op
def vote(answers: list) -> tuple:
    """The most common answer and its share of the votes."""
    (best, count), = Counter(answers).most_common(1)
    return best, count / len(answers)


def self_consistent(question: str) -> tuple:
    samples = [models("sim", f"Answer in JSON: {question}", temperature=0.8).json()["answer"]
               for _ in range(K)]
    return vote(samples)


def main() -> None:
    question = "Which city hosted the first modern Olympic games, Athens or Paris?"
    fast = ember.jit(self_consistent)
    answer, share = fast(question)
    run = fast.last_run
    print(f"answer: {answer!r}, chosen by {share:.0%} of {K} samples")
    print(f"{run.completions} samples in {run.requests} request(s); "
          f"input tokens billed once: {run.input_tokens}")

    report = ember.inspect(self_consistent, question)
    fuse = next(p for p in report.passes if str(p).startswith("fuse"))
    cse = next(p for p in report.passes if str(p).startswith("cse"))
    print(f"passes: {cse}\n        {fuse}")


if __name__ == "__main__":
    main()
