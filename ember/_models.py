"""`models()`: one LLM call, and its async form `amodels()`.

The same function serves three contexts: inside a trace it records an ``llm`` node;
inside a jit check run it answers from the memo (or a pending response that is sent
only if something reads it); otherwise it sends the request and waits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from contextvars import ContextVar
from typing import Any

from . import providers
from ._request import Request, build_request, normalize_params, parse_model_id
from ._response import Response
from ._runtime import Raised, run_async, run_sync
from .backends.dispatch import send
from .backends.memo import MISSING, Memo
from .backends.policy import current_options, options_var, rerun_var
from .ir.graph import Lit
from .ir.trace import (Break, MarkedText, StopTrace, TracedResponse, current_trace,
                       has_traced, trace_var, user_location)
from .ir.types import ListT, ResponseT

__all__ = ["models", "amodels", "CheckRun", "NeedAnswers", "check_var", "canonical_model"]


def canonical_model(model: Any) -> tuple[str, str, Any]:
    """(provider name, model name, provider instance) for a model id."""
    provider, name = parse_model_id(model, providers.known())
    return provider, name, providers.get(provider)


def models(model: str, prompt: Any, /, **params: Any) -> Any:
    """Call a model: ``models("gpt-4o-mini", f"Analyze: {text}")`` -> `Response`.

    ``prompt`` is a string or a list of ``{"role", "content"}`` messages. Params:
    ``temperature``, ``max_tokens``, ``system``, ``seed``, ``stop``, ``top_p``,
    ``response_format`` (``"json"``, a JSON schema or a pydantic model), ``n``
    (several samples: returns a list); others pass through to the provider.
    """
    state = trace_var.get()  # current_trace(), one call less on the traced path
    if state is not None:
        return _record(state, model, prompt, params)
    check = check_var.get()
    if check is not None:
        return check.call(model, prompt, params)
    request = _request(model, prompt, params)
    responses = run_sync(send(request, location=user_location(2)))
    return responses if request.n > 1 else responses[0]


async def amodels(model: str, prompt: Any, /, **params: Any) -> Any:
    """The async form of `models`, for ``async def`` code."""
    if current_trace() is not None:
        return models(model, prompt, **params)
    check = check_var.get()
    if check is not None:
        answer = models(model, prompt, **params)
        if not check.suspendable and check.pending:  # (a check run that may not raise
            await run_async(check.fetch_pending())  # NeedAnswers: await here, not block)
        return answer
    request = _request(model, prompt, params)
    try:
        responses = await run_async(send(request, location=user_location(2)))
    except Raised as carried:  # (a provider's Ctrl-C: the caller's, as it is)
        raise carried.exc from None
    return responses if request.n > 1 else responses[0]


def _request(model: Any, prompt: Any, params: dict[str, Any]) -> Request:
    provider, name, _ = canonical_model(model)
    return build_request(provider, name, prompt, params)


# ---- inside a trace ------------------------------------------------------------------
_NO_SYSTEM = Lit(None)
_MAX_SHARED_SAMPLES = 64  # sample indexes whose params tuples a _Call keeps
_new = object.__new__


class _Call:
    """A models() call's model and params, resolved once (loops and later traces repeat
    them). Valid while its provider's instance is the registered one."""

    __slots__ = ("provider", "inst", "label", "frozen", "n", "deterministic", "_shared")

    def __init__(self, provider: str, inst: Any, label: str, frozen: tuple, n: int,
                 deterministic: bool) -> None:
        self.provider, self.inst, self.label = provider, inst, label
        self.frozen, self.n, self.deterministic = frozen, n, deterministic
        # (options, params, {sample index: params}): one attribute, set at once
        self._shared: tuple = (None, (), {})

    def params(self, options: Any, sample: int | None = None) -> tuple:
        """The llm node's params as Node keeps them (sorted by name; all hashable),
        shared by the calls made under the same options (a sampled call's with the same
        sample index too: passes key their per-params work by the tuple's id)."""
        shared = self._shared
        if options is not shared[0]:
            shared = self._shared = (options, (
                ("deterministic", self.deterministic), ("model", self.label), ("n", self.n),
                ("options", options), ("params", self.frozen)), {})
        if sample is None:
            return shared[1]
        params = shared[2].get(sample)
        if params is None:
            params = shared[1] + (("sample", sample),)
            if sample < _MAX_SHARED_SAMPLES:
                shared[2][sample] = params
        return params


# (model, params) -> _Call, for the whole process: resolving a model id and its params
# costs ~10 µs, as much as tracing a few calls. A hit is checked against the provider
# registry (register() and reset() make new instances), so it is never stale.
_calls: dict[tuple, _Call] = {}
_MAX_CALLS = 1024


def _resolve(state: Any, model: Any, params: dict[str, Any], key: Any) -> _Call:
    """Resolve a models() call (``key``: its `_calls` key, None if unhashable)."""
    provider, name, inst = canonical_model(model)
    if has_traced(params, state):
        raise StopTrace("a traced value in model parameters")
    _, frozen, n = normalize_params(params, provider)
    probe = Request(provider, name, (("user", ""),), None, frozen)
    call = _Call(provider, inst, f"{provider}/{name}" if name else provider, frozen, n,
                 probe.deterministic(inst.default_temperature))
    if key is not None:
        if len(_calls) >= _MAX_CALLS:
            _calls.clear()
        _calls[key] = call
    return call


def _record(state: Any, model: Any, prompt: Any, params: dict[str, Any]) -> Any:
    loc = user_location(3)
    if model.__class__ is not str:
        if model.__class__ is MarkedText:  # a model id from an answer
            model = model._decide("a model id from", str)
        elif not isinstance(model, str):
            model = state.need(model, "a traced model id") if hasattr(model, "_var") else model
    # params: this call's own keyword arguments (none, the common case: a model id
    # string alone is the call cache's key)
    system = params.pop("system", None) if params else None
    try:
        key: Any = model if not params and model.__class__ is str else \
            (model, tuple(params.items()), tuple(map(type, params.values())))  # (1 != 1.0)
        call = _calls.get(key)
    except TypeError:  # an unhashable param value (a JSON schema dict)
        key = call = None
    if call is None or providers._instances.get(call.provider) is not call.inst:
        call = _resolve(state, model, params, key)
    n = call.n
    if isinstance(prompt, str):
        if prompt.__class__ is str and ("\x02" in prompt and prompt.count("\x02") !=
                                         prompt.count(state._mark_open) or "\\u0002" in prompt):
            _refuse_mangled(state, prompt, loc)  # (an answer's own text, MarkedText, is not)
        p_atom = state.atomize(prompt, loc)
    else:
        p_atom = _prompt_atom(state, prompt, loc)
    if system is not None:
        _refuse_mangled(state, system, loc)
        s_atom = state.atomize(system, loc)
    else:
        s_atom = _NO_SYSTEM
    if call.deterministic:
        shared = call._shared  # call.params(options), its usual hit inlined
        node_params = shared[1] if options_var.get() is shared[0] else \
            call.params(options_var.get())
    else:
        # (no system: None, which hashes in C; a Lit's dataclass hash runs in Python)
        skey = (call.label, call.frozen, p_atom, None if s_atom is _NO_SYSTEM else s_atom)
        sample = state.sample_counts.get(skey, 0)
        state.sample_counts[skey] = sample + n
        node_params = call.params(options_var.get(), sample)
    var = state.add_trusted("llm", (p_atom, s_atom), node_params,
                            ResponseT if n == 1 else ListT(ResponseT), loc)
    if n == 1:
        answer = _new(TracedResponse)  # TracedResponse(state, var), without its __init__
        answer._state, answer._var = state, var
        return answer
    return [TracedResponse(state, state.add_trusted("getitem", (var,), (("key", i),),
                                                    ResponseT, loc))
            for i in range(n)]


def _refuse_mangled(state: Any, text: Any, loc: str | None) -> None:
    """Stop planning at a prompt holding a marker that code the trace cannot see changed
    (``json.dumps`` escapes it, ``str.upper`` or ``%.20s`` rewrites it): planned, the
    call would send the placeholder itself. The check run makes it on real values."""
    if text.__class__ is not str:
        return
    if "\\u0002" in text or text.count("\x02") != text.count(state._mark_open):
        state.breaks.append(Break(loc, "an unfinished answer's text went through code the "
                                  "trace cannot see (json.dumps, str.upper, %-formatting) "
                                  "into this prompt: the rest runs on real values", False))
        stop = StopTrace("a model answer's placeholder changed by untraced code")
        stop.misread = True  # type: ignore[attr-defined]  # (jit awaits those reads)
        raise stop


def _prompt_atom(state: Any, prompt: Any, loc: str | None) -> Any:
    if isinstance(prompt, (list, tuple)) and not isinstance(prompt, str):
        roles, atoms = [], []
        for m in prompt:
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise StopTrace("malformed messages")  # the check run raises the real error
            roles.append(_role(state, m["role"]))
            _refuse_mangled(state, m["content"], loc)
            atoms.append(state.atomize(m["content"], loc))
        if all(isinstance(a, Lit) for a in atoms):
            return Lit(tuple((r, a.value) for r, a in zip(roles, atoms, strict=True)))
        return state.add("pack", atoms, {"kind": "messages", "keys": tuple(roles)}, None, loc)
    return state.atomize(prompt, loc)


def _role(state: Any, role: Any) -> str:
    """A message's role, which the graph keeps as a constant: a traced one is read (the
    graph then depends on it), never frozen in as its placeholder."""
    if role.__class__ is MarkedText:  # an answer's text
        return role._decide("a message role from", str)
    if hasattr(role, "_var"):  # a traced argument or answer
        role = state.need(role, "a message role from a traced value")
    text = str(role)
    if "\x02" in text:  # built from a traced value by formatting (f"{x}"): plan no further
        raise StopTrace("a message role built from a traced value")
    return text


# ---- inside a check run ------------------------------------------------------------------
class CheckRun:
    """Serves `models()` from a jitted call's memo while its Python runs on real values.

    A call the memo cannot answer is pending until read. Reading one sends every call
    of the run still pending, together: the run blocks for them (``suspendable`` False:
    a sync jitted call) or raises `NeedAnswers`, and the program fetches them and runs
    the Python again (on Ember's loop, where nothing may block)."""

    def __init__(self, memo: Memo, suspendable: bool = True) -> None:
        self.memo = memo
        self.occurrences: dict[str, int] = {}
        # deterministic key -> [its reads after the first, whether its last read failed]
        self.repeats: dict[str, list] = {}
        self.first_miss: str | None = None
        self.pending: list[Response] = []
        self.hits: list[Any] = []  # ember.cache hits, recorded once the run completes
        self.suspendable = suspendable
        self.blocked_at: str | None = None  # the first call a blocking read fetched
        self.fetch_seconds = 0.0  # spent blocked on fetches
        # the task awaiting a check run in a thread of its own (vmap) was cancelled
        # (Ctrl-C): its Python may run on, but sends nothing more
        self.cancelled = False
        self.waiting: Any = None  # the blocking fetch under way (a concurrent Future)

    def hold(self, fetch: Any) -> None:
        """Note the blocking fetch under way, to cancel it with the run (`cancel`)."""
        self.waiting = fetch
        if self.cancelled:
            fetch.cancel()

    def cancel(self) -> None:
        """The run's caller is gone: its fetch under way is cancelled, later ones raise."""
        self.cancelled = True
        if self.waiting is not None:
            self.waiting.cancel()

    async def fetch_pending(self) -> list[tuple[str, int]]:
        """Send every pending request of this run together; store the answers (or
        errors) in the memo in call order. Returns their memo slots."""
        import asyncio

        fetches: list[_Fetch] = []
        for r in self.pending:
            f = r._thunk.fetch if isinstance(r._thunk, _Pick) else r._thunk
            if isinstance(f, _Fetch) and all(f is not g for g in fetches):
                fetches.append(f)
        self.pending = []
        results = await asyncio.gather(*(f.fetch() for f in fetches), return_exceptions=True)
        slots = []
        for f, result in zip(fetches, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # (a cancellation)
            one = f.request if f.request.n == 1 else f.request.with_n(1)
            answers = f.results if f.results is not None else [result] * f.request.n
            for answer in answers:  # (each sample in its slot: the memo keys by n=1)
                slots.append(self.memo.put(one, answer, f.det, f.again))
        return slots

    def call(self, model: Any, prompt: Any, params: dict[str, Any]) -> Any:
        loc = user_location(3)
        provider, name, inst = canonical_model(model)
        request = build_request(provider, name, prompt, params)
        det = request.deterministic(inst.default_temperature)
        single = request if request.n == 1 else request.with_n(1)
        out: list[Any] = []
        missed: list[int] = []  # samples of an n > 1 call the memo cannot answer
        for _ in range(request.n):
            occ = self.occurrences.get(single.key, 0)
            if not det:
                self.occurrences[single.key] = occ + 1
            value = self.memo.get(single, det, occ)
            again = None
            if det:  # read again: a repeat the graph sent, else the same answer, unless
                seen = self.repeats.get(single.key)  # it failed or ember.retry runs again
                if seen is None:
                    self.repeats[single.key] = [0, isinstance(value, BaseException)]
                else:
                    extra = self.memo.get_again(single, seen[0])
                    if extra is not MISSING:
                        value = extra
                    elif seen[1] or rerun_var.get():
                        value, again = MISSING, seen[0]  # (sent again: eager would)
                    seen[:] = [seen[0] + 1, isinstance(value, BaseException)]
            if value is MISSING:
                self.first_miss = self.first_miss or loc
                if request.n > 1:  # (fetched together below: one request, as eager)
                    missed.append(len(out))
                    out.append(None)
                    continue
                value = Response.pending(_Fetch(single, loc, det, self, again))
                self.pending.append(value)
            elif isinstance(value, BaseException):
                if hasattr(value, "where"):
                    value.where(request.model_id, loc)
                raise value.exc if isinstance(value, Raised) else value
            out.append(value)
        if missed:  # one request with n = the samples missed (k singles lost the seed's
            fetch = _Fetch(single.with_n(len(missed)), loc, det, self)  # k choices)
            for j, k in enumerate(missed):
                out[k] = Response.pending(_Pick(fetch, j))
                self.pending.append(out[k])
        return out if request.n > 1 else out[0]


class NeedAnswers(BaseException):
    """Internal: the check run read an answer the plan did not fetch. The program
    fetches every pending request of the run together and runs the check again."""


class _Fetch:
    """A deferred request: sent when a pending response is first read."""

    __slots__ = ("request", "loc", "det", "check", "result", "results", "error", "options",
                 "again")

    def __init__(self, request: Request, loc: str | None, det: bool, check: CheckRun,
                 again: int | None = None) -> None:
        self.request, self.loc, self.det, self.check = request, loc, det, check
        self.again = again  # the repeat of a failed deterministic request it answers
        self.result: Response | None = None
        self.results: list[Response] | None = None  # all n answers
        self.error: Exception | None = None
        self.options = current_options()  # the retry / timeout scope of the call site

    async def fetch(self) -> Response:
        if self.result is None and self.error is None:
            try:
                self.results = await send(self.request, options=self.options,
                                          location=self.loc)
                self.result = self.results[0]
            except Exception as exc:  # (kept: raised again wherever the answer is read)
                self.error = exc
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]

    def __call__(self) -> Response:
        from ._runtime import on_loop

        check = self.check
        if self.result is None and self.error is None:
            if check_var.get() is check and check.suspendable:
                raise NeedAnswers()
            if on_loop():  # pragma: no cover - jit runs blocking check runs off the loop
                raise RuntimeError("a pending response was read on Ember's event loop")
            check.blocked_at = check.blocked_at or check.first_miss or self.loc
            start = time.perf_counter()
            if self not in (r._thunk for r in check.pending):  # (read after its run
                check.pending.append(Response.pending(self))  # ended: returned unread)
            try:  # this one and every other pending, together
                if check.cancelled:
                    raise concurrent.futures.CancelledError()
                run_sync(check.fetch_pending(), started=check.hold)
            except concurrent.futures.CancelledError:  # (a BaseException: not swallowed by
                raise asyncio.CancelledError("the jitted call was cancelled") from None  # the
            check.fetch_seconds += time.perf_counter() - start  # user's `except Exception`)
        if self.error is not None:
            raise self.error.exc if isinstance(self.error, Raised) else self.error
        return self.result  # type: ignore[return-value]


class _Pick:
    """The j-th answer of a pending n > 1 request."""

    __slots__ = ("fetch", "j")

    def __init__(self, fetch: _Fetch, j: int) -> None:
        self.fetch, self.j = fetch, j

    def __call__(self) -> Response:
        self.fetch()  # (sent where first read, with every other pending request)
        return self.fetch.results[self.j]  # type: ignore[index]


check_var: ContextVar[CheckRun | None] = ContextVar("ember_check", default=None)
