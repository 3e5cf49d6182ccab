"""Admission control: when a request to a provider may start.

Per provider, on Ember's event loop:

- a concurrency gate whose waiters start highest priority first (the schedule pass's
  priorities), then in arrival order;
- token buckets for requests and tokens per minute, seeded from the provider's
  ``default_rpm`` / ``default_tpm`` and `configure_limits`, and corrected by the
  ``x-ratelimit-*`` / ``anthropic-ratelimit-*`` headers of every response;
- on a throttling 429 the whole provider pauses until its ``Retry-After`` and its
  concurrency halves (growing back by one per window of successes), so one 429 does
  not become a storm of them. A quota 429 fails fast and pauses nothing.

User limits are caps: the effective limit is the smaller of the user's and the
server's. Limits the server states replace the provider's defaults.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any

from .._keywords import hint_keywords
from .headers import RateHeaders, parse_rate_headers

__all__ = ["Limiter", "Limits", "Ticket", "limiter", "configure_limits"]

log = logging.getLogger("ember")
_UNSET: Any = object()
# Tokens that accrued in the last SLACK seconds are not spent yet: the bucket is
# charged when a request is admitted, the server's when the request arrives, and under
# load (a burst on fresh connections) arrivals bunch up behind admissions. The pace
# stays the same; the bucket just keeps this reserve.
SLACK = 0.25


@dataclass(frozen=True)
class Limits:
    """A provider's limits as Ember applies them now (None = unlimited)."""

    provider: str
    rpm: float | None
    tpm: float | None
    concurrency: int
    window: float = 60.0  # seconds the rpm / tpm counts refer to


class _Bucket:
    """A token bucket holding up to ``limit`` and refilling ``limit`` per ``window`` s."""

    __slots__ = ("limit", "window", "level", "stamp", "blocked_until")

    def __init__(self, limit: float, window: float, now: float) -> None:
        self.limit, self.window, self.level, self.stamp = limit, window, limit, now
        self.blocked_until = 0.0  # a server said "0 remaining until then"

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.limit, self.level + (now - self.stamp) * self.limit / self.window)
            self.stamp = now

    def wait(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` (at most the whole bucket) is available."""
        self.refill(now)
        rate = self.limit / self.window
        need = min(amount + rate * SLACK, self.limit)
        short = 0.0 if self.level >= need else (need - self.level) / rate
        return max(short, self.blocked_until - now)

    def set_limit(self, limit: float, window: float, now: float) -> None:
        self.refill(now)
        if limit < self.limit:
            self.level = min(self.level, limit)
        self.limit, self.window = limit, window


@dataclass(slots=True)
class Ticket:
    """One admitted request: what it reserved, for `Limiter.release`."""

    state: _State
    tokens: float
    admitted: float
    waited: float


class _State:
    """One provider's admission state (lives on Ember's loop)."""

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop, limits: Limits) -> None:
        self.name, self.loop = name, loop
        self.limits = limits
        self.cap = float(limits.concurrency)  # AIMD-adjusted concurrency
        self.in_flight = 0
        self.requests: _Bucket | None = None
        self.tokens: _Bucket | None = None
        self.paused_until = 0.0
        self.last_cut = 0.0
        self.waiters: list[tuple[float, int, asyncio.Future, float]] = []
        self.seq = itertools.count()
        self.timer: asyncio.TimerHandle | None = None
        self.apply(limits)

    def apply(self, limits: Limits) -> None:
        now = time.monotonic()
        if limits.concurrency != self.limits.concurrency:
            self.cap = float(limits.concurrency)
        self.limits = limits
        for attr, value in (("requests", limits.rpm), ("tokens", limits.tpm)):
            bucket = getattr(self, attr)
            if value is None:
                setattr(self, attr, None)
            elif bucket is None:
                setattr(self, attr, _Bucket(value, limits.window, now))
            else:
                bucket.set_limit(value, limits.window, now)

    # ---- admission ------------------------------------------------------------------
    def wait_for(self, tokens: float, now: float) -> float | None:
        """None when concurrency is full (a release pumps); else seconds to wait."""
        if self.in_flight >= max(1, int(self.cap)):
            return None
        wait = self.paused_until - now
        if self.requests is not None:
            wait = max(wait, self.requests.wait(1, now))
        if self.tokens is not None:
            wait = max(wait, self.tokens.wait(tokens, now))
        return max(0.0, wait)

    def admit(self, tokens: float) -> None:
        self.in_flight += 1
        if self.requests is not None:
            self.requests.level -= 1
        if self.tokens is not None:
            self.tokens.level -= tokens

    def pump(self) -> None:
        """Start waiters in priority order while the limits allow."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        now = time.monotonic()
        while self.waiters:
            _, _, fut, tokens = self.waiters[0]
            if fut.done():  # cancelled while waiting
                heapq.heappop(self.waiters)
                continue
            wait = self.wait_for(tokens, now)
            if wait is None:
                return
            if wait > 0:
                self.timer = self.loop.call_later(wait, self.pump)
                return
            heapq.heappop(self.waiters)
            self.admit(tokens)
            fut.set_result(None)

    # ---- feedback ---------------------------------------------------------------------
    def observe(self, h: RateHeaders, now: float) -> None:
        learned = _learned.setdefault(self.name, {})
        for attr, key, limit, remaining, reset in (
                ("requests", "rpm", h.limit_requests, h.remaining_requests, h.reset_requests),
                ("tokens", "tpm", h.limit_tokens, h.remaining_tokens, h.reset_tokens)):
            if limit is not None and limit > 0 and learned.get(key) != limit:
                learned[key] = limit
                self.apply(effective(self.name))
            bucket: _Bucket | None = getattr(self, attr)
            if bucket is not None and remaining is not None:
                bucket.refill(now)
                bucket.level = min(bucket.level, remaining)
                if remaining <= 0 and reset:
                    bucket.blocked_until = max(bucket.blocked_until, now + reset)

    def throttle(self, retry_after: float | None, admitted: float, now: float) -> None:
        """A 429: pause everyone until Retry-After and halve concurrency (once per
        window: 429s of requests admitted before the last cut do not cut again)."""
        pause = retry_after if retry_after is not None else 1.0
        if now + pause > self.paused_until:
            self.paused_until = now + pause
            log.info("%s is throttling (HTTP 429); pausing its requests for %.2fs",
                     self.name, pause)
        if admitted >= self.last_cut:
            self.cap = max(1.0, min(self.cap, float(self.in_flight + 1)) / 2)
            self.last_cut = now
        if self.requests is not None:
            self.requests.refill(now)
            self.requests.level = min(self.requests.level, 0.0)


_user: dict[str, dict[str, Any]] = {}  # provider -> limits set by configure_limits
_learned: dict[str, dict[str, float]] = {}  # provider -> limits stated by the server


def _provider(name: str) -> Any:
    from .. import providers

    return providers.get(name)


def effective(name: str) -> Limits:
    """User caps over server-stated limits over the provider's defaults."""
    inst = _provider(name)
    user, learned = _user.get(name, {}), _learned.get(name, {})

    window = user.get("window", 60.0)

    def pick(key: str, default: Any) -> Any:
        base = learned[key] * window / 60.0 if key in learned else default
        cap = user.get(key)
        if cap is None:  # no cap of yours (never set, or removed with None)
            return base
        return cap if base is None else min(cap, base)

    return Limits(name, pick("rpm", inst.default_rpm), pick("tpm", inst.default_tpm),
                  int(user.get("concurrency", inst.default_concurrency)), window)


class Limiter:
    """Admission control for every provider. One instance, `limiter`."""

    def __init__(self) -> None:
        self._states: dict[str, _State] = {}
        # Another admission authority (ember.backends.ray: the cluster's limiter actor)
        # that acquire / release / observe hand over to when set.
        self.delegate: Any = None

    def state(self, provider: Any) -> _State:
        loop = asyncio.get_running_loop()
        st = self._states.get(provider.name)
        if st is None or st.loop is not loop:
            st = self._states[provider.name] = _State(provider.name, loop,
                                                      effective(provider.name))
        if getattr(provider, "on_headers", None) is None:
            provider.on_headers = lambda headers, p=provider: self.observe(p, headers)
        return st

    async def acquire(self, provider: Any, tokens: float, priority: float = 0.0) -> Ticket:
        """Wait until the provider may take one more request of about ``tokens`` tokens."""
        if self.delegate is not None:
            return await self.delegate.acquire(provider, tokens, priority)
        st = self.state(provider)
        start = time.monotonic()
        if not st.waiters and st.wait_for(tokens, start) == 0.0:
            st.admit(tokens)
            return Ticket(st, tokens, start, 0.0)
        fut = st.loop.create_future()
        heapq.heappush(st.waiters, (-priority, next(st.seq), fut, tokens))
        st.pump()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # admitted, then cancelled
                self.release(Ticket(st, tokens, start, 0.0), tokens)
            else:
                fut.cancel()
                st.loop.call_soon(st.pump)
            raise
        now = time.monotonic()
        return Ticket(st, tokens, now, now - start)

    def release(self, ticket: Ticket, tokens_used: float | None = None,
                error: BaseException | None = None) -> None:
        """The request is over: return its slot, settle its token reservation, and
        learn from its failure (429 → pause the provider; headers → limits)."""
        if self.delegate is not None:
            return self.delegate.release(ticket, tokens_used, error)
        st = ticket.state
        now = time.monotonic()
        st.in_flight -= 1
        if st.tokens is not None and tokens_used is not None and tokens_used > ticket.tokens:
            # charged beyond the reservation; never refunded below it, because OpenAI
            # counts max_tokens against TPM (the headers correct the level anyway)
            st.tokens.level -= tokens_used - ticket.tokens
        if error is None:
            st.cap = min(float(st.limits.concurrency), st.cap + 1.0 / max(st.cap, 1.0))
        else:
            headers = getattr(error, "headers", None)
            if headers:
                st.observe(parse_rate_headers(headers), now)
            if getattr(error, "status", None) == 429 and type(error).__name__ == "RateLimitError":
                st.throttle(getattr(error, "retry_after", None), ticket.admitted, now)
        if st.waiters:
            st.pump()

    def observe(self, provider: Any, headers: dict[str, str]) -> None:
        """Learn limits from a successful response's headers (installed as the
        provider's ``on_headers``)."""
        if self.delegate is not None:
            return self.delegate.observe(provider, headers)
        st = self._states.get(provider.name)
        if st is not None:
            st.observe(parse_rate_headers(headers), time.monotonic())

    def paused_until(self, provider: Any) -> float:
        """Until when (time.monotonic()) a 429 paused the provider; 0.0 if it is not."""
        st = self._states.get(provider.name)
        return st.paused_until if st is not None and self.delegate is None else 0.0

    def limits(self, name: str) -> Limits:
        st = self._states.get(name)
        return st.limits if st is not None else effective(name)

    def reset(self) -> None:
        """Forget all admission state, learned and configured limits (tests)."""
        self._states.clear()
        self.delegate = None
        _learned.clear()
        _user.clear()

    def _reconfigure(self, name: str) -> None:
        st = self._states.get(name)
        if st is None:
            return
        limits = effective(name)

        def apply() -> None:
            st.apply(limits)
            st.pump()
        if st.loop.is_running():
            st.loop.call_soon_threadsafe(apply)
        else:
            st.apply(limits)


limiter = Limiter()


@hint_keywords({"requests_per_minute": "rpm", "tokens_per_minute": "tpm",
                "max_concurrency": "concurrency", "max_in_flight": "concurrency",
                "period": "window"})
def configure_limits(provider: str, *, rpm: float | None = _UNSET, tpm: float | None = _UNSET,
                     concurrency: int = _UNSET, window: float = _UNSET) -> Limits:
    """Set a provider's limits: ``ember.configure_limits("openai", rpm=500, tpm=200_000)``.

    ``rpm`` / ``tpm``: requests and tokens per ``window`` seconds (60: per minute, as
    providers state them); ``None`` removes your cap. ``concurrency``: requests in
    flight at once. Your values cap what the server's rate-limit headers say. With
    no arguments, returns the limits in force.
    """
    from .. import providers

    name = provider.split("/", 1)[0].split(":", 1)[0].lower()
    if name not in providers.known():
        raise ValueError(f"Unknown provider {provider!r}; known: {', '.join(providers.known())}.")
    conf = _user.setdefault(name, {})
    for key, value in (("rpm", rpm), ("tpm", tpm)):
        if value is not _UNSET:
            if value is not None and not value > 0:
                raise ValueError(f"{key} must be positive or None, got {value!r}")
            conf[key] = value
    if concurrency is not _UNSET:
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be an integer >= 1, got {concurrency!r}")
        conf["concurrency"] = concurrency
    if window is not _UNSET:
        if not window > 0:
            raise ValueError(f"window must be positive seconds, got {window!r}")
        conf["window"] = float(window)
    limiter._reconfigure(name)
    limits = effective(name)
    st = limiter._states.get(name)
    if st is not None and int(st.cap) < limits.concurrency:  # cut by 429s, growing back
        limits = dataclasses.replace(limits, concurrency=max(1, int(st.cap)))
    return limits
