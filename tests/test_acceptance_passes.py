"""Issue 4 acceptance, counted at loopback servers: a duplicated deterministic call,
a dead call and five same-prompt samples make 2 requests on OpenAI (one with n=5) and
6 on Anthropic, instead of eager's 8."""

from __future__ import annotations

import ember
from ember import jit, models


def program(model: str):
    def prog(x: str):
        a = models(model, f"Question {x}", temperature=0)
        b = models(model, f"Question {x}", temperature=0)  # duplicate
        models(model, f"Never used {x}", temperature=0)  # dead
        samples = [models(model, f"Sample {x}", temperature=0.8) for _ in range(5)]
        return a.text, b.text, [s.text for s in samples]
    return prog


def test_openai_two_requests_one_with_n5(openai_server):
    prog = program("gpt-4o-mini")
    prog("x")
    assert len(openai_server.requests) == 8
    openai_server.requests.clear()
    out = jit(prog, verify=True)("x")
    bodies = [r.body for r in openai_server.requests]
    assert len(bodies) == 2
    assert sorted(b.get("n", 1) for b in bodies) == [1, 5]
    assert out[0] == out[1] and len(set(out[2])) == 5
    fast = jit(prog)  # later calls replay the same plan (the dead call made it strict)
    fast("x")
    openai_server.requests.clear()
    fast("y")
    assert sorted(r.body.get("n", 1) for r in openai_server.requests) == [1, 5]


def test_anthropic_six_requests(anthropic_server):
    prog = program("claude-3-5-haiku-latest")
    prog("x")
    assert len(anthropic_server.requests) == 8
    anthropic_server.requests.clear()
    out = jit(prog, verify=True)("x")
    assert len(anthropic_server.requests) == 6
    assert out[0] == out[1] and len(out[2]) == 5


def test_inspect_names_each_pass_and_prints_the_estimate(openai_server):
    report = ember.inspect(program("gpt-4o-mini"), "x")
    text = str(report)
    assert "dce: removed 1" in text
    assert "cse: merged 1" in text
    assert "fuse:" in text and "n=5" in text
    assert "estimate" in text and "requests" in text
    assert report.estimate.requests == 2
