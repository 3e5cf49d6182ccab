"""`Response`: what one model call returns."""

from __future__ import annotations

import json
import re
from typing import Any, Callable, NamedTuple

from ._schema import Schema, schema_error, schema_of
from .errors import ParseError

__all__ = ["Response", "Usage"]


class Usage(NamedTuple):
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)```", re.DOTALL)
_MISSING = object()


class Response:
    """The answer of one model call. ``str(r) == r.text``.

    A response made by a compiled program may be *pending*: its request has not been
    sent because nothing has looked at it yet. Reading any attribute sends it.
    """

    __slots__ = ("_text", "_model", "_usage", "_cost", "_latency", "_finish_reason", "_thunk")

    def __init__(
        self,
        text: str = "",
        *,
        model: str = "",
        usage: Usage = Usage(),
        cost: float | None = None,
        latency: float = 0.0,
        finish_reason: str | None = None,
    ) -> None:
        self._text = text
        self._model = model
        self._usage = usage
        self._cost = cost
        self._latency = latency
        self._finish_reason = finish_reason
        self._thunk: Callable[[], Response] | None = None

    @classmethod
    def pending(cls, thunk: Callable[[], Response]) -> Response:
        r = cls.__new__(cls)
        r._thunk = thunk
        return r

    def _force(self) -> None:
        thunk = self._thunk
        if thunk is not None:
            done = thunk()
            self._text, self._model, self._usage = done._text, done._model, done._usage
            self._cost, self._latency = done._cost, done._latency
            self._finish_reason = done._finish_reason
            self._thunk = None

    @property
    def is_pending(self) -> bool:
        return self._thunk is not None

    @property
    def text(self) -> str:
        self._force()
        return self._text

    @property
    def model(self) -> str:
        self._force()
        return self._model

    @property
    def usage(self) -> Usage:
        self._force()
        return self._usage

    @property
    def cost(self) -> float | None:
        """USD for this call, or ``None`` when the model's price is unknown."""
        self._force()
        return self._cost

    @property
    def latency(self) -> float:
        """Seconds from sending the request to the answer (0 for a cache hit)."""
        self._force()
        return self._latency

    @property
    def finish_reason(self) -> str | None:
        self._force()
        return self._finish_reason

    def json(self, schema: Any = None) -> Any:
        """Parse the text as JSON, tolerating code fences and prose around one object.

        With a pydantic model class as ``schema``, validate into it; with a JSON schema
        dict (as for ``response_format``), check the value against it (the subset
        `ember._schema` names) and return it. Raises `ParseError` (showing the text)
        when there is no JSON to be found or it does not match, naming the first
        failing path (``$.items[2].label``).
        """
        try:
            value = parse_json(self.text)
        except ParseError as exc:
            raise self._unparsed(exc) from None
        if schema is None:
            return value
        if hasattr(schema, "model_validate"):
            try:
                return schema.model_validate(value)
            except Exception as exc:  # pydantic.ValidationError
                raise ParseError(
                    f"The model's JSON does not match {schema.__name__}: {exc}\n"
                    f"Text was: {_shorten(self.text)}",
                    self.text,
                ) from None
        if isinstance(schema, Schema):  # (a traced call's, kept hashable)
            schema = schema.schema
        if not isinstance(schema, dict):
            raise TypeError("Response.json(schema): the schema is a pydantic model class or "
                            f"a JSON schema dict, not {type(schema).__name__}.")
        error = schema_error(value, schema_of(schema))
        if error is not None:
            raise ParseError(f"The model's JSON does not match the schema: {error}\n"
                             f"Text was: {_shorten(self.text)}", self.text)
        return value

    def _unparsed(self, exc: ParseError) -> ParseError:
        """``exc``, said better where the finish reason explains it: a refusal or an
        answer cut off by max_tokens. Those are final: sent again (`ember.retry`), the
        same request is refused or cut off again."""
        reason = self.finish_reason
        if reason == "content_filter":
            exc = ParseError(f"The model refused to answer (finish_reason "
                             f"'content_filter'): {_shorten(self.text)}. Rephrase the prompt; "
                             "the same request is refused again.", self.text)
        elif reason != "length" and "cut off" not in str(exc):
            return exc
        exc.final = True  # type: ignore[attr-defined]  # (ember.retry does not resend it)
        return exc

    def __str__(self) -> str:
        return self.text

    def __format__(self, spec: str) -> str:
        return format(self.text, spec)

    def __repr__(self) -> str:
        if self._thunk is not None:
            return "Response(<pending>)"
        cost = "unknown" if self._cost is None else f"${self._cost:.6f}"
        return (
            f"Response(model={self._model!r}, text={_shorten(self._text, 60)!r}, "
            f"tokens={self._usage.total_tokens}, cost={cost})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Response):
            return NotImplemented
        return (self.text, self.model, self.usage) == (other.text, other.model, other.usage)

    def __hash__(self) -> int:
        return hash((self.text, self.model))

    def __reduce__(self):  # picklable (Ray, multiprocessing) even when it was pending
        self._force()
        return (_rebuild, (self._text, self._model, tuple(self._usage), self._cost,
                           self._latency, self._finish_reason))

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "model": self.model,
            "usage": list(self.usage),
            "cost": self.cost,
            "latency": self.latency,
            "finish_reason": self.finish_reason,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Response:
        return cls(
            d["text"],
            model=d.get("model", ""),
            usage=Usage(*d.get("usage", (0, 0))),
            cost=d.get("cost"),
            latency=d.get("latency", 0.0),
            finish_reason=d.get("finish_reason"),
        )


def _rebuild(text, model, usage, cost, latency, finish_reason) -> Response:
    return Response(text, model=model, usage=Usage(*usage), cost=cost, latency=latency,
                    finish_reason=finish_reason)


def _shorten(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else text[: limit - 20] + f"... [{len(text)} chars]"


def parse_json(text: str) -> Any:
    """JSON from a model's answer: the whole text, a fenced block, or the first
    balanced object/array inside prose."""
    candidates = [text.strip()]
    candidates += [m.group(1).strip() for m in _FENCE.finditer(text)]
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except (ValueError, RecursionError):  # (RecursionError: "[[[[..." thousands deep)
            pass
    found = _first_balanced(text)
    if found is _CUT:
        raise ParseError(
            "The model's answer is not JSON: it ends inside a value it opened (cut off by "
            "max_tokens, when its finish_reason is 'length'). Raise max_tokens, ask for "
            "JSON with `response_format=\"json\"` (or a schema), or wrap the function in "
            f"`ember.retry` to sample again.\nText was: {_shorten(text)}", text)
    if found is not _MISSING:
        return found
    raise ParseError(
        "The model's answer is not JSON. Ask for JSON with "
        "`response_format=\"json\"` (or a schema), or wrap the function in "
        f"`ember.retry` to sample again.\nText was: {_shorten(text)}",
        text,
    )


_CUT = object()  # the text ends inside the first JSON value it opens


def _unclosed(text: str, start: int) -> bool:
    """Does the bracket opened at ``start`` stay open to the end of ``text`` (strings
    skipped)?"""
    depth, in_string, escaped = 0, False, False
    for ch in text[start:]:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return False
    return True
_TRIES = 256  # openers tried (each failed try costs a scan: brace-heavy prose was slow)


def _first_balanced(text: str) -> Any:
    """The first balanced JSON object or array in ``text`` (not one nested inside an
    earlier value the text never closes: that is `_CUT`, a fragment is no answer)."""
    decoder = json.JSONDecoder()
    tries = 0
    for i, ch in enumerate(text):
        if ch in "{[":
            tries += 1
            if tries > _TRIES:
                break
            try:
                value, _ = decoder.raw_decode(text, i)
            except (ValueError, RecursionError):
                if tries == 1 and _unclosed(text, i):  # all that follows is inside it
                    return _CUT
                continue
            if isinstance(value, list) and value and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                continue  # "[1]", "[2, 3]" in prose are citation marks or tags, not an answer
            return value
    return _MISSING
