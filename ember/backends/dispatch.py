"""The one path every model request takes to a provider.

send(request) = size check -> in-flight coalescing (identical deterministic requests
are sent once) -> admission control -> provider.complete -> retries under the
current policy -> costs -> a `CallRecord`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .. import providers
from .._request import Request
from .._response import Response
from ..errors import ContextLengthError, EmberError, ProviderError, TimeoutError
from ..providers.prices import context_window, cost_of
from .limits import limiter
from .policy import CallOptions, current_options
from .record import CallRecord, record

__all__ = ["send", "send_batch", "estimate_prompt_tokens"]

_inflight: dict[tuple[str, int], asyncio.Future] = {}


def estimate_prompt_tokens(request: Request) -> int:
    return len(request.prompt_text()) // 4 + 4 * len(request.messages)


def _check_size(request: Request) -> int:
    tokens = estimate_prompt_tokens(request)
    window = context_window(request.provider, request.model)
    if window is not None and tokens > window:
        raise ContextLengthError(
            f"The prompt is about {tokens:,} tokens but {request.model_id} accepts "
            f"{window:,}. Shorten it (e.g. summarize or chunk the input with ember.vmap) "
            "or choose a model with a larger context window.",
            provider=request.provider, model=request.model_id)
    return tokens


async def send(request: Request, *, options: CallOptions | None = None,
               priority: float = 0.0, location: str | None = None) -> list[Response]:
    """Send one request (``request.n`` samples) and return its responses."""
    provider = providers.get(request.provider)
    options = options or current_options()
    if request.deterministic(provider.default_temperature):
        key = (request.key, request.n)
        fut = _inflight.get(key)
        if fut is not None:  # an identical request is on its way: share its answer
            responses = await asyncio.shield(fut)
            now = time.monotonic()
            record(CallRecord(request.model_id, now, now, request.n, coalesced=True,
                              cost=0.0, location=location))
            return responses
        fut = asyncio.get_running_loop().create_future()
        _inflight[key] = fut
        try:
            responses = await _send(provider, request, options, priority, location)
        except BaseException as exc:
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: sharers re-raise it themselves
            raise
        else:
            fut.set_result(responses)
            return responses
        finally:
            _inflight.pop(key, None)
    return await _send(provider, request, options, priority, location)


async def _send(provider: Any, request: Request, options: CallOptions, priority: float,
                location: str | None) -> list[Response]:
    tokens = _check_size(request)
    policy = options.retry
    attempt = 0
    start = time.monotonic()
    while True:
        attempt += 1
        try:
            responses = await _attempt(provider, request, options, tokens, priority)
        except EmberError as exc:
            if isinstance(exc, ProviderError) and exc.status == 429:
                limiter.throttled(provider, exc.retry_after)
            if attempt >= policy.max_attempts or not policy.retryable(exc):
                if attempt > 1:
                    exc.notes.append(f"failed after {attempt} attempts")
                record(CallRecord(request.model_id, start, time.monotonic(), request.n,
                                  attempts=attempt, error=type(exc).__name__, cost=0.0,
                                  location=location))
                raise exc.where(request.model_id, location)
            wait = policy.delay(attempt, exc)
            if options.deadline is not None and time.monotonic() + wait > options.deadline:
                raise exc.where(request.model_id, location)
            await asyncio.sleep(wait)
            continue
        end = time.monotonic()
        usage_in = sum(r.usage.input_tokens for r in responses)
        usage_out = sum(r.usage.output_tokens for r in responses)
        cost = _fill_costs(request, responses)
        record(CallRecord(request.model_id, start, end, request.n, usage_in, usage_out, cost,
                          attempts=attempt, location=location))
        return responses


async def _attempt(provider: Any, request: Request, options: CallOptions, tokens: int,
                   priority: float) -> list[Response]:
    await limiter.acquire(provider, tokens * request.n, priority)
    used = 0
    try:
        coro = provider.complete(request)
        if options.deadline is not None:
            remaining = options.deadline - time.monotonic()
            try:
                responses = await asyncio.wait_for(coro, max(remaining, 0.0))
            except asyncio.TimeoutError:
                raise TimeoutError(
                    f"The call to {request.model_id} did not finish within its time limit.")
        else:
            responses = await coro
        used = sum(r.usage.total_tokens for r in responses)
        return responses
    finally:
        limiter.release(provider, used)


def _fill_costs(request: Request, responses: list[Response]) -> float | None:
    total: float | None = 0.0
    for r in responses:
        if r._cost is None and r._usage.total_tokens:
            r._cost = cost_of(request.provider, request.model, *r._usage)
        total = None if total is None or r._cost is None else total + r._cost
    return total


async def send_batch(requests: list[Request], *, options: CallOptions | None = None,
                     priority: float = 0.0, locations: list[str | None] | None = None
                     ) -> list[list[Response] | BaseException]:
    """Requests to one provider dispatched together: one request where the provider has
    a batch interface, else concurrently. Failures are returned in place."""
    locations = locations or [None] * len(requests)
    coros = [send(r, options=options, priority=priority, location=loc)
             for r, loc in zip(requests, locations, strict=True)]
    return list(await asyncio.gather(*coros, return_exceptions=True))


async def send_as_batch(provider: Any, requests: list[Request], *,
                        options: CallOptions | None = None, priority: float = 0.0,
                        locations: list[str | None] | None = None) -> list[Any]:
    """One round trip for many prompts, on a provider with a batch interface, under one
    admission reservation. Returns each element's first response (or its error)."""
    options = options or current_options()
    policy = options.retry
    tokens = sum(_check_size(r) for r in requests)
    start = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        await limiter.acquire(provider, tokens, priority)
        try:
            batches = await provider.complete_batch(requests)
        except EmberError as exc:
            if attempt >= policy.max_attempts or not policy.retryable(exc):
                loc = locations[0] if locations else None
                return [exc.where(requests[0].model_id, loc)] * len(requests)
            await asyncio.sleep(policy.delay(attempt, exc))
            continue
        finally:
            limiter.release(provider)
        end = time.monotonic()
        out = []
        for k, (req, responses, loc) in enumerate(
                zip(requests, batches, locations or [None] * len(requests), strict=True)):
            cost = _fill_costs(req, responses)
            usage = [sum(r.usage[i] for r in responses) for i in (0, 1)]
            record(CallRecord(req.model_id, start, end, req.n, usage[0], usage[1], cost,
                              attempts=attempt, location=loc, batched=k > 0))
            out.append(responses[0])
        return out
