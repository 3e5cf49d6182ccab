"""Rate-limit response headers, parsed: ``x-ratelimit-*`` (OpenAI and compatible
servers), ``anthropic-ratelimit-*``, ``retry-after`` and ``retry-after-ms``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Mapping

__all__ = ["RateHeaders", "parse_rate_headers", "parse_duration", "parse_retry_after",
           "seconds_until"]

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


@dataclass(slots=True)
class RateHeaders:
    limit_requests: float | None = None
    remaining_requests: float | None = None
    reset_requests: float | None = None  # seconds from now
    limit_tokens: float | None = None
    remaining_tokens: float | None = None
    reset_tokens: float | None = None
    retry_after: float | None = None


def parse_duration(text: str) -> float | None:
    """OpenAI's reset durations ("1s", "6m0s", "20ms", "1h2m3.5s") or plain seconds."""
    text = text.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _PART.findall(text)
    if not parts or "".join(a + b for a, b in parts) != text:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(a) * scale[u] for a, u in parts)


def seconds_until(stamp: str) -> float | None:
    """Seconds until an RFC 3339 time (Anthropic's ``-reset`` headers)."""
    try:
        when = datetime.fromisoformat(stamp.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``retry-after-ms``, else ``retry-after`` (seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        import email.utils  # rarely needed: load on first use

        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _num(headers: Mapping[str, str], name: str) -> float | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def parse_rate_headers(headers: Mapping[str, str]) -> RateHeaders:
    """The rate-limit facts in a response's headers (names in any case)."""
    h = {k.lower(): v for k, v in headers.items()}
    out = RateHeaders(retry_after=parse_retry_after(h))
    for kind in ("requests", "tokens"):
        limit = _num(h, f"x-ratelimit-limit-{kind}")
        remaining = _num(h, f"x-ratelimit-remaining-{kind}")
        reset_text = h.get(f"x-ratelimit-reset-{kind}")
        reset = parse_duration(reset_text) if reset_text else None
        prefixes = [f"anthropic-ratelimit-{kind}"]
        if kind == "tokens":
            prefixes.append("anthropic-ratelimit-input-tokens")
        for prefix in prefixes:
            if limit is not None:
                break
            limit = _num(h, f"{prefix}-limit")
            remaining = _num(h, f"{prefix}-remaining")
            stamp = h.get(f"{prefix}-reset")
            reset = seconds_until(stamp) if stamp else None
        setattr(out, f"limit_{kind}", limit)
        setattr(out, f"remaining_{kind}", remaining)
        setattr(out, f"reset_{kind}", reset)
    return out
