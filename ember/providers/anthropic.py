"""`anthropic`: the Messages API through the official SDK (`anthropic.AsyncAnthropic`).

``ANTHROPIC_API_KEY`` and ``ANTHROPIC_BASE_URL`` are read at call time; clients are
pooled and made with ``max_retries=0`` (Ember owns retries). How Ember's parameters
map onto the Messages API:

- ``system`` (and any system messages) -> ``system=``; ``stop`` -> ``stop_sequences``.
- ``max_tokens`` is required by Anthropic: it defaults to 1024.
- ``temperature`` / ``top_p`` are not parameters of ``messages.create`` in the 2.x
  SDK, so they travel in ``extra_body`` (the models that accept them still do).
- ``seed`` has no Anthropic equivalent and is not sent.
- ``response_format``: the Messages API has no JSON mode, so Ember appends an
  instruction to the system prompt asking for only JSON — with the schema, when one
  was given. Parse with ``Response.json()``, which tolerates stray code fences.
- ``n > 1`` sends n requests concurrently (no ``n`` in the API).

Usage counts cached prompt tokens as input tokens; the cost prices cache writes at
1.25x and cache reads at 0.1x the input price, as Anthropic bills them (5-minute
cache). ``finish_reason`` uses OpenAI's words: "stop", "length", "tool_calls",
"content_filter". Errors map as described in `ember.providers.sdk` (529 overloaded
is a `ServerError`).
"""

from __future__ import annotations

from typing import Any

from .._request import Request
from .._response import Response, Usage
from ..errors import BadRequestError, EmberError
from .sdk import SDKProvider, cut_at_stops

__all__ = ["AnthropicProvider", "json_instruction"]

_SYSTEM_ROLES = ("system", "developer")
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop",
           "max_tokens": "length", "model_context_window_exceeded": "length",
           "tool_use": "tool_calls", "refusal": "content_filter"}


def json_instruction(fmt: Any) -> str | None:
    """The system-prompt instruction standing in for ``response_format``."""
    if fmt is None:
        return None
    text = "Respond with only one valid JSON value: no prose, no explanation, no code fences."
    if fmt == "json":
        return text
    _, name, schema, _ = fmt
    return f"{text} The JSON must conform to this JSON schema (named {name!r}):\n{schema}"


class AnthropicProvider(SDKProvider):
    name = "anthropic"
    label = "Anthropic"
    sdk = "anthropic"
    supports_n = False
    key_env = "ANTHROPIC_API_KEY"
    base_url_env = "ANTHROPIC_BASE_URL"
    default_base_url = "https://api.anthropic.com"
    example_model = "claude-haiku-4-5"
    default_max_tokens = 1024

    def make_client(self, base_url: str | None, api_key: str) -> Any:
        from anthropic import AsyncAnthropic

        return AsyncAnthropic(**self.client_options(base_url, api_key))

    def added_instruction(self, response_format: Any) -> str | None:
        return json_instruction(response_format)

    def params(self, request: Request) -> dict[str, Any]:
        system = [request.system] if request.system else []
        # (OpenAI's "developer" role is its newer name for system: Anthropic has neither)
        system += [c for role, c in request.messages if role in _SYSTEM_ROLES]
        instruction = json_instruction(request.response_format)
        if instruction:
            system.append(instruction)
        params: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.param("max_tokens") or self.default_max_tokens,
            "messages": [{"role": r, "content": c} for r, c in request.messages
                         if r not in _SYSTEM_ROLES],
        }
        if system:
            params["system"] = "\n\n".join(system)
        # (Anthropic refuses a whitespace-only stop sequence, "\n" the commonest: those
        # are applied to the answer here instead, see `parse`)
        stops = [x for x in request.param("stop") or () if x.strip()]
        if stops:
            params["stop_sequences"] = stops
        extra = {k: request.param(k) for k in ("temperature", "top_p")
                 if request.param(k) is not None}
        extra.update(request.extra_params())
        if extra:
            params["extra_body"] = extra
        return params

    async def send(self, client: Any, params: dict[str, Any]) -> tuple[Any, bytes]:
        raw = await client.messages.with_raw_response.create(**params)
        return raw, await raw.read()

    def map_error(self, exc: BaseException, request: Request) -> EmberError | None:
        # the SDK refuses, before sending, non-streaming requests that may outlast 10 min
        if isinstance(exc, ValueError) and "Streaming is required" in str(exc):
            return BadRequestError(
                f"max_tokens={request.param('max_tokens')} is too large for one non-streaming "
                f"Anthropic request (model {request.model_id!r}); lower max_tokens.",
                provider=self.name, model=request.model_id)
        return super().map_error(exc, request)

    def parse(self, body: dict, request: Request, latency: float,
              headers: dict[str, str]) -> list[Response]:
        blocks = body.get("content")
        if not isinstance(blocks, list):
            raise self.format_error(request, "it has no content", body, headers)
        texts = [b.get("text") for b in blocks if isinstance(b, dict) and b.get("type") == "text"]
        if not all(isinstance(t, str) for t in texts):
            raise self.format_error(request, "a text block has no text", body, headers)
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else None
        u = usage or {}
        fresh, written, read = (int(u.get(k) or 0) for k in (
            "input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))
        output = int(u.get("output_tokens") or 0)
        cost = (self.cost(request, fresh + 1.25 * written + 0.1 * read, output)
                if usage is not None else None)
        reason = body.get("stop_reason") if isinstance(body.get("stop_reason"), str) else None
        blank = [x for x in request.param("stop") or () if x and not x.strip()]
        text, cut = cut_at_stops("".join(texts), blank)
        reason = "stop_sequence" if cut else reason
        return [Response(
            text, model=request.model_id, usage=Usage(fresh + written + read, output),
            cost=cost, latency=latency, finish_reason=_FINISH.get(reason, reason))]

