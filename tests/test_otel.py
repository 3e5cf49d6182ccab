"""OpenTelemetry spans follow the GenAI conventions and nest under the caller's span."""

from __future__ import annotations

import subprocess
import sys

import pytest

import ember
from ember._otel import attributes
from ember.backends.record import CallRecord

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

_exporter = InMemorySpanExporter()


@pytest.fixture
def spans():
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_exporter))
        trace.set_tracer_provider(provider)
    _exporter.clear()
    yield _exporter
    _exporter.clear()


def test_each_call_is_a_genai_span_under_the_callers_span(spans):
    tracer = trace.get_tracer("app")

    @ember.jit
    def panel(q):
        views = [ember.models("sim", f"expert {i}: {q}") for i in range(3)]
        return ember.models("sim", "judge: " + " | ".join(v.text for v in views))

    with tracer.start_as_current_span("handle request") as parent:
        panel("why?")
    calls = [s for s in spans.get_finished_spans() if s.name != "handle request"]
    assert len(calls) == 4
    report = panel.last_run
    for s in calls:
        assert s.parent is not None and s.parent.span_id == parent.get_span_context().span_id
        assert s.kind == trace.SpanKind.CLIENT
        assert s.name == "chat sim" and s.attributes["gen_ai.request.model"] == "sim"
        assert s.attributes["gen_ai.operation.name"] == "chat"
        assert s.attributes["gen_ai.usage.input_tokens"] > 0
        assert s.attributes["gen_ai.usage.output_tokens"] > 0
        assert s.end_time >= s.start_time
    assert sum(s.attributes["gen_ai.usage.input_tokens"] for s in calls) == report.input_tokens
    assert sum(s.attributes["ember.cost_usd"] for s in calls) == pytest.approx(report.cost)
    # the judge started after the experts ended
    judge = max(calls, key=lambda s: s.start_time)
    assert all(s.end_time <= judge.start_time for s in calls if s is not judge)


def test_a_cache_hit_is_an_internal_span_without_genai_usage(spans, tmp_path):
    ask = ember.cache(lambda q: ember.models("sim", f"Answer: {q}").text, path=str(tmp_path))
    ask("q")
    spans.clear()
    ask("q")
    (hit,) = spans.get_finished_spans()
    assert hit.name.startswith("ember.cache ") and hit.kind == trace.SpanKind.INTERNAL
    assert hit.attributes["ember.cached"] is True
    assert "gen_ai.usage.input_tokens" not in hit.attributes


def test_failed_call_span_has_error_status(spans, openai_server):
    openai_server.script("auth")
    with pytest.raises(ember.AuthenticationError):
        ember.models("openai/gpt-4o-mini", "hi")
    (span,) = spans.get_finished_spans()
    assert span.status.status_code == trace.StatusCode.ERROR
    assert span.attributes["error.type"] == "AuthenticationError"
    assert span.attributes["gen_ai.provider.name"] == "openai"
    text = repr(dict(span.attributes))
    assert "SECRET" not in text


def test_attributes_of_samples_and_unknown_costs():
    call = CallRecord("openai/gpt-4o", 1.0, 2.0, n=5, input_tokens=3, output_tokens=7,
                      cost=None, location="app.py:3")
    attrs = attributes(call)
    assert attrs["gen_ai.request.choice.count"] == 5
    assert "ember.cost_usd" not in attrs and attrs["code.location"] == "app.py:3"


def test_without_opentelemetry_nothing_happens():
    code = ("import sys; sys.modules['opentelemetry'] = None\n"
            "import ember\n"
            "print(ember.models('sim', 'hi').text != '')\n"
            "from ember.backends import record\n"
            "print(record._emit)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "None"]
