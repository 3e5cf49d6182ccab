"""`sim`: the built-in simulated model.

Offline and deterministic: the answer is a function of the model name, the request
and the sample index. Token counts are realistic (about four characters a token),
the latency follows a configurable distribution, and it has a price. It is a real
provider: use it to test your own programs without keys or network.

    ember.providers.sim.configure(latency=0.3)                       # fixed 300 ms
    ember.providers.sim.configure(latency=("lognormal", 0.2, 0.6))   # median, p95
    ember.providers.sim.configure(latency=("uniform", 0.1, 0.5))
    EMBER_SIM_LATENCY=0.05 ember demo

Sampled calls (temperature > 0 without a seed) get a fresh sample index each time,
so repeated calls differ as a real model's would; deterministic calls never do.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import re
from dataclasses import dataclass, field
from typing import Any

import xxhash

from .._request import Request
from .._response import Response, Usage
from ..errors import BadRequestError, ConfigurationError, ContextLengthError, RateLimitError, \
    ServerError
from .base import Provider
from .prices import cost_of

__all__ = ["SimProvider", "configure", "stats", "reset_stats", "estimate_tokens"]

_WORDS = (
    "analysis shows the key point is that evidence supports a careful reading of "
    "context while several factors remain uncertain however the main claim holds "
    "because data and reasoning agree overall this suggests a clear answer with "
    "moderate confidence further review could refine details and risks remain low"
).split()
_WORD_RE = re.compile(r"[A-Za-z][A-Za-z'-]{2,}")
_xxh64 = xxhash.xxh64_intdigest


def estimate_tokens(text: str) -> int:
    """A calibrated character heuristic (~4 chars a token for English)."""
    return max(1, math.ceil(len(text) / 4))


@dataclass
class SimConfig:
    latency: Any = 0.0  # seconds, or ("fixed"|"uniform"|"lognormal", a, b)
    context_window: int = 128_000
    error_rate: float = 0.0  # fraction of requests that fail with a transient error
    fail_on: str | None = None  # prompts containing this fail with BadRequestError
    seed: int = 0


@dataclass
class SimStats:
    requests: int = 0  # HTTP-equivalent round trips
    completions: int = 0  # answers produced (n per request)
    in_flight: int = 0
    max_in_flight: int = 0
    prompts: list[str] = field(default_factory=list)  # the latest, oldest first (bounded)


MAX_PROMPTS = 10_000  # SimStats keeps the latest this many prompts, at most twice as many


def env_latency(default: float = 0.0) -> float:
    """EMBER_SIM_LATENCY in seconds (``default`` when unset or empty); anything but a
    non-negative number is a ConfigurationError naming the variable."""
    text = os.environ.get("EMBER_SIM_LATENCY", "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise ConfigurationError(
            f"EMBER_SIM_LATENCY={text!r} is not a latency in seconds: set it to a "
            "non-negative number such as 0.2 (for 200 ms), or unset it.")
    return value


# a bad EMBER_SIM_LATENCY fails sim's requests (until configure(latency=...) sets one),
# not the import of this module: `ember --help` and other providers still work
try:
    _config = SimConfig(latency=env_latency())
    _env_error: str | None = None
except ConfigurationError as exc:
    _config, _env_error = SimConfig(), exc.message
_stats = SimStats()


def configure(**options: Any) -> SimConfig:
    """Change the simulated model's behaviour (latency, error_rate, fail_on, ...)."""
    for key in options:
        if not hasattr(_config, key):
            raise TypeError(f"sim has no option {key!r}; options: {', '.join(vars(_config))}")
    if "latency" in options:  # a bad distribution fails here, not inside a later call
        _sample_latency(options["latency"], random.Random(0))
        global _env_error
        _env_error = None  # (the setting replaces EMBER_SIM_LATENCY's)
    for key, value in options.items():
        setattr(_config, key, value)
    if "seed" in options:
        SimProvider.rng = random.Random(options["seed"])
    return _config


def stats() -> SimStats:
    """Counters of what the simulated model was asked (requests, completions, peak concurrency)."""
    return _stats


def reset_stats() -> None:
    global _stats
    _stats = SimStats()
    SimProvider.sample_counters.clear()


def _sample_latency(spec: Any, rng: random.Random) -> float:
    if isinstance(spec, (int, float)):
        return float(spec)
    try:
        kind, a, b = spec
    except (TypeError, ValueError):
        raise ValueError(f"sim latency must be seconds or (kind, a, b), got {spec!r}") from None
    if kind == "fixed":
        return float(a)
    if kind == "uniform":
        return rng.uniform(a, b)
    if kind == "lognormal":  # a = median, b = p95
        sigma = max(1e-9, math.log(b / a) / 1.645)
        return rng.lognormvariate(math.log(a), sigma)
    raise ValueError(f"unknown latency distribution {kind!r}")


class SimProvider(Provider):
    name = "sim"
    supports_n = True
    supports_batch = True
    default_temperature = 0.0  # the simulated model is greedy unless asked to sample
    sample_counters: dict[str, int] = {}
    rng = random.Random(0)

    async def complete(self, request: Request) -> list[Response]:
        return (await self._round_trip([request]))[0]

    async def complete_batch(self, requests: list[Request]) -> list[list[Response] | Exception]:
        """One round trip; a prompt refused (too long, ``fail_on``) fails alone: its
        error in place of its answers."""
        return await self._round_trip(requests)

    async def _round_trip(self, requests: list[Request]) -> list[Any]:
        if _env_error is not None:
            raise ConfigurationError(_env_error)
        cfg, st = _config, _stats
        st.requests += 1
        st.in_flight += 1
        st.max_in_flight = max(st.max_in_flight, st.in_flight)
        try:
            prompts = [req.prompt_text() for req in requests]
            refused = [_refusal(req, prompt, cfg) for req, prompt in zip(requests, prompts)]
            if len(requests) == 1 and refused[0] is not None:
                raise refused[0]
            if cfg.error_rate and self.rng.random() < cfg.error_rate:
                if self.rng.random() < 0.5:
                    raise RateLimitError("sim: simulated 429", provider="sim", status=429,
                                         retry_after=0.01)
                raise ServerError("sim: simulated 503", provider="sim", status=503)
            delay = _sample_latency(cfg.latency, self.rng)
            if delay > 0:
                await asyncio.sleep(delay)
            out: list[Any] = []
            for req, prompt, error in zip(requests, prompts, refused):
                if error is not None:
                    out.append(error)
                    continue
                st.prompts.append(prompt)
                if len(st.prompts) > 2 * MAX_PROMPTS:  # (trimmed in halves: amortized O(1))
                    del st.prompts[:-MAX_PROMPTS]
                start = self._first_sample(req)
                out.append([self._answer(req, start + i, delay, first=i == 0, prompt=prompt)
                            for i in range(req.n)])
                st.completions += req.n
            return out
        finally:
            st.in_flight -= 1

    def _first_sample(self, req: Request) -> int:
        if req.deterministic(self.default_temperature):
            return 0
        start = self.sample_counters.get(req.key, 0)
        self.sample_counters[req.key] = start + req.n
        return start

    def _answer(self, req: Request, sample: int, latency: float, first: bool = True,
                prompt: str | None = None) -> Response:
        if req.deterministic(self.default_temperature):
            sample = 0
        if prompt is None:
            prompt = req.prompt_text()
        h = _xxh64(f"{req.model}\x00{req.key}\x00{sample}".encode(), seed=_config.seed)
        text = _generate(req, prompt, h)
        max_tokens = req.param("max_tokens")
        finish = "stop"
        out_tokens = estimate_tokens(text)
        if max_tokens is not None and out_tokens > max_tokens:
            text, out_tokens, finish = text[: max_tokens * 4], max_tokens, "length"
        # the prompt is billed once per request: on its first answer
        in_tokens = estimate_tokens(prompt) + 4 * len(req.messages) if first else 0
        return Response(
            text, model=req.model_id, usage=Usage(in_tokens, out_tokens),
            cost=cost_of("sim", req.model, in_tokens, out_tokens), latency=latency,
            finish_reason=finish,
        )


def _refusal(req: Request, prompt: str, cfg: SimConfig) -> Exception | None:
    """The 400 a prompt gets (over the context window, or holding ``fail_on``)."""
    if estimate_tokens(prompt) > cfg.context_window:
        return ContextLengthError(
            f"sim: prompt of ~{estimate_tokens(prompt)} tokens exceeds the context window "
            f"of {cfg.context_window}.", provider="sim", model=req.model_id, status=400)
    if cfg.fail_on and cfg.fail_on in prompt:
        return BadRequestError(f"sim: prompt contains {cfg.fail_on!r} (fail_on).",
                               provider="sim", model=req.model_id, status=400)
    return None


def _topic(prompt: str) -> list[str]:
    """The prompt's words (read-only); remembered for the last prompt, which the n
    samples of a request share."""
    global _last_topic
    last = _last_topic
    if last[0] != prompt:
        last = _last_topic = (prompt, _WORD_RE.findall(prompt))
    return last[1]


_last_topic: tuple = (None, [])


def _generate(req: Request, prompt: str, h: int) -> str:
    topic = _topic(prompt)
    fmt = req.response_format
    wants_json = fmt is not None or "json" in prompt.lower()
    if wants_json:
        rng = random.Random(h)
        if isinstance(fmt, tuple) and fmt[0] == "schema":
            return json.dumps(_from_schema(json.loads(fmt[2]), rng, topic))
        if re.search(r"\b(list|array)\b", prompt, re.IGNORECASE):
            picks = sorted({w.capitalize() for w in topic[-12:]}) or ["Item"]
            rng.shuffle(picks)
            return json.dumps(picks[: rng.randint(2, 4)])
        return json.dumps({"answer": rng.choice(topic or _WORDS),
                           "confidence": round(rng.uniform(0.5, 0.99), 2)})
    # prose: a window of a fixed random word stream, placed by the hash (seeding a
    # Random per answer cost more than the rest of an answer)
    stream = _STREAM or _make_stream()
    n_words = 12 + (h >> 14) % 29
    start = (h >> 24) % (len(stream) - 40)
    words = stream[start:start + n_words]
    if topic:
        recent = topic[-8:]
        words[(h >> 40) % n_words] = recent[(h >> 48) % len(recent)]
    return (f"[{h % 10_000:04d}] " + " ".join(words)).rstrip() + "."


_STREAM: list[str] = []


def _make_stream() -> list[str]:
    rng = random.Random(0)
    _STREAM[:] = [rng.choice(_WORDS) for _ in range(4096)]
    return _STREAM


def _from_schema(schema: dict, rng: random.Random, topic: list[str],
                 root: dict | None = None, depth: int = 0) -> Any:
    root = schema if root is None else root
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#"):  # pydantic's nested models and enums
        target: Any = root
        for part in ref.lstrip("#").strip("/").split("/") if ref != "#" else ():
            target = target.get(part) if isinstance(target, dict) else None
        return _from_schema(target if isinstance(target, dict) else {}, rng, topic, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return rng.choice(schema["enum"])
    for key in ("anyOf", "oneOf", "allOf"):  # Optional[X] is anyOf [X, null]: choose X
        options = [o for o in schema.get(key) or () if isinstance(o, dict)]
        if options:
            chosen = next((o for o in options if o.get("type") != "null"), options[0])
            return _from_schema(chosen, rng, topic, root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):  # {"type": ["integer", "null"]}
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "null":
        return None
    if kind == "object" or "properties" in schema:
        return {k: _from_schema(v, rng, topic, root, depth + 1)
                for k, v in schema.get("properties", {}).items()}
    if kind == "array":
        count = rng.randint(1, 3) if depth < 6 else 0  # recursive schemas end
        return [_from_schema(schema.get("items", {}), rng, topic, root, depth + 1)
                for _ in range(count)]
    if kind == "integer":
        return rng.randint(0, 100)
    if kind == "number":
        return round(rng.uniform(0, 1), 3)
    if kind == "boolean":
        return rng.random() < 0.5
    return rng.choice(topic or _WORDS)
