"""Admission control: concurrency, priorities, RPM/TPM buckets, rate-limit headers,
and a 429 that slows the whole provider down."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import datetime, timedelta, timezone

import pytest
from faults import MODEL, Fault, RemoteFaultServer, fault_server, retry_gaps  # noqa: F401

import ember
from ember import providers
from ember._reliability import retry
from ember._request import build_request
from ember._runtime import run_sync
from ember.backends.dispatch import send
from ember.backends.headers import parse_duration, parse_rate_headers, parse_retry_after
from ember.backends.limits import configure_limits, limiter


def call(prompt: str, **params):
    return ember.models(MODEL, prompt, **params)


def arrivals(server) -> list[float]:
    return [r.arrived for r in server.requests]


# ---- headers -------------------------------------------------------------------------------
def test_parse_openai_headers():
    h = parse_rate_headers({"X-RateLimit-Limit-Requests": "500",
                            "x-ratelimit-remaining-requests": "499",
                            "x-ratelimit-reset-requests": "120ms",
                            "x-ratelimit-limit-tokens": "30000",
                            "x-ratelimit-remaining-tokens": "29000",
                            "x-ratelimit-reset-tokens": "6m0s"})
    assert (h.limit_requests, h.remaining_requests, h.reset_requests) == (500, 499, 0.12)
    assert (h.limit_tokens, h.remaining_tokens, h.reset_tokens) == (30000, 29000, 360)


def test_parse_anthropic_headers():
    soon = (datetime.now(timezone.utc) + timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    h = parse_rate_headers({"anthropic-ratelimit-requests-limit": "50",
                            "anthropic-ratelimit-requests-remaining": "0",
                            "anthropic-ratelimit-requests-reset": soon,
                            "anthropic-ratelimit-input-tokens-limit": "40000",
                            "anthropic-ratelimit-input-tokens-remaining": "100",
                            "anthropic-ratelimit-input-tokens-reset": soon})
    assert (h.limit_requests, h.remaining_requests) == (50, 0)
    assert 28 < h.reset_requests <= 30
    assert (h.limit_tokens, h.remaining_tokens) == (40000, 100)


def test_parse_durations_and_retry_after():
    assert parse_duration("1h2m3.5s") == 3723.5
    assert parse_duration("20ms") == 0.02 and parse_duration("0.5") == 0.5
    assert parse_duration("soon") is None
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "3"}) == 0.25
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    date = (datetime.now(timezone.utc) + timedelta(seconds=10)).strftime(
        "%a, %d %b %Y %H:%M:%S GMT")
    assert 8 < parse_retry_after({"retry-after": date}) <= 10
    assert parse_retry_after({}) is None


# ---- configuration -------------------------------------------------------------------------
def test_configure_limits_caps_and_validates(fault_server):
    limits = configure_limits("openai", rpm=100, tpm=5000, concurrency=3)
    assert (limits.rpm, limits.tpm, limits.concurrency) == (100, 5000, 3)
    assert configure_limits("openai/gpt-4o").rpm == 100  # a model id names its provider
    assert configure_limits("openai", rpm=None).rpm is None
    for bad in ({"rpm": 0}, {"concurrency": 0}, {"window": -1}):
        with pytest.raises(ValueError):
            configure_limits("openai", **bad)
    with pytest.raises(ValueError):
        configure_limits("nosuch", rpm=1)


def test_concurrency_limit(fault_server):
    configure_limits("openai", concurrency=2)
    fault_server.latency = 0.1
    out = ember.vmap(lambda i: call(f"c{i}"))(list(range(6)))
    assert len(out) == 6 and fault_server.max_in_flight == 2


def test_priorities_decide_who_goes_first(fault_server):
    configure_limits("openai", concurrency=1)
    fault_server.latency = 0.1
    req = lambda p: build_request("openai", "gpt-4o-mini", p, {})  # noqa: E731

    async def main():
        first = asyncio.ensure_future(send(req("blocker")))
        await asyncio.sleep(0.03)
        rest = [asyncio.ensure_future(send(req(f"p{p}"), priority=p)) for p in (1, 5, 3)]
        await asyncio.sleep(0)
        await asyncio.gather(first, *rest)

    run_sync(main())
    order = [r.body["messages"][-1]["content"] for r in fault_server.requests]
    assert order == ["blocker", "p5", "p3", "p1"]


def test_request_bucket_paces_calls(fault_server):
    fault_server.set_limit(5, 0.5, mode="bucket")  # 5 per 0.5 s, like 600 RPM
    configure_limits("openai", rpm=5, window=0.5)
    out = ember.vmap(lambda i: call(f"r{i}"))(list(range(12)))
    assert len(out) == 12
    assert [r.status for r in fault_server.requests].count(429) == 0
    times = sorted(arrivals(fault_server))
    assert times[-1] - times[0] >= (12 - 5) * 0.1 - 0.02  # burst of 5, then 10 a second


def test_token_bucket_paces_by_tokens(fault_server):
    configure_limits("openai", tpm=1000, window=0.5)  # ~1000 tokens per 0.5 s
    out = ember.vmap(lambda i: call(f"t{i}", max_tokens=400))(list(range(5)))
    assert len(out) == 5
    times = sorted(arrivals(fault_server))
    # 2 fit at once (~410 tokens reserved each); the others wait for refills
    assert times[-1] - times[0] >= 0.4


def test_headers_teach_limits_and_an_empty_bucket_waits(fault_server):
    fault_server.headers = {"x-ratelimit-limit-requests": "120",
                            "x-ratelimit-remaining-requests": "0",
                            "x-ratelimit-reset-requests": "400ms",
                            "x-ratelimit-limit-tokens": "90000",
                            "x-ratelimit-remaining-tokens": "89000"}
    call("one")
    assert limiter.limits("openai").rpm == 120 and limiter.limits("openai").tpm == 90000
    call("two")
    first, second = arrivals(fault_server)
    assert second - first >= 0.4  # the server said: none left for 400 ms
    assert configure_limits("openai", rpm=60).rpm == 60  # a user cap below the server's
    # removing your cap leaves the server's in force (it removed the server's too)
    assert configure_limits("openai", rpm=None).rpm == 120
    deadline = time.monotonic() + 1.0  # (applied on Ember's loop, soon)
    while limiter.limits("openai").rpm != 120 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert limiter.limits("openai").rpm == 120


def test_a_429_pauses_the_whole_provider(fault_server):
    fault_server.hook = lambda rec: Fault("rate_limit", retry_after=None, retry_after_ms=400) \
        if len(fault_server.requests) == 1 else None

    async def main():
        first = asyncio.ensure_future(send(build_request("openai", "gpt-4o-mini", "A", {})))
        await asyncio.sleep(0.1)  # A has been throttled by now
        others = [send(build_request("openai", "gpt-4o-mini", f"B{i}", {})) for i in range(4)]
        await asyncio.gather(first, *others)

    run_sync(main())
    recs = fault_server.requests
    throttled_at = recs[0].arrived
    assert recs[0].status == 429
    assert all(r.arrived >= throttled_at + 0.4 for r in recs[1:])  # nobody went early
    assert len(recs) == 6
    # the limits in force show the concurrency the 429 cut (they showed the setting)
    assert configure_limits("openai").concurrency < limiter.limits("openai").concurrency


def run_90(fault_server, mode: str) -> tuple[list, float]:
    """90 calls against "60 per minute", scaled to 60 per 3 s so the suite stays fast
    (benchmarks/bench_reliability.py runs the full-scale minute). The limited server
    runs in its own process so its clock is not the client's GIL."""
    server = RemoteFaultServer(60, 3.0, mode)
    try:
        os.environ["OPENAI_BASE_URL"] = server.url
        providers.reset()
        configure_limits("openai", rpm=60, window=3.0)
        safe = retry(lambda i: call(f"n{i}"), max_attempts=5, initial_delay=0.05)
        start = time.monotonic()
        results = ember.vmap(safe)(list(range(90)))
        took = time.monotonic() - start
    finally:
        server.stop()
    assert [r.text for r in results] == [f"echo: n{i}" for i in range(90)]
    codes = [r.status for r in server.requests]
    assert codes.count(200) == 90
    assert all(gap >= asked for asked, gap in retry_gaps(server))  # never early
    refused: dict[bytes, int] = {}
    for rec in server.requests:
        if rec.status == 429:
            refused[rec.raw] = refused.get(rec.raw, 0) + 1
    # no storm: nobody is refused three times, and at most a few twice. (Scaled 20x,
    # the lag between admitting a request and its bytes reaching the server is no
    # longer small against the window: on Python 3.11, aiohttp writes bodies from a
    # task of their own, so a request released just as a slot frees can arrive a few
    # ms before the server's oldest entry expires. At full scale none is refused twice.)
    assert max(refused.values(), default=0) <= 2, refused
    assert sum(n == 2 for n in refused.values()) <= 3, refused
    return codes, took


# At full scale (a real minute, benchmarks/bench_reliability.py) the token bucket sees
# no 429 at all. Scaled 20x, the gap between admitting a request and its bytes reaching
# the server (SDK work, several ms a call, more under coverage) is no longer small
# against the window, so a few calls of the first burst can land early; each is
# refused once, pauses the provider until Retry-After, and then succeeds.
def test_acceptance_90_calls_against_a_60_rpm_token_bucket(fault_server):
    codes, took = run_90(fault_server, "bucket")
    assert codes.count(429) <= 15, codes.count(429)
    assert 3.0 * 30 / 60 - 0.1 <= took < 6.0  # 60 at once, then one per 50 ms


def test_acceptance_90_calls_against_a_60_rpm_sliding_window(fault_server):
    # the strictest reading of "60 a minute": a token bucket sends a little early after
    # its first burst; each 429 pauses the provider until Retry-After, so no storm
    codes, took = run_90(fault_server, "window")
    assert codes.count(429) <= 30, codes.count(429)
    assert took < 9.0


def test_limiter_forgets_cancelled_waiters(fault_server):
    configure_limits("openai", concurrency=1)
    fault_server.latency = 0.2

    async def main():
        a = asyncio.ensure_future(send(build_request("openai", "gpt-4o-mini", "a", {})))
        await asyncio.sleep(0.02)
        b = asyncio.ensure_future(send(build_request("openai", "gpt-4o-mini", "b", {})))
        await asyncio.sleep(0.02)
        b.cancel()
        await a
        await send(build_request("openai", "gpt-4o-mini", "c", {}))

    run_sync(main())
    state = limiter._states["openai"]
    assert state.in_flight == 0 and not [w for w in state.waiters if not w[2].done()]
    assert [r.body["messages"][-1]["content"] for r in fault_server.requests] == ["a", "c"]


def test_sim_limits_come_from_configuration():
    limiter.reset()
    try:
        configure_limits("sim", concurrency=3)
        ember.vmap(lambda i: ember.models("sim", f"s{i}"))(list(range(9)))
        from ember.providers import sim

        assert sim.stats().max_in_flight <= 3
    finally:
        limiter.reset()
        providers.reset()
