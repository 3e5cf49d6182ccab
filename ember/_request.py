"""`Request`: one normalized, hashable model request, and model-id parsing."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import xxhash

from .errors import ConfigurationError
from .ir.trace import PROCESS_MARK as _MARK
from .ir.trace import stale_placeholder

__all__ = ["Request", "parse_model_id", "build_request", "make_request", "normalize_params",
           "KNOWN_PARAMS"]

# Parameters Ember normalizes across providers. Anything else passes through
# unchanged to the provider (e.g. OpenAI's `reasoning_effort`).
KNOWN_PARAMS = ("temperature", "max_tokens", "seed", "stop", "top_p", "response_format")

_BARE_PREFIXES = (
    ("gpt-", "openai"), ("chatgpt-", "openai"), ("o1", "openai"), ("o3", "openai"),
    ("o4", "openai"), ("claude-", "anthropic"),
)


# a name that is not routable but looks like Anthropic's ("claud-3-5-sonnet")
_CLAUDE_LIKE = re.compile(r"cla+ude?|sonnet|haiku|opus")


def parse_model_id(model: str, known: tuple[str, ...]) -> tuple[str, str]:
    """Split a model id into (provider, model name).

    ``provider/model`` and ``provider:model`` split on the first separator only, so
    ``ollama/meta-llama/Llama-3`` keeps its slash. Bare well-known names route by prefix.
    """
    if not isinstance(model, str):
        raise ConfigurationError(
            f"The model id must be a string like 'openai/gpt-4o-mini', got {type(model).__name__}."
        )
    mid = model.strip()
    if not mid:
        raise ConfigurationError("The model id is empty. Try 'sim' or 'openai/gpt-4o-mini'.")
    if mid.lower() in known:  # a provider alone ("sim"), any case as with "SIM/x"
        return mid.lower(), ""
    cut = [i for i in (mid.find("/"), mid.find(":")) if i > 0]
    if cut:
        i = min(cut)
        provider, name = mid[:i].lower(), mid[i + 1:]
        if provider in known:
            if not name:
                raise ConfigurationError(f"Model id {model!r} names provider {provider!r} but no model.")
            return provider, name
        if mid[i] == "/" or not _bare_provider(mid):
            raise ConfigurationError(
                f"Unknown provider {provider!r} in model id {model!r}.{_suggest(provider, known)} "
                f"Known providers: {', '.join(sorted(known))}. Register your own with "
                "ember.providers.register()."
            )
    bare = _bare_provider(mid)
    if bare:
        return bare, mid
    name = mid.lstrip("/:") or "gpt-4o-mini"  # ("/gpt-4o": no provider before the slash)
    example = "anthropic" if _CLAUDE_LIKE.search(name.lower()) else "openai"
    raise ConfigurationError(
        f"Cannot tell which provider serves {model!r}.{_suggest(name, None)} Write it as "
        f"'provider/model' (known providers: {', '.join(sorted(known))}), e.g. "
        f"'{example}/{name}'."
    )


def _suggest(word: str, choices: tuple[str, ...] | None) -> str:
    """" Did you mean 'x'?" for a misspelt provider (among ``choices``) or, with None,
    a misspelt model the price table knows; "" when nothing is close."""
    from .providers.prices import did_you_mean, known_models

    return did_you_mean(word, known_models() if choices is None else choices)


def _bare_provider(name: str) -> str | None:
    low = name.lower()
    for prefix, provider in _BARE_PREFIXES:
        if low.startswith(prefix):
            if prefix in ("o1", "o3", "o4") and not (len(low) == 2 or low[2] in "-_"):
                continue
            return provider
    return None


class FrozenDict(tuple):
    """A dict parameter value, frozen: its (key, value) pairs, sorted. A tuple of its
    own class, so it unfreezes to a dict and a list of pairs stays a list (an empty
    dict, a tool's ``"properties": {}``, was sent as ``[]``: a 400)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(_unfreeze(self))

    # (unequal to the list of the same pairs: two requests jit must not merge)
    def __eq__(self, other: object) -> bool:
        return other.__class__ is FrozenDict and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((FrozenDict, tuple.__hash__(self)))


def _canonical(value: Any, where: str) -> Any:
    """A hashable, JSON-able form of a parameter value; rejects what cannot be one."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(_canonical(v, where) for v in value)
    if isinstance(value, dict):
        return FrozenDict(sorted((str(k), _canonical(v, where)) for k, v in value.items()))
    raise ConfigurationError(
        f"Parameter {where!r} has a value of type {type(value).__name__}; use str, numbers, "
        "lists or dicts."
    )


def _unfreeze(value: Any) -> Any:
    if value.__class__ is FrozenDict:
        return {k: _unfreeze(v) for k, v in value}
    if isinstance(value, tuple):
        return [_unfreeze(v) for v in value]
    return value


def _normalize_format(fmt: Any) -> Any:
    """response_format: "json" | a JSON schema dict | a pydantic model class, or OpenAI's
    own forms ({"type": "text" | "json_object" | "json_schema", ...}). A schema becomes
    ("schema", name, schema JSON, strict), its keys in the order given: a model writes
    the fields in that order ("reasoning" before "answer" is part of the prompt)."""
    if fmt is None or fmt == "text" or fmt == {"type": "text"}:
        return None
    if fmt == "json" or fmt == {"type": "json_object"}:
        return "json"
    if isinstance(fmt, type) and hasattr(fmt, "model_json_schema"):
        return ("schema", fmt.__name__, json.dumps(fmt.model_json_schema()), False)
    if isinstance(fmt, dict):
        if fmt.get("type") == "json_schema" and isinstance(fmt.get("json_schema"), dict):
            inner = fmt["json_schema"]
            return ("schema", inner.get("name", "response"),
                    json.dumps(inner.get("schema", {})),
                    bool(inner.get("strict", False)))
        return ("schema", fmt.get("title", "response"), json.dumps(fmt), False)
    raise ConfigurationError(
        "response_format must be 'json', a JSON schema dict, or a pydantic model class; "
        f"got {fmt!r}."
    )


# json.dumps(..., sort_keys=True, default=str), without building an encoder per call
_KEY_JSON = json.JSONEncoder(sort_keys=True, default=str)


@dataclass(frozen=True, slots=True)
class Request:
    """A provider-neutral request. Hashable; ``key`` identifies it across runs."""

    provider: str
    model: str
    messages: tuple[tuple[str, str], ...]
    system: str | None = None
    params: tuple[tuple[str, Any], ...] = ()
    n: int = 1
    _key: list = field(default_factory=list, compare=False, repr=False, hash=False)

    @property
    def model_id(self) -> str:
        return f"{self.provider}/{self.model}" if self.model else self.provider

    def param(self, name: str, default: Any = None) -> Any:
        for k, v in self.params:
            if k == name:
                return _unfreeze(v)
        return default

    @property
    def response_format(self) -> Any:
        for k, v in self.params:
            if k == "response_format":
                return v
        return None

    def extra_params(self) -> dict[str, Any]:
        """Provider-specific parameters, sent as given. A dict given as ``extra_body``
        is merged in, as the SDKs do (it was sent as an "extra_body" field)."""
        extra = {k: _unfreeze(v) for k, v in self.params if k not in KNOWN_PARAMS}
        if isinstance(extra.get("extra_body"), dict):
            extra.update(extra.pop("extra_body"))
        return extra

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]

    def prompt_text(self) -> str:
        """All message text, for token estimates and the simulated model."""
        parts = [self.system] if self.system else []
        parts += [c for _, c in self.messages]
        return "\n".join(parts)

    def deterministic(self, default_temperature: float) -> bool:
        """Temperature 0 or a fixed seed: identical requests give identical answers."""
        if self.param("seed") is not None:
            return True
        return self.param("temperature", default_temperature) == 0

    @property
    def key(self) -> str:
        """xxhash of everything but ``n``: identical requests share a key."""
        if not self._key:
            blob = _KEY_JSON.encode(  # (a frozen dict as an object: not its pairs' list)
                [self.provider, self.model, self.messages, self.system,
                 [(k, _unfreeze(v)) for k, v in self.params]])
            self._key.append(xxhash.xxh3_128_hexdigest(blob.encode()))
        return self._key[0]

    def with_n(self, n: int) -> Request:
        # the key leaves out n: a computed one carries over
        return Request(self.provider, self.model, self.messages, self.system, self.params, n,
                       list(self._key))

    def __repr__(self) -> str:  # never prints message bodies in full
        first = self.messages[-1][1] if self.messages else ""
        short = first if len(first) <= 40 else first[:37] + "..."
        return f"Request({self.model_id!r}, {short!r}, n={self.n})"


def _messages(prompt: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(prompt, str):
        return (("user", prompt),)
    if hasattr(prompt, "_thunk") and hasattr(prompt, "text"):  # a Response used as a prompt
        return (("user", prompt.text),)
    if isinstance(prompt, tuple) and prompt and all(
            isinstance(m, tuple) and len(m) == 2 for m in prompt):  # the graph's frozen form
        prompt = [{"role": r, "content": c} for r, c in prompt]
    if isinstance(prompt, (list, tuple)):
        msgs = []
        for i, m in enumerate(prompt):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ConfigurationError(
                    f"Message {i} must be a dict with 'role' and 'content', got {m!r:.80}."
                )
            content = m["content"]
            if hasattr(content, "_thunk") and hasattr(content, "text"):
                content = content.text
            if not isinstance(content, str):
                raise ConfigurationError(
                    f"Message {i} content must be a string, got {type(content).__name__}."
                )
            msgs.append((str(m["role"]), content))
        if not msgs:
            raise ConfigurationError("The prompt is an empty list of messages.")
        return tuple(msgs)
    raise ConfigurationError(
        "The prompt must be a string or a list of {'role', 'content'} messages, "
        f"got {type(prompt).__name__}."
    )


def _check_encodable(text: str, what: str) -> None:
    """A lone surrogate (half an emoji, from JSON such as "\\ud83d") cannot be sent as
    UTF-8: say so here, not as a bare UnicodeEncodeError from inside the SDK."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigurationError(
            f"The {what} holds a lone surrogate ({text[exc.start]!r} at position "
            f"{exc.start}), which cannot be sent as UTF-8; it usually comes from JSON holding "
            "half an emoji. Repair the text first, e.g. "
            "text.encode('utf-8', 'replace').decode().") from None


def make_request(provider: str, model: str, prompt: Any, system: Any,
                 params: tuple[tuple[str, Any], ...], n: int = 1) -> Request:
    """A request from an already-normalized parameter tuple (the graph's form)."""
    messages = _messages(prompt)
    if hasattr(system, "_thunk") and hasattr(system, "text"):
        system = system.text
    for _, content in messages:
        if _MARK in content:
            raise stale_placeholder("in a prompt")
        if not content.isascii():
            _check_encodable(content, "prompt")
    if system is not None and _MARK in system:
        raise stale_placeholder("in a system prompt")
    if system is not None and not system.isascii():
        _check_encodable(system, "system prompt")
    if messages[0][0] == "system":
        system = messages[0][1] if system is None else system + "\n" + messages[0][1]
        messages = messages[1:]
        if not messages:
            raise ConfigurationError("The prompt has a system message but no user message.")
    return Request(provider, model, messages, system, params, n)


def build_request(provider: str, model: str, prompt: Any, params: dict[str, Any]) -> Request:
    """Normalize a `models()` call into a `Request`; raise a clear error on bad input."""
    return make_request(provider, model, prompt, *normalize_params(params, provider))


# client settings, not request parameters: passed through, they would be sent in the
# JSON body (a key in clear) and listed by ember.inspect, and do nothing (stream=True:
# the answer would come as events, not JSON)
_CLIENT_SETTINGS = ("stream", "api_key", "extra_headers")


def _refuse_client_settings(params: dict[str, Any], provider: str | None) -> None:
    given = [k for k in _CLIENT_SETTINGS if k in params and (k != "stream" or params[k])]
    if not given:
        return
    from . import providers

    if provider in providers._custom:  # the user's own provider reads what it is given
        return
    if given[0] == "stream":
        raise ConfigurationError(
            "models() does not take stream=True: it returns whole answers (a streamed body "
            "is not a JSON answer, and was sent again as malformed). Remove stream=True; "
            "jit already overlaps the calls that can run at once.")
    if given[0] == "api_key":
        key_env = getattr(providers.get(provider), "key_env", None) if provider else None
        hint = (f"Set the environment variable {key_env} instead (`export {key_env}=...`)"
                if key_env else f"Provider {provider!r} takes no key" if provider
                else "Set the provider's environment variable instead (e.g. OPENAI_API_KEY)")
        raise ConfigurationError(
            "models() does not take api_key=: a key is not a request parameter (it would be "
            f"sent in the request body). {hint}; to pass a key in code, register your own "
            "provider with ember.providers.register().")
    raise ConfigurationError(
        "models() does not take extra_headers=: headers are not request parameters (they "
        "would be sent in the request body). To send custom headers, register your own "
        "provider with ember.providers.register().")


_FLOAT_PARAMS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")


def normalize_params(params: dict[str, Any], provider: str | None = None
                     ) -> tuple[Any, tuple[tuple[str, Any], ...], int]:
    """(system, frozen params, n) from `models()` keyword arguments (for ``provider``,
    which decides whether client settings like ``api_key`` are refused)."""
    _refuse_client_settings(params, provider)
    params = dict(params)
    system = params.pop("system", None)
    if system is not None and not isinstance(system, str) and not hasattr(system, "_thunk"):
        raise ConfigurationError(f"`system` must be a string, got {type(system).__name__}.")
    n = params.pop("n", 1)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigurationError(f"`n` must be a positive integer, got {n!r}.")
    if "response_format" in params:
        params["response_format"] = _normalize_format(params["response_format"])
        if params["response_format"] is None:
            del params["response_format"]
    temperature = params.get("temperature")
    if temperature is not None and not (isinstance(temperature, (int, float))
                                        and not isinstance(temperature, bool)
                                        and 0 <= temperature <= 2):
        raise ConfigurationError(f"`temperature` must be a number in [0, 2], got {temperature!r}.")
    if temperature is not None and temperature > 1 and provider == "anthropic":
        raise ConfigurationError(f"Anthropic takes `temperature` in [0, 1], got {temperature!r} "
                                 "(OpenAI's range is [0, 2]).")
    for name in _FLOAT_PARAMS:  # 0 and 0.0 are one setting: one request key
        value = params.get(name)
        if type(value) is int:
            params[name] = float(value)
    max_tokens = params.get("max_tokens")
    if max_tokens is not None and not (isinstance(max_tokens, int) and not isinstance(max_tokens, bool)
                                       and max_tokens > 0):
        raise ConfigurationError(f"`max_tokens` must be a positive integer, got {max_tokens!r}.")
    if isinstance(params.get("stop"), str):
        params["stop"] = [params["stop"]]
    frozen = tuple(sorted((k, _canonical(v, k)) for k, v in params.items() if v is not None))
    return system, frozen, n
