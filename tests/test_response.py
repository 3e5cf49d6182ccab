"""`Response`: text, usage, cost, JSON parsing, pending answers, pickling."""

from __future__ import annotations

import json
import pickle

import pydantic
import pytest

import ember
from ember import ParseError, Response, Usage
from ember._response import parse_json
from ember.backends.limits import limiter
from ember.providers import sim


def _reset_limiter():
    # admission state (AIMD cuts after a 429, learned limits) must not leak between tests
    reset = getattr(limiter, "reset", None)
    if reset is not None:
        reset()


@pytest.fixture(autouse=True)
def _reset_sim():
    _reset_limiter()
    yield
    sim.configure(latency=0, error_rate=0, fail_on=None)
    sim.reset_stats()
    _reset_limiter()


class Verdict(pydantic.BaseModel):
    label: str
    score: float


def make(text="hello", **kw) -> Response:
    kw.setdefault("model", "openai/gpt-4o-mini")
    kw.setdefault("usage", Usage(10, 5))
    return Response(text, **kw)


# -------------------------------------------------------------------- basics


def test_fields_and_str():
    r = make("hi there", cost=0.25, latency=0.5, finish_reason="stop")
    assert str(r) == r.text == "hi there"
    assert f"[{r}]" == "[hi there]" and f"{r:>10}" == "  hi there"
    assert r.model == "openai/gpt-4o-mini"
    assert r.usage == Usage(10, 5) and r.usage.total_tokens == 15
    assert (r.usage.input_tokens, r.usage.output_tokens) == (10, 5)
    assert (r.cost, r.latency, r.finish_reason) == (0.25, 0.5, "stop")
    assert not r.is_pending


def test_defaults():
    r = Response()
    assert (r.text, r.model, r.usage, r.cost, r.latency, r.finish_reason) == (
        "", "", Usage(0, 0), None, 0.0, None)
    assert Usage().total_tokens == 0


def test_repr_is_short_and_shows_cost():
    r = make("x" * 500, cost=0.0012345)
    text = repr(r)
    assert text.startswith("Response(model='openai/gpt-4o-mini'")
    assert "[500 chars]" in text and len(text) < 160
    assert "tokens=15" in text and "cost=$0.001234" in text  # 6 decimals
    assert "cost=unknown" in repr(make(cost=None))


def test_equality_and_hash():
    a, b = make("same"), make("same", cost=9.0, latency=3.0)
    assert a == b and hash(a) == hash(b)  # cost and timing are not part of the answer
    assert a != make("other") and a != make("same", model="sim")
    assert a != make("same", usage=Usage(1, 1))
    assert a != "same"  # not equal to its text
    assert len({a, b, make("other")}) == 2


def test_to_dict_from_dict_round_trip():
    r = make("t", cost=0.5, latency=1.5, finish_reason="length")
    d = r.to_dict()
    assert json.loads(json.dumps(d)) == d  # JSON-able
    back = Response.from_dict(d)
    assert back == r and (back.cost, back.latency, back.finish_reason) == (0.5, 1.5, "length")
    minimal = Response.from_dict({"text": "only text"})
    assert (minimal.text, minimal.usage, minimal.cost) == ("only text", Usage(0, 0), None)


def test_pickle_round_trip():
    r = make("pickled", cost=0.1, latency=0.2, finish_reason="stop")
    back = pickle.loads(pickle.dumps(r))
    assert back == r and (back.cost, back.latency, back.finish_reason) == (0.1, 0.2, "stop")


# ------------------------------------------------------------------- pending


def test_pending_response_is_forced_once_on_first_read():
    calls = []

    def thunk():
        calls.append(1)
        return make("late answer", cost=0.3)

    r = Response.pending(thunk)
    assert r.is_pending and repr(r) == "Response(<pending>)" and calls == []
    assert r.text == "late answer" and calls == [1]
    assert not r.is_pending
    assert (r.model, r.usage, r.cost) == ("openai/gpt-4o-mini", Usage(10, 5), 0.3)
    assert calls == [1]


@pytest.mark.parametrize("read", [
    lambda r: r.model, lambda r: r.usage, lambda r: r.cost, lambda r: r.latency,
    lambda r: r.finish_reason, str, lambda r: r.json(), lambda r: r.to_dict(),
])
def test_any_read_forces_a_pending_response(read):
    r = Response.pending(lambda: make('{"a": 1}'))
    read(r)
    assert not r.is_pending


def test_pickling_a_pending_response_forces_it():
    r = Response.pending(lambda: make("done"))
    back = pickle.loads(pickle.dumps(r))
    assert back.text == "done" and not back.is_pending


def test_a_failing_thunk_leaves_the_response_pending():
    def thunk():
        raise ember.ProviderError("boom")

    r = Response.pending(thunk)
    with pytest.raises(ember.ProviderError):
        r.text
    assert r.is_pending


# ---------------------------------------------------------------------- json


@pytest.mark.parametrize("text, value", [
    ('{"a": 1, "b": [1, 2]}', {"a": 1, "b": [1, 2]}),
    ('  [1, 2, 3]\n', [1, 2, 3]),
    ('"just a string"', "just a string"),
    ("42", 42),
    ('```json\n{"a": 1}\n```', {"a": 1}),
    ('```\n["x", "y"]\n```', ["x", "y"]),
    ('```JSON {"a": 2}```', {"a": 2}),
    ('Here is the answer:\n```json\n{"ok": true}\n```\nAnything else?', {"ok": True}),
    ('Sure! {"name": "Ada", "age": 36} Hope that helps.', {"name": "Ada", "age": 36}),
    ('The list: ["a", "b"].', ["a", "b"]),
    ('```json\n{"cut": "by max_tokens"}', {"cut": "by max_tokens"}),  # unclosed fence
    ('not {valid} but then {"a": 1}', {"a": 1}),
    ('As shown in [1] and [2, 3], the result is {"x": 1}.', {"x": 1}),
])
def test_json_parses_bare_fenced_and_embedded(text, value):
    assert make(text).json() == value
    assert parse_json(text) == value


@pytest.mark.parametrize("text", [
    "The answer is yes.",
    "",
    "Results are in [1] and [2].",  # citation marks are not a JSON answer
    "[4821] analysis shows the key point.",  # the sim model's prose
    "{broken: json",
])
def test_json_on_prose_raises_parse_error_showing_the_text(text):
    with pytest.raises(ParseError) as info:
        make(text).json()
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, ember.EmberError)
    assert "not JSON" in str(err) and f"Text was: {text}" in str(err)
    assert err.text == text
    assert 'response_format="json"' in str(err)
    assert err.transient  # a new sample may parse: ember.retry retries it


def test_parse_error_shortens_long_text():
    text = "word " * 1000
    with pytest.raises(ParseError) as info:
        make(text).json()
    assert f"[{len(text)} chars]" in str(info.value)
    assert len(str(info.value)) < 800 and info.value.text == text


def test_sim_prose_is_not_json():
    r = ember.models("sim", "Tell me a story about otters.")
    assert not r.text.lstrip().startswith("{")
    with pytest.raises(ParseError, match="Text was: "):
        r.json()


def test_json_with_pydantic_schema_validates():
    r = make('```json\n{"label": "good", "score": 0.9}\n```')
    v = r.json(schema=Verdict)
    assert isinstance(v, Verdict) and (v.label, v.score) == ("good", 0.9)


def test_json_with_pydantic_schema_mismatch_is_a_parse_error():
    r = make('{"label": "good"}')
    with pytest.raises(ParseError) as info:
        r.json(schema=Verdict)
    msg = str(info.value)
    assert "does not match Verdict" in msg and "score" in msg
    assert 'Text was: {"label": "good"}' in msg and info.value.text == r.text


def test_json_with_schema_on_prose_is_a_parse_error():
    with pytest.raises(ParseError, match="not JSON"):
        make("no json here").json(schema=Verdict)


def test_json_cut_off_by_max_tokens_is_a_parse_error_not_a_fragment():
    """An answer max_tokens cut inside its JSON returned the first complete inner object
    ({'name': 'item 0'} of a list of five), wrong data and no error."""
    from ember._response import parse_json

    cut = '{"items": [{"name": "item 0", "price": 0}, {"name": "item 1", "price": 10}, {"na'
    with pytest.raises(ember.ParseError, match="ends inside a value it opened"):
        parse_json(cut)
    assert parse_json('See {note} below: {"ok": true}') == {"ok": True}  # (a stray brace)


def test_degenerate_brackets_are_a_parse_error():
    from ember._response import parse_json

    for text in ("[" * 5000, "x {" * 20000):  # (RecursionError; a scan per brace)
        with pytest.raises(ember.ParseError):
            parse_json(text)


# ---- .json() with a JSON schema dict ---------------------------------------------------
_TICKET = {
    "type": "object",
    "required": ["label", "score", "tags"],
    "properties": {
        "label": {"enum": ["bug", "question"]},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "tags": {"type": "array", "items": {"type": "string"}},
        "owner": {"$ref": "#/$defs/person"},
        "steps": {"type": "array", "items": {
            "type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}},
            "additionalProperties": False}},
    },
    "$defs": {"person": {"type": "object", "required": ["name"],
                         "properties": {"name": {"type": "string"}}}},
}
_GOOD = {"label": "bug", "score": 0.5, "tags": ["ui"], "owner": {"name": "Ana"},
         "steps": [{"n": 1}, {"n": 2.0}]}


def test_json_with_a_schema_dict_validates_it():
    """A JSON schema dict was ignored: any JSON came back, the schema unchecked."""
    assert make(json.dumps(_GOOD)).json(_TICKET) == _GOOD
    assert make(f"```json\n{json.dumps(_GOOD)}\n```").json(schema=_TICKET) == _GOOD
    wrapped = {"type": "json_schema", "json_schema": {"name": "ticket", "schema": _TICKET}}
    assert make(json.dumps(_GOOD)).json(wrapped) == _GOOD  # (OpenAI's response_format)


@pytest.mark.parametrize("change, where", [
    ({"label": "feature"}, '$.label: "feature" is not one of ["bug", "question"]'),
    ({"score": "high"}, "$.score: expected number, got string"),
    ({"score": True}, "$.score: expected number, got boolean"),
    ({"score": 1.5}, "$.score: 1.5 is above the maximum 1"),
    ({"tags": ["ui", 3]}, "$.tags[1]: expected string, got integer"),
    ({"owner": {"nom": "Ana"}}, "$.owner: missing required property 'name'"),
    ({"steps": [{"n": 1}, {"n": 1.5}]}, "$.steps[1].n: expected integer, got number"),
    ({"steps": [{"n": 1, "x": 0}]}, "$.steps[0]: unexpected property 'x'"),
    ({"tags": None}, "$.tags: expected array, got null"),
])
def test_json_with_a_schema_dict_names_the_failing_path(change, where):
    r = make(json.dumps({**_GOOD, **change}))
    with pytest.raises(ParseError) as info:
        r.json(_TICKET)
    assert where in str(info.value) and info.value.text == r.text
    assert "Text was: " in str(info.value)


def test_json_with_a_schema_dict_finds_a_missing_field_and_a_wrong_root():
    with pytest.raises(ParseError, match=r"\$: missing required property 'tags'"):
        make('{"label": "bug", "score": 0}').json(_TICKET)
    with pytest.raises(ParseError, match=r"\$: expected object, got array"):
        make('["bug"]').json(_TICKET)
    assert make("[1, 2]").json({"type": "array", "items": {"type": "integer"}}) == [1, 2]
    with pytest.raises(ParseError, match=r"\$\[0\]: expected integer"):
        make('["1", 2]').json({"type": "array", "items": {"type": "integer"}})


def test_json_with_an_unusable_schema_is_a_type_error():
    with pytest.raises(TypeError, match="pydantic model class or a JSON schema dict"):
        make('{"a": 1}').json("Verdict")


def test_json_with_a_schema_dict_under_jit_plans_and_validates():
    """Under jit, `.json(schema_dict)` was a graph break (its params held a dict)."""
    schema = {"type": "object", "required": ["answer"],
              "properties": {"answer": {"type": "string"}}}
    strict = {**schema, "required": ["verdict"]}

    def f(x):
        data = ember.models("sim", f"Answer in JSON: {x}", response_format="json").json(schema)
        return ember.models("sim", f"Check {data['answer']}").text

    fast = ember.jit(f, verify=True)
    assert fast("q") == f("q") and fast("q") == f("q")
    assert fast.entry("q").graph is not None and not fast.entry("q").breaks

    def g(x):
        return ember.models("sim", f"JSON: {x}", response_format="json").json(strict)

    with pytest.raises(ParseError, match="missing required property 'verdict'"):
        ember.jit(g)("q")
