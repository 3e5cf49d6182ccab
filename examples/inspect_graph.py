"""Look at a program's graph: as text, as Mermaid, and what each pass did.

`ember.inspect(fn, *example_args)` traces the function on example arguments —
nothing is sent — and reports the traced graph, each pass's effect, the optimized
graph, the graph breaks and a static estimate (requests, tokens, cost, critical
path). This program has something for every pass: a dead call (dce), a duplicate
deterministic call (cse), three samples of one prompt (fuse → one n=3 request) and
two independent calls to one model (fuse → one batch).

    python examples/inspect_graph.py            # text report, then Mermaid
    ember inspect examples.inspect_graph:review "some text" --format mermaid
"""

import ember
from ember import models
from ember.providers import sim

sim.configure(latency=0.8)  # only for the estimate's critical path: nothing is sent


def review(text: str) -> str:
    draft = models("sim", f"Draft a review of: {text}")
    again = models("sim", f"Draft a review of: {text}")        # duplicate: merged by cse
    models("sim", f"Translate to French: {text}")               # unused: removed by dce
    ideas = [models("sim", f"One risk of: {text}", temperature=0.9) for _ in range(3)]
    tone = models("sim", f"Rate the tone of: {text}")
    return models("sim", f"Improve {draft} and {again} using {ideas[0]}, {ideas[1]}, "
                         f"{ideas[2]}; tone: {tone}").text


def main() -> None:
    report = ember.inspect(review, "the new editor")
    print(report)
    print("Mermaid (paste into https://mermaid.live or a Markdown file):")
    print(report.mermaid())
    print(f"\nGraphviz DOT: {len(report.dot().splitlines())} lines; "
          "report.svg() draws it when Graphviz is installed.")


if __name__ == "__main__":
    main()
