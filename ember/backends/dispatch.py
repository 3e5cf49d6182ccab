"""The one path every model request takes to a provider.

send(request) = size check -> in-flight coalescing (identical deterministic requests
are sent once) -> [admission control -> provider.complete] under the call's deadline
-> retries under the current policy -> costs -> a `CallRecord`. ``n`` samples for a
provider without ``n`` (Anthropic) are n such requests, each on its own.

This loop is the only retry layer: the SDK clients are made with ``max_retries=0``,
and an error that leaves it is marked ``final`` so `ember.retry` does not re-run the
function for it (attempts never multiply).
"""

from __future__ import annotations

import asyncio
import re
import logging
import time
from typing import Any, Awaitable, Callable, Iterable, TypeVar

from .. import providers
from .._request import Request
from .._runtime import FATAL, Raised
from .._response import Response
from ..errors import (BadRequestError, ContextLengthError, EmberError,
                      ResponseFormatError, TimeoutError)
from ..providers.prices import context_window, cost_of
from .limits import limiter
from .policy import CallOptions, RetryPolicy, binding_regions, current_options, deadline_of
from .record import CANCELLED, RESENT, CallRecord, record

__all__ = ["send", "send_batch", "send_as_batch", "estimate_prompt_tokens", "describe_error",
           "gather_all"]

T = TypeVar("T")
log = logging.getLogger("ember")
# identical deterministic requests in flight: their owner's future and retry policy
_inflight: dict[tuple[str, int], tuple[asyncio.Future, RetryPolicy]] = {}
DEFAULT_OUTPUT_TOKENS = 256  # reserved against a TPM limit when max_tokens is not given


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


def _reservation(request: Request) -> int:
    """Tokens to reserve against a TPM bucket: prompt plus expected output, per sample
    (as providers count them); settled against the real usage afterwards."""
    out = request.param("max_tokens") or DEFAULT_OUTPUT_TOKENS
    return _check_size(request) * request.n + int(out) * request.n


def describe_error(exc: BaseException) -> str:
    """A short, secret-free description of one failed attempt."""
    text = type(exc).__name__
    status = getattr(exc, "status", None)
    if status:
        text += f" (HTTP {status})"
    after = getattr(exc, "retry_after", None)
    if after is not None:
        text += f", retry after {after:.2f}s"
    return text


def _deadline_error(request_label: str, sent: bool = True) -> TimeoutError:
    then = "the request was cancelled" if sent else "it was never sent"
    exc = TimeoutError(f"The call to {request_label} did not finish within the time limit "
                       f"set by ember.timeout; {then}.")
    exc.final = True  # type: ignore[attr-defined]  # retrying cannot beat a passed deadline
    return exc


async def _within(aw: Awaitable[T], deadline: float | None, label: str) -> T:
    """Await ``aw``, cancelling it (and so its HTTP request) at the deadline."""
    if deadline is None:
        return await aw
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        if asyncio.iscoroutine(aw):
            aw.close()
        raise _deadline_error(label)
    try:
        return await asyncio.wait_for(aw, remaining)
    except EmberError:
        raise  # includes a provider's own (client) timeout, which is retryable
    except asyncio.TimeoutError:
        raise _deadline_error(label) from None


async def _retrying(attempt: Callable[[], Awaitable[T]], policy: RetryPolicy,
                    deadline: float | None, label: str) -> tuple[T, int]:
    """Run ``attempt`` until it succeeds or the policy gives up; (result, attempts)."""
    history: list[str] = []
    while True:
        try:
            return await attempt(), len(history) + 1
        except EmberError as exc:
            history.append(describe_error(exc))
            n = len(history)
            wait = policy.delay(n, exc) if n < policy.max_attempts and policy.retryable(exc) \
                else None
            if wait is not None and deadline is not None and time.monotonic() + wait >= deadline:
                late = _deadline_error(label)
                late.notes.append(f"gave up: the next retry (in {wait:.2f}s) would pass the "
                                  f"time limit; last error: {describe_error(exc)}")
                _give_up(late, history)
                raise late from exc
            if wait is None:
                _give_up(exc, history)
                raise
            log.info("%s: %s on attempt %d/%d; retrying in %.2fs", label,
                     history[-1], n, policy.max_attempts, wait)
            await asyncio.sleep(wait)


def _give_up(exc: EmberError, history: list[str]) -> None:
    exc.final = True  # type: ignore[attr-defined]
    exc.attempts = len(history)  # type: ignore[attr-defined]
    if len(history) > 1:
        exc.notes.append(f"failed after {len(history)} attempts: " +
                         "; ".join(f"{i}) {h}" for i, h in enumerate(history, 1)))


async def _admitted(provider: Any, tokens: int, priority: float, waited: list[Any],
                    call: Callable[[], Awaitable[list]], used: Callable[[list], int]) -> list:
    """One attempt: wait for admission, make the call, settle with the limiter."""
    ticket = await limiter.acquire(provider, tokens, priority)
    waited[0] += ticket.waited
    if not waited[1]:  # the call starts (for reports and timelines) when first admitted
        waited[1] = ticket.admitted
    try:
        result = await call()
    except Exception as exc:
        limiter.release(ticket, None, exc)
        waited[2].append((ticket.admitted, time.monotonic()))
        raise
    except FATAL as exc:  # (a provider's: raised in a task, it stopped Ember's loop)
        limiter.release(ticket, None)
        raise Raised(exc) from None
    except BaseException:  # cancelled (deadline or caller): the tokens count as spent
        limiter.release(ticket, None)
        raise
    limiter.release(ticket, used(result))
    waited[2].append((ticket.admitted, time.monotonic()))
    return result


def _usage(responses: list[Response]) -> int:
    return sum(r.usage.total_tokens for r in responses)


async def send(request: Request, *, options: CallOptions | None = None,
               priority: float = 0.0, location: str | None = None) -> list[Response]:
    """Send one request (``request.n`` samples) and return its responses."""
    provider = providers.get(request.provider)
    options = options or current_options()
    if request.n > 1 and not provider.supports_n:
        # a request per sample, each admitted, retried and recorded on its own (inside
        # one attempt, one failed sample re-sent them all and the limits saw one request)
        one = request.with_n(1)
        singles = await gather_all([send(one, options=options, priority=priority,
                                          location=location) for _ in range(request.n)])
        return [r for rs in singles for r in rs]
    try:
        return await _send_coalesced(provider, request, options, priority, location)
    except TimeoutError as exc:
        if getattr(exc, "final", False) and options.timeouts:  # its time limit's: name it
            exc.regions = binding_regions(options)  # type: ignore[attr-defined]
        raise
    except ResponseFormatError as exc:
        if not getattr(exc, "fewer_choices", False):
            raise
        # an OpenAI-compatible server that ignores n (as Ollama's and llama.cpp's do)
        provider.supports_n = False
        log.warning("%s returned fewer answers than n=%d; from now on Ember sends one "
                    "request per sample to it", request.provider, request.n)
        return await send(request, options=options, priority=priority, location=location)
    except BadRequestError as exc:
        if request.n == 1 or not provider.supports_n or not _rejects_n(str(exc)):
            raise
        # an OpenAI-compatible server that refuses n > 1 (Groq's: "'n' : number must be
        # at most 1"), which jit's sample fusion may have asked for
        provider.supports_n = False
        log.warning("%s refused n=%d; from now on Ember sends one request per sample to "
                    "it", request.provider, request.n)
        return await send(request, options=options, priority=priority, location=location)


# a 400's wording when it is about the `n` parameter: 'n' quoted, or n followed by a
# constraint ("n must be 1", "n > 1 is not supported", "parameter n")
_N_REFUSED = re.compile(r"""(['"`]n['"`]|\bn\s*(must|should|can\s*not|cannot|is|>|=|only)\b"""
                        r"""|\bn\s*[>=]|parameter\s+n\b|\bn\s+parameter)""", re.IGNORECASE)


def _rejects_n(message: str) -> bool:
    return _N_REFUSED.search(message) is not None


async def gather_all(aws: Iterable[Awaitable[T]]) -> list[T]:
    """Every result, or the first error (in order) once all have settled: requests
    already sent finish and are reported (cancelling them when one failed left the
    provider billing requests the run report never showed). Cancelling the caller
    cancels them all."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return list(results)  # type: ignore[arg-type]


async def _send_coalesced(provider: Any, request: Request, options: CallOptions,
                          priority: float, location: str | None) -> list[Response]:
    deadline = deadline_of(options)
    if request.deterministic(provider.default_temperature):
        key = (request.key, request.n)
        while (held := _inflight.get(key)) is not None:
            fut, owner_policy = held
            # an identical request is on its way: share its answer, or an error any
            # caller would get; one its owner's time limit, retry policy or
            # cancellation caused is not this caller's: then it sends its own
            try:
                responses = await _within(asyncio.shield(fut), deadline, request.model_id)
            except BaseException as exc:
                if not fut.done() or not fut.cancelled() and _shared(
                        fut.exception(), owner_policy == options.retry):
                    if isinstance(exc, EmberError):
                        raise exc.where(request.model_id, location)
                    raise
                continue
            now = time.monotonic()
            record(CallRecord(request.model_id, now, now, request.n, coalesced=True,
                              cost=0.0, location=location))
            return responses
        fut = asyncio.get_running_loop().create_future()
        _inflight[key] = fut, options.retry
        try:
            responses = await _send(provider, request, options, priority, location, deadline)
        except BaseException as exc:
            if not fut.done():
                if isinstance(exc, asyncio.CancelledError):
                    fut.cancel()
                else:
                    fut.set_exception(exc)
                    fut.exception()  # mark retrieved: sharers re-raise it themselves
            raise
        else:
            fut.set_result(responses)
            return responses
        finally:
            _inflight.pop(key, None)
    return await _send(provider, request, options, priority, location, deadline)


def _shared(exc: BaseException | None, same_policy: bool = False) -> bool:
    """Is a coalesced request's error every sharer's? A rejection (400, 401, 404,
    context length, quota) is, and so is a transient failure the owner's retry policy
    gave up on when the sharer's policy is the same (it would make the same attempts:
    sharers of an outage each spent their own in turn, 10 duplicates taking 10 times
    as long). The owner's time limit is not (the sharer's own limit decides)."""
    if not isinstance(exc, EmberError) or isinstance(exc, TimeoutError):
        return False
    return not exc.transient or same_policy and getattr(exc, "final", False)


async def _send(provider: Any, request: Request, options: CallOptions, priority: float,
                location: str | None, deadline: float | None) -> list[Response]:
    try:
        tokens = _reservation(request)
    except EmberError as exc:
        raise exc.where(request.model_id, location)
    # seconds waiting for admission; when first admitted; each attempt's flight
    waited: list[Any] = [0.0, 0.0, []]
    start = time.monotonic()
    label = request.model_id

    def attempt() -> Awaitable[list[Response]]:
        if deadline is not None and limiter.paused_until(provider) >= deadline:
            # a 429 paused the provider past the time limit: fail now, not at the limit
            late = _deadline_error(label, sent=False)
            late.notes.append(f"{provider.name} is paused for another "
                              f"{limiter.paused_until(provider) - time.monotonic():.2f}s "
                              "after an HTTP 429 (its Retry-After), past the time limit.")
            return _raise(late)
        call = _admitted(provider, tokens, priority, waited,
                         lambda: provider.complete(request), _usage)
        return call if deadline is None else _within(call, deadline, label)

    try:
        responses, attempts = await _retrying(attempt, options.retry, deadline, label)
    except EmberError as exc:
        if isinstance(exc, TimeoutError) and not waited[1] and not exc.notes:
            exc.message = _deadline_error(label, sent=False).message
            exc.notes.append(f"It waited {time.monotonic() - start:.2f}s for admission to "
                             f"{provider.name} (its concurrency or rate limits, or a pause "
                             "after an HTTP 429).")
        # (an answer the provider billed but Ember could not use: its usage counts)
        billed_in, billed_out, billed = getattr(exc, "billed", (0, 0, 0.0))
        record(CallRecord(request.model_id, waited[1] or start, time.monotonic(), request.n,
                          billed_in, billed_out, billed, attempts=getattr(exc, "attempts", 1),
                          error=type(exc).__name__, location=location,
                          throttle_wait=waited[0], flights=_flights(waited)))
        raise exc.where(request.model_id, location)
    except BaseException:  # cancelled by its caller: reported if it was sent
        if waited[1]:
            record(CallRecord(request.model_id, waited[1], time.monotonic(), request.n,
                              attempts=len(waited[2]) or 1, error=CANCELLED, cost=0.0,
                              location=location, throttle_wait=waited[0],
                              flights=_flights(waited)))
        raise
    end = time.monotonic()
    usage_in = sum(r.usage.input_tokens for r in responses)
    usage_out = sum(r.usage.output_tokens for r in responses)
    cost = _fill_costs(request, responses)
    record(CallRecord(request.model_id, waited[1] or start, end, request.n, usage_in,
                      usage_out, cost, attempts=attempts, location=location,
                      throttle_wait=waited[0], flights=_flights(waited)))
    return responses


async def _raise(exc: BaseException) -> Any:
    raise exc


def _flights(waited: list[Any]) -> tuple[tuple[float, float], ...]:
    """A retried call's attempts in flight (one attempt: its start and end say it)."""
    return tuple(waited[2]) if len(waited[2]) > 1 else ()


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
    admission reservation. Returns each element's first response (or its error). A
    prompt too long for the model fails alone, unsent, as eagerly; so does one the
    provider refuses alone (an error in place of its answers, see `Provider`)."""
    options = options or current_options()
    locations = locations or [None] * len(requests)
    out: list[Any] = [None] * len(requests)
    sent: list[int] = []
    tokens = 0
    for k, req in enumerate(requests):
        try:
            tokens += _reservation(req)
        except EmberError as exc:  # too long: refused unsent (it failed every call)
            out[k] = exc.where(req.model_id, locations[k])
        else:
            sent.append(k)
    if sent:
        done = await _round_trip(provider, [requests[k] for k in sent],
                                 [locations[k] for k in sent], tokens, options, priority)
        for k, result in zip(sent, done, strict=True):
            out[k] = result
    return out


async def _round_trip(provider: Any, requests: list[Request], locations: list[str | None],
                      tokens: int, options: CallOptions, priority: float) -> list[Any]:
    deadline = deadline_of(options)
    waited: list[Any] = [0.0, 0.0, []]
    label = requests[0].model_id
    start = time.monotonic()

    def attempt() -> Awaitable[list[Any]]:
        call = _admitted(provider, tokens, priority, waited,
                         lambda: provider.complete_batch(requests),
                         lambda batches: sum(_usage(b) for b in batches if isinstance(b, list)))
        return _within(call, deadline, label)

    def failed(exc: EmberError, members: int, resent: bool = False) -> None:
        """The failed round trip: its first prompt's record carries it (and its
        attempts); the others, when they failed with it, are its batch members. One
        ``resent`` prompt by prompt is a round trip but no failure (its prompts are
        answered, or fail, on their own)."""
        for k in range(members):
            record(CallRecord(requests[k].model_id, waited[1] or start, time.monotonic(),
                              requests[k].n, attempts=getattr(exc, "attempts", 1) if k == 0
                              else 1, error=RESENT if resent else type(exc).__name__,
                              cost=0.0,
                              location=locations[k], batched=k > 0,
                              throttle_wait=waited[0] if k == 0 else 0.0,
                              flights=_flights(waited)))

    try:
        batches, attempts = await _retrying(attempt, options.retry, deadline, label)
    except EmberError as exc:
        if not isinstance(exc, BadRequestError) or len(requests) == 1:
            failed(exc, len(requests))
            return [exc.where(label, locations[0])] * len(requests)
        failed(exc, 1, resent=True)  # (a round trip all the same)
        # one bad prompt (too long, refused) must not fail the others, as it would not
        # in eager Python: each is sent on its own and gets its own answer or error
        results = await send_batch(requests, options=options, priority=priority,
                                   locations=locations)
        return [r[0] if isinstance(r, list) else r for r in results]
    end = time.monotonic()
    out: list[Any] = []
    again: list[int] = []  # prompts that failed alone and may succeed alone: retried
    for k, (req, responses, loc) in enumerate(zip(requests, batches, locations, strict=True)):
        # (the round trip's attempts and admission wait are counted once, on its first)
        tries, wait = (attempts, waited[0]) if k == 0 else (1, 0.0)
        if isinstance(responses, Exception):  # this prompt failed, alone
            transient = getattr(responses, "transient", False)
            record(CallRecord(req.model_id, waited[1] or start, end, req.n, cost=0.0,
                              attempts=tries, location=loc, batched=k > 0,
                              error=RESENT if transient else type(responses).__name__,
                              throttle_wait=wait, flights=_flights(waited)))
            if transient:
                again.append(k)
            out.append(responses.where(req.model_id, loc)
                       if isinstance(responses, EmberError) else responses)
            continue
        cost = _fill_costs(req, responses)
        usage = [sum(r.usage[i] for r in responses) for i in (0, 1)]
        record(CallRecord(req.model_id, waited[1] or start, end, req.n, usage[0], usage[1], cost,
                          attempts=tries, location=loc, batched=k > 0, throttle_wait=wait,
                          flights=_flights(waited)))
        out.append(responses[0])
    if again:  # (sent on their own, under the retry policy, as eagerly)
        results = await send_batch([requests[k] for k in again], options=options,
                                   priority=priority, locations=[locations[k] for k in again])
        for k, r in zip(again, results, strict=True):
            out[k] = r[0] if isinstance(r, list) else r
    return out
