"""`openai`: chat completions through the official SDK (`openai.AsyncOpenAI`).

Configuration is read from the environment at call time (``OPENAI_API_KEY``,
``OPENAI_BASE_URL``), so changing it takes effect on the next call. SDK clients are
pooled per (event loop, base URL, key) and made with ``max_retries=0``: Ember's own
retry layer owns retries, so attempts never multiply.

The client pooling, rate-limit headers and error mapping every SDK-backed provider
shares live in `ember.providers.sdk`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .._request import Request
from .._response import Response, Usage
from . import prices
from .sdk import SDKProvider, cut_at_stops
from .transport import http_response_type

__all__ = ["OpenAIProvider"]

# OpenAI reasoning models: max_completion_tokens, and no temperature/top_p except 1
_REASONING_RE = re.compile(r"^(o1|o3|o4|gpt-5)($|[-_.:])")
# reasoning models that refuse `stop` (a 400): Ember cuts their answers at it instead
_NO_STOP_RE = re.compile(r"^(o3|o4-mini)($|-\d{4}-\d{2}-\d{2}$)")


# ------------------------------------------------------------------- OpenAIProvider


# said when a JSON-mode request's messages never say "json" (OpenAI refuses those);
# JSON mode answers with an object only: an array comes wrapped in one
JSON_MODE_INSTRUCTION = "Respond with a JSON object."


def is_reasoning_model(model: str) -> bool:
    """o1 / o3 / o4 / gpt-5 families: ``max_completion_tokens``; temperature only 1."""
    return bool(_REASONING_RE.match(model.lower()))


def openai_response_format(fmt: Any) -> dict[str, Any] | None:
    """Ember's normalized response_format as OpenAI's ``response_format`` parameter."""
    if fmt is None:
        return None
    if fmt == "json":
        return {"type": "json_object"}
    _, name, schema, strict = fmt
    name = re.sub(r"[^A-Za-z0-9_-]", "_", str(name))[:64] or "response"
    return {"type": "json_schema",
            "json_schema": {"name": name, "schema": json.loads(schema), "strict": strict}}


def _finish_reason(choice: dict) -> str | None:
    """A choice's finish_reason; a refusal (no content, a ``refusal`` text) is
    "content_filter", as Anthropic's "refusal" stop reason is."""
    message = choice.get("message")
    if isinstance(message, dict) and message.get("content") is None and message.get("refusal"):
        return "content_filter"
    return choice.get("finish_reason")


def split_tokens(total: int, weights: list[int]) -> list[int]:
    """Split ``total`` into integer shares proportional to ``weights`` (largest
    remainder; equal shares when every weight is 0). The shares sum to ``total``."""
    if not weights:
        return []
    if sum(weights) <= 0:
        weights = [1] * len(weights)
    exact = [total * w / sum(weights) for w in weights]
    shares = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: exact[i] - shares[i], reverse=True)
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return shares


class OpenAIProvider(SDKProvider):
    """OpenAI's chat completions API; one HTTP request carries all ``n`` samples.

    Usage with ``n > 1``: OpenAI bills the prompt once per request, so the first
    response carries all the prompt tokens and the others carry 0; completion tokens
    are split across the choices in proportion to their text length. Summed over the
    choices, tokens and cost equal the request's.
    """

    name = "openai"
    label = "OpenAI"
    sdk = "openai"
    supports_n = True
    key_env = "OPENAI_API_KEY"
    base_url_env = "OPENAI_BASE_URL"
    example_model = "gpt-4o-mini"
    default_base_url = "https://api.openai.com/v1"
    reasoning_rules = True  # apply the o1/o3/o4/gpt-5 parameter rules

    added_only_if_unsaid = True  # (JSON mode's line: only where no message says json)

    def added_instruction(self, response_format: Any) -> str | None:
        return JSON_MODE_INSTRUCTION if response_format == "json" else None

    def make_client(self, base_url: str | None, api_key: str) -> Any:
        from openai import AsyncOpenAI

        return AsyncOpenAI(**self.client_options(base_url, api_key))

    def params(self, request: Request) -> dict[str, Any]:
        system = [{"role": "system", "content": request.system}] if request.system else []
        params: dict[str, Any] = {"model": request.model,
                                  "messages": system + request.message_dicts()}
        reasoning = self.reasoning_rules and is_reasoning_model(request.model)
        for name in ("temperature", "top_p"):
            value = request.param(name)
            if value is not None and not (reasoning and value != 1):
                params[name] = value
        max_tokens = request.param("max_tokens")
        if max_tokens is not None:
            params["max_completion_tokens" if reasoning else "max_tokens"] = max_tokens
        for name in ("seed", "stop"):
            if request.param(name) is not None:
                params[name] = request.param(name)
        if self.reasoning_rules and _NO_STOP_RE.match(request.model.lower()):
            params.pop("stop", None)  # (refused by these models: applied in `parse`)
        if request.n > 1:
            params["n"] = request.n
        fmt = openai_response_format(request.response_format)
        if fmt is not None:
            params["response_format"] = fmt
            messages = params["messages"]
            if request.response_format == "json" and not any(
                    "json" in str(m["content"]).lower() for m in messages):
                # JSON mode refuses messages that never say "json" (a 400), where sim and
                # Anthropic (told by Ember) answer: say it, as Ember does for those
                if messages[0]["role"] == "system":
                    messages[0] = {**messages[0], "content": messages[0]["content"]
                                   + "\n\n" + JSON_MODE_INSTRUCTION}
                else:
                    messages.insert(0, {"role": "system", "content": JSON_MODE_INSTRUCTION})
        extra = request.extra_params()
        if extra:
            params["extra_body"] = extra
        return params

    async def send(self, client: Any, params: dict[str, Any]) -> tuple[Any, bytes]:
        # The SDK's generic `post` with the body Ember built: `chat.completions.create`
        # would first walk the parameters through its type transforms (about a sixth
        # of the SDK's CPU time per request), and Ember parses the JSON itself. Auth,
        # headers, timeouts and error mapping are the SDK's, as with `create`.
        body = dict(params)
        body.update(body.pop("extra_body", None) or {})
        raw = await client.post("/chat/completions", body=body,
                                cast_to=http_response_type("openai"))
        return raw, raw.content

    def parse(self, body: dict, request: Request, latency: float,
              headers: dict[str, str]) -> list[Response]:
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices:
            raise self.format_error(request, "it has no choices", body, headers)
        if len(choices) != request.n:
            error = self.format_error(
                request, f"asked for n={request.n} answers and got {len(choices)} "
                "(the server may not support `n`)", body, headers)
            if len(choices) < request.n:  # (dispatch sends one request per sample then)
                error.fewer_choices = True  # type: ignore[attr-defined]
                error.final = True  # type: ignore[attr-defined]  # the same would come back
            if isinstance(body.get("usage"), dict):  # (billed all the same: reported)
                prompt, completion, billed = self._usage(body["usage"], request)
                error.billed = (prompt, completion, self.cost(request, billed, completion))  # type: ignore[attr-defined]
            raise error
        if all(isinstance(c, dict) and isinstance(c.get("index"), int) for c in choices):
            choices = sorted(choices, key=lambda c: c["index"])
        texts = [self._choice_text(c, request, body, headers) for c in choices]
        cut = [False] * len(texts)
        if self.reasoning_rules and request.param("stop") and \
                _NO_STOP_RE.match(request.model.lower()):  # (the stop Ember kept back)
            texts, cut = map(list, zip(*(cut_at_stops(t, request.param("stop")) for t in texts)))
        usage = body.get("usage")
        if not isinstance(usage, dict):
            usage = None
        prompt, completion, billed = self._usage(usage or {}, request)
        shares = split_tokens(completion, [len(t) for t in texts])
        out = []
        for i, (choice, text, share) in enumerate(zip(choices, texts, shares, strict=True)):
            used = Usage(prompt if i == 0 else 0, share)
            out.append(Response(
                text, model=request.model_id, usage=used,
                cost=self.cost(request, billed if i == 0 else 0, share)
                if usage is not None else self.cost_without_usage(request),
                latency=latency, finish_reason="stop" if cut[i] else _finish_reason(choice)))
        return out

    def _usage(self, usage: dict, request: Request) -> tuple[int, int, float]:
        """(prompt tokens, completion tokens, prompt tokens as billed): those read from
        the provider's prompt cache are billed at a discount."""
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        details = usage.get("prompt_tokens_details")
        cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
        return (prompt, completion,
                prompt - cached + cached * prices.cached_input_rate(self.name, request.model))

    def _choice_text(self, choice: Any, request: Request, body: dict,
                     headers: dict[str, str]) -> str:
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            raise self.format_error(request, "a choice has no message", body, headers)
        text = message.get("content")
        if text is None:  # a refusal, or a tool call with no text
            text = message.get("refusal") or ""
        elif isinstance(text, list):  # content parts (Mistral's thinking models): the text
            parts = [p.get("text") for p in text if isinstance(p, dict) and p.get("type") == "text"]
            if all(isinstance(p, str) for p in parts):
                text = "".join(parts)
        if not isinstance(text, str):
            raise self.format_error(request, "a message's content is not text", body, headers)
        return text
