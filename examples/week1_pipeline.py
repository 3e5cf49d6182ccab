"""The Week-1 pipeline: extract entities as JSON, then enrich each one.

The second step depends on the first model's answer (a comprehension over the
items of a `.json()` result), so `jit` cannot see the whole program up front. It
traces up to that graph break, runs the extraction, then traces on with the
answer known — and sends every enrichment call at once. Same result as plain
Python, in two model latencies instead of one plus one per entity.

    python examples/week1_pipeline.py
"""

import time

import ember
from ember import models
from ember.providers import sim

sim.configure(latency=0.1)

DOCUMENT = ("Ada Lovelace wrote the first published program for Charles Babbage's "
            "Analytical Engine while living in London.")


def enrich(doc: str) -> dict:
    # (sim answers a list; OpenAI's JSON mode answers objects only: there, ask for
    # {"entities": [...]} and read .json()["entities"])
    entities = models("sim", f"List the named entities in this text as a JSON array: {doc}",
                      response_format="json").json()
    notes = [models("sim", f"In one sentence, background on {name}.") for name in entities]
    return {name: note.text for name, note in zip(entities, notes)}


def main() -> None:
    start = time.perf_counter()
    eager = enrich(DOCUMENT)
    eager_s = time.perf_counter() - start

    fast = ember.jit(enrich)
    start = time.perf_counter()
    result = fast(DOCUMENT)
    jit_s = time.perf_counter() - start

    print(f"{len(result)} entities: {', '.join(result)}")
    for name, note in result.items():
        print(f"  {name}: {note[:70]}...")
    print(f"\neager {eager_s:.2f}s, jit {jit_s:.2f}s; same result: {result == eager}")
    print(fast.last_run)

    print("\nWhat jit saw before the first answer arrived:")
    report = ember.inspect(enrich, DOCUMENT)
    for b in report.breaks:
        print(f"  graph break at {b.loc.rsplit('/', 1)[-1]}: {b.reason}")


if __name__ == "__main__":
    main()
