"""A static estimate of what a graph will cost, before anything runs.

Prompt tokens: literal text is counted (tiktoken for OpenAI models when it is
installed and its encoding loads -- the first use may download it, a failure falls
back for the rest of the process, ``EMBER_TIKTOKEN=0`` turns it off -- else a
calibrated ~4 characters a token, the heuristic the ``sim`` model bills by). A
``format`` node is its literal segments plus its inputs; a traced input is counted
from an example value when ``inputs=[...]`` is given (``None`` for an unknown one),
else taken as ``DEFAULT_INPUT_TOKENS``; a model output spliced into a later prompt
counts its call's output range. Each message adds ``MESSAGE_OVERHEAD`` tokens. An
``n=k`` request bills its prompt once where the provider supports ``n``.

Output tokens per completion: worst case is the call's ``max_tokens`` or the
per-provider default ``DEFAULT_OUTPUT_TOKENS`` (``FALLBACK_OUTPUT_TOKENS`` otherwise);
the low end is a typical figure, a quarter of the worst case.

Latency per request: ``sim`` uses its configured latency (a number, or the mean of
its distribution); other providers ``BASE_LATENCY + PER_TOKEN_LATENCY * worst-case
output tokens``. Pass ``latency=`` (seconds, or ``fn(node) -> seconds``) to override.
The critical path is the longest chain of request latencies through the graph.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, fields
from typing import Any, Callable, Sequence

from ..ir.graph import Graph, Node, Var
from ..providers.prices import price_for
from .dce import CALL_OPS, plural
from .fuse import CapsCache, split_model
from .tokens import _chars, _counter, count_tokens

__all__ = ["Estimate", "LazyEstimate", "estimate", "priorities", "request_seconds",
           "count_tokens", "output_tokens",
           "DEFAULT_INPUT_TOKENS", "DEFAULT_OUTPUT_TOKENS", "FALLBACK_OUTPUT_TOKENS",
           "MESSAGE_OVERHEAD", "BASE_LATENCY", "PER_TOKEN_LATENCY"]

DEFAULT_INPUT_TOKENS = 100  # a traced input without an example value
# worst-case output tokens of a call without max_tokens; sim answers stay under ~80
DEFAULT_OUTPUT_TOKENS: dict[str, int] = {"sim": 128}
FALLBACK_OUTPUT_TOKENS = 1024
MESSAGE_OVERHEAD = 4  # role and framing tokens per message
BASE_LATENCY = 0.4  # seconds per request, plus
PER_TOKEN_LATENCY = 0.01  # seconds per worst-case output token
_SMALL = (2.0, 8.0)  # a formatted number or short name (usage, cost, model, ...)
_DEFAULT_IN = (float(DEFAULT_INPUT_TOKENS), float(DEFAULT_INPUT_TOKENS))

Range = tuple[float, float]
Latency = float | Callable[[Node], float] | None


@dataclass(frozen=True)
class Estimate:
    requests: int = 0  # round trips after fusion
    calls: int = 0  # model-call nodes
    completions: int = 0  # answers produced
    input_tokens: int = 0  # worst case
    input_tokens_min: int = 0
    output_tokens_max: int = 0
    output_tokens_min: int = 0
    cost_min: float | None = 0.0  # USD; None when a model's price is unknown
    cost_max: float | None = 0.0
    critical_path_seconds: float = 0.0
    unpriced: tuple[str, ...] = ()
    # the critical path takes hosted models' requests at their longest answers
    # (BASE_LATENCY + PER_TOKEN_LATENCY * max output tokens): an upper estimate
    critical_path_worst_case: bool = False
    # models whose answers nothing caps (no max_tokens, and the provider sends none):
    # their "up to" assumes FALLBACK_OUTPUT_TOKENS per answer, which a long answer passes
    uncapped: tuple[str, ...] = ()

    @property
    def input_tokens_max(self) -> int:
        """`input_tokens` (the worst case), named like ``output_tokens_max``."""
        return self.input_tokens

    def __str__(self) -> str:
        def rng(lo: float, hi: float, fmt: str = "{:,}") -> str:
            # (the low end is typical, not a floor: short answers come in under it)
            return fmt.format(hi) if lo == hi else \
                f"~{fmt.format(lo)} typical, up to {fmt.format(hi)}"

        if self.cost_min is None or self.cost_max is None:
            cost = "unknown (no price for " + ", ".join(self.unpriced) + ")"
        else:
            cost = rng(self.cost_min, self.cost_max, "${:.6f}")
        return "\n".join([
            f"{plural(self.requests, 'request')} ({plural(self.calls, 'llm call')}, "
            f"{plural(self.completions, 'completion')})",
            f"  input tokens   {rng(self.input_tokens_min, self.input_tokens)}",
            f"  output tokens  {rng(self.output_tokens_min, self.output_tokens_max)}",
            f"  cost           {cost}",
            f"  critical path  {self.critical_path_seconds:.2f} s"
            + (" (worst case: every answer as long as allowed)"
               if self.critical_path_worst_case else ""),
            *([f"  note           no max_tokens for {', '.join(self.uncapped)}: 'up to' "
               f"assumes {FALLBACK_OUTPUT_TOKENS:,} output tokens per answer, which a longer "
               "answer passes; set max_tokens= to bound tokens and cost"]
              if self.uncapped else []),
        ])


# ---- tokens ------------------------------------------------------------------------
def output_tokens(node: Node) -> int:
    """Worst-case output tokens of one completion of a model-call node."""
    p = dict(node.params)
    return _max_tokens(p.get("params", ()), split_model(p.get("model", ""))[0])


def _max_tokens(params: tuple, provider: str) -> int:
    for k, v in params:
        if k == "max_tokens" and isinstance(v, int):
            return v
    return DEFAULT_OUTPUT_TOKENS.get(provider, FALLBACK_OUTPUT_TOKENS)


# ---- text sizes through the graph ----------------------------------------------------
def _text_range(value: Any, count: Callable[[str], float]) -> tuple[Range, Any]:
    """(token range, item ranges or None) of a concrete value."""
    if value is None:
        return (0.0, 0.0), None
    if isinstance(value, str):
        t = count(value)
        return (t, t), None
    if isinstance(value, dict):
        if "content" in value and isinstance(value["content"], str):  # a chat message
            t = count(value["content"])
            return (t, t), None
        items = {k: _text_range(v, count)[0] for k, v in value.items()}
        return _sum(items.values()), items
    if isinstance(value, (list, tuple)):
        items = [_text_range(v, count)[0] for v in value]
        return _sum(items), items
    if getattr(value, "_thunk", None) is not None:  # a pending Response: reading it sends it
        return _DEFAULT_IN, None
    text = getattr(value, "text", None)  # a Response
    t = count(text if isinstance(text, str) else str(value))
    return (t, t), None


def _sum(ranges: Any) -> Range:
    lo = hi = 0.0
    for a, b in ranges:
        lo += a
        hi += b
    return lo, hi


class _Sizes:
    """Token ranges of every var under one token counter, from one forward sweep."""

    def __init__(self, graph: Graph, count: Callable[[str], float],
                 inputs: Sequence[Any] | None) -> None:
        self.count = count
        self.rng: dict[int, Range] = {}
        self.items: dict[int, Any] = {}  # var id -> per-item ranges (list or dict)
        for i, v in enumerate(graph.inputs):
            if inputs is not None and inputs[i] is not None:  # None: value unknown
                self.rng[v.id], items = _text_range(inputs[i], count)
                if items is not None:
                    self.items[v.id] = items

    def atom(self, a: Any) -> Range:
        if isinstance(a, Var):
            return self.rng.get(a.id, _DEFAULT_IN)
        return _text_range(a.value, self.count)[0]

    def atom_items(self, a: Any) -> Any:
        if isinstance(a, Var):
            return self.items.get(a.id)
        return _text_range(a.value, self.count)[1]

    def sweep(self, nodes: list[Node], tally: _Tally | None = None) -> None:
        """Size every var; with ``tally``, also account for each model call (the
        default counter's sweep does the estimate's per-node work, so the usual graph
        is walked once)."""
        rng, items, count, atom = self.rng, self.items, self.count, self.atom
        get = rng.get
        chars = count is _chars
        answers: dict[int, tuple[Range, int]] = {}  # id(params) -> (one answer, answers)
        by_params = tally.by_params if tally is not None else {}
        for node in nodes:
            op, out = node.op, node.out.id
            if op == "format":
                params = node.params  # name-sorted: segments first
                segs = params[0][1] if params[0][0] == "segments" else node.param("segments")
                if chars:  # (most formats have two segments: no map object for those)
                    lo = hi = (len(segs[0]) + len(segs[1]) if len(segs) == 2
                               else sum(map(len, segs))) / 4
                else:
                    lo = hi = sum(map(count, segs))
                for a in node.inputs:
                    r = get(a.id, _DEFAULT_IN) if a.__class__ is Var else atom(a)
                    lo += r[0]
                    hi += r[1]
                rng[out] = (lo, hi)
            elif op == "llm" or op == "llm_batch":
                if tally is not None:
                    tally.call(node)
                known = answers.get(id(node.params))
                if known is None:
                    # the tally's call() just worked these out for this params tuple
                    acc = by_params.get(id(node.params))
                    hi, k = (float(acc.per_out), acc.n) if acc is not None else \
                        (float(output_tokens(node)), node.param("n", 1))
                    known = answers[id(node.params)] = ((max(1.0, hi // 4), hi), k)
                one, k = known
                if op == "llm" and k == 1:
                    rng[out] = one
                else:
                    if op == "llm_batch":
                        k = len(node.inputs) // 2  # completions()
                    items[out] = [one] * k
                    rng[out] = (one[0] * k, one[1] * k)
            elif op == "attr" or op == "method":
                a = node.inputs[0]
                keep = op == "method" or node.param("name") == "text"  # text in, text out
                rng[out] = (get(a.id, _DEFAULT_IN) if isinstance(a, Var) else atom(a)) \
                    if keep else _SMALL
            elif op == "getitem":
                whole, params = node.inputs[0], node.params
                key = params[0][1] if params and params[0][0] == "key" else node.param("key")
                try:
                    rng[out] = (items.get(whole.id) if isinstance(whole, Var)
                                else self.atom_items(whole))[key]
                except (TypeError, KeyError, IndexError):
                    rng[out] = (0.0, atom(whole)[1])  # some part of a bigger value
            elif op == "pack":
                ranges = [atom(a) for a in node.inputs]
                keys = node.param("keys")
                rng[out] = _sum(ranges)
                items[out] = dict(zip(keys, ranges)) if node.param("kind") == "dict" and keys \
                    else ranges
            else:  # call, or an op added later: a guess, the size of its inputs
                rng[out] = _sum(map(atom, node.inputs))

    def prompt(self, prompt: Any, system: Any, framed: bool = True) -> Range:
        """Input tokens of one request: prompt, system, and the per-message framing
        (``framed``: a server that frames each message, the system prompt as one of its
        own; sim joins them by newlines)."""
        if isinstance(prompt, Var):
            lo, hi = self.rng.get(prompt.id, _DEFAULT_IN)
            items = self.items.get(prompt.id)
        else:
            (lo, hi), items = _text_range(prompt.value, self.count)
        messages = len(items) if isinstance(items, list) and items else 1
        if isinstance(system, Var):
            slo, shi = self.rng.get(system.id, _DEFAULT_IN)
        elif system.value is None:
            slo = shi = 0.0
        else:
            slo, shi = _text_range(system.value, self.count)[0]
        if not framed:  # (sim: the texts joined by newlines, counted as one)
            joins = messages - 1 + (system.__class__ is Var or system.value is not None)
            over = MESSAGE_OVERHEAD * messages
            return (math.ceil(lo + slo + joins / 4) + over,
                    math.ceil(hi + shi + joins / 4) + over)
        if system.__class__ is Var or system.value is not None:
            messages += 1  # (a message of its own)
        over = MESSAGE_OVERHEAD * messages
        # (at most, a server counting each message apart rounds each one up)
        return math.ceil(lo + slo) + over, math.ceil(hi + shi) + over + messages - 1


# ---- the estimate ---------------------------------------------------------------------
def _sim_latency() -> float:
    sim = sys.modules.get("ember.providers.sim")  # a graph that calls sim imported it
    if sim is None:
        from ..providers import sim
    spec = sim._config.latency
    if isinstance(spec, (int, float)):
        return float(spec)
    kind, a, b = spec
    if kind == "uniform":
        return (a + b) / 2
    if kind == "lognormal":  # a = median, b = p95: the mean is median * exp(sigma^2 / 2)
        sigma = max(1e-9, math.log(b / a) / 1.645)
        return a * math.exp(sigma * sigma / 2)
    return float(a)


class _Calls:
    """The calls of one params tuple (a models() line's calls share one): what they
    share, worked out once, and their running totals."""

    __slots__ = ("model", "price", "caps", "sizes", "per_out", "n", "added", "uncapped",
                 "framed", "nodes", "batches", "answers", "requests", "in_lo", "in_hi")

    def __init__(self, model: str, price: Any, caps: Any, sizes: _Sizes, per_out: int,
                 n: int, added: tuple[int, int] = (0, 0), uncapped: bool = False,
                 framed: bool = True) -> None:
        self.model, self.price, self.caps, self.sizes = model, price, caps, sizes
        self.per_out, self.n = per_out, n
        self.added = added  # tokens the provider adds to each prompt (see _added_tokens)
        self.framed = framed  # the server frames each message (not sim)
        self.uncapped = uncapped  # per_out is FALLBACK_OUTPUT_TOKENS, which nothing enforces
        # llm nodes: n answers each, in n requests without n support; llm_batch nodes'
        # answers and requests are counted as they come
        self.nodes = self.batches = self.answers = self.requests = self.in_lo = self.in_hi = 0


class _Tally:
    """Accumulates requests and tokens call by call (per params tuple; `totals` adds
    them up and prices them)."""

    def __init__(self, graph: Graph, inputs: Sequence[Any] | None) -> None:
        self.graph, self.inputs = graph, inputs
        self.caps = CapsCache()
        self.sizes: dict[str, _Sizes] = {}  # one sweep per token counter in use
        self.models: dict[str, tuple] = {}  # model -> (provider, price, caps, sizes)
        self.by_params: dict[int, _Calls] = {}  # id(node params) -> its calls

    def call(self, node: Node) -> None:
        """Account for one model-call node."""
        acc = self.by_params.get(id(node.params))
        if acc is None:
            p = dict(node.params)
            model = p.get("model", "")
            provider, price, caps, s = self._model(model)
            params = p.get("params", ())
            acc = self.by_params[id(node.params)] = _Calls(
                model, price, caps, s, _max_tokens(params, provider), p.get("n", 1),
                _added_tokens(provider, params, s.count), _uncapped(provider, params),
                provider != "sim")
        ins = node.inputs
        if node.op == "llm":
            acc.nodes += 1
            lo, hi = acc.sizes.prompt(ins[0], ins[1], acc.framed)
            lo, hi = lo + acc.added[0], hi + acc.added[1]
        else:  # llm_batch: one answer per (prompt, system) pair
            k = len(ins) // 2
            acc.batches += 1
            acc.answers += k
            acc.requests += 1 if acc.caps.supports_batch else k
            lo = hi = 0
            prompt = acc.sizes.prompt
            for j in range(0, len(ins), 2):
                a, b = prompt(ins[j], ins[j + 1], acc.framed)
                lo += a + acc.added[0]
                hi += b + acc.added[1]
        acc.in_lo += lo
        acc.in_hi += hi

    def totals(self, critical: float, latency_given: bool = False) -> Estimate:
        """The estimate: every params tuple's calls added up."""
        requests = calls = answers = in_lo = in_hi = out_lo = out_hi = 0
        cost_lo: float | None = 0.0
        cost_hi: float | None = 0.0
        unpriced: list[str] = []
        uncapped: list[str] = []
        for acc in self.by_params.values():
            # without n support, an llm node's n answers are n full requests
            apart = acc.n if acc.n > 1 and not acc.caps.supports_n else 1
            k = acc.nodes * acc.n + acc.answers
            requests += acc.nodes * apart + acc.requests
            i_lo, i_hi = acc.in_lo * apart, acc.in_hi * apart
            o_lo, o_hi = max(1, acc.per_out // 4) * k, acc.per_out * k
            calls += acc.nodes + acc.batches
            answers += k
            in_lo += i_lo
            in_hi += i_hi
            out_lo += o_lo
            out_hi += o_hi
            if acc.uncapped and acc.model not in uncapped:
                uncapped.append(acc.model)
            price = acc.price
            if price is None:
                cost_lo = cost_hi = None
                if acc.model not in unpriced:
                    unpriced.append(acc.model)
            elif cost_lo is not None and cost_hi is not None:
                cost_lo += (i_lo * price.input + o_lo * price.output) / 1e6
                cost_hi += (i_hi * price.input + o_hi * price.output) / 1e6
        hosted = any(info[0] != "sim" for info in self.models.values())
        return Estimate(requests, calls, answers, int(in_hi), int(in_lo), int(out_hi),
                        int(out_lo), cost_lo, cost_hi, critical, tuple(unpriced),
                        hosted and not latency_given, tuple(uncapped))

    def _model(self, model: str) -> tuple:
        """(provider, price, caps, sizes) of a model, found once per estimate."""
        info = self.models.get(model)
        if info is None:
            provider, name = split_model(model)
            kind, count = _counter(model)
            s = self.sizes.get(kind)
            if s is None:  # another counter (tiktoken): a sizes-only sweep of its own
                s = self.sizes[kind] = _Sizes(self.graph, count, self.inputs)
                s.sweep(self.graph.nodes)
            info = self.models[model] = (provider, price_for(provider, name), self.caps(model), s)
        return info


def _instance(provider: str) -> Any:
    """The provider's instance, or None when it cannot load (its calls are not made)."""
    from .. import providers

    try:
        return providers.get(provider)
    except Exception:
        return None


def _uncapped(provider: str, params: tuple) -> bool:
    """Are these calls' answers uncapped? No max_tokens, and the provider neither sends
    a default of its own (Anthropic: 1,024) nor has a known answer length (sim)."""
    if provider in DEFAULT_OUTPUT_TOKENS or any(k == "max_tokens" for k, _ in params):
        return False
    inst = _instance(provider)
    return inst is not None and getattr(inst, "default_max_tokens", None) is None


def _added_tokens(provider: str, params: tuple, count: Callable[[str], float]
                  ) -> tuple[int, int]:
    """(least, most) tokens a provider adds to every prompt of these params: Anthropic
    has no ``response_format``, so Ember states the format (and its schema) in the
    system prompt, billed as input; OpenAI's JSON mode gets a line only where the
    messages never say "json" (``added_only_if_unsaid``)."""
    fmt = next((v for k, v in params if k == "response_format"), None)
    inst = _instance(provider) if fmt is not None else None
    text = inst.added_instruction(fmt) if inst is not None else None
    most = math.ceil(count(text)) + MESSAGE_OVERHEAD if text else 0  # (its framing)
    return (0 if getattr(inst, "added_only_if_unsaid", False) else most), most


def request_seconds(latency: Latency = None) -> Callable[[Node], float]:
    """``seconds(node)``: the estimated latency of one request of a model-call node.
    Worked out once per params tuple (a callable ``latency=`` is asked per node)."""
    if callable(latency):
        return lambda node: float(latency(node))
    if latency is not None:
        fixed = float(latency)
        return lambda node: fixed
    known: dict[int, tuple[tuple, float]] = {}  # id(params) -> (params, seconds)
    sim: list[float] = []  # sim's configured latency, read once

    def seconds(node: Node) -> float:
        hit = known.get(id(node.params))
        if hit is not None:
            return hit[1]
        provider = node.param("model", "").partition("/")[0]  # (its provider)
        if provider == "sim":
            if not sim:
                sim.append(_sim_latency())
            s = sim[0]
        else:
            s = BASE_LATENCY + PER_TOKEN_LATENCY * _max_tokens(node.param("params", ()), provider)
        known[id(node.params)] = (node.params, s)  # (held: its id stays unique)
        return s

    return seconds


def priorities(nodes: Sequence[Node], latency: Latency = None) -> tuple[dict[int, float], float]:
    """Each model call's priority by output var id: the longest estimated latency
    (seconds) from its start to an output, its own included. And the critical path:
    the longest chain of request latencies, which is the highest priority. One
    backward sweep (users come after producers)."""
    seconds = request_seconds(latency)
    priority: dict[int, float] = {}
    tail: dict[int, float] = {}  # var id -> longest latency from its users to an output
    get, calls = tail.get, CALL_OPS
    critical = 0.0
    for node in reversed(nodes):
        out = node.out.id
        p = get(out, 0.0)
        if node.op in calls:
            p += seconds(node)
            priority[out] = p
            if p > critical:
                critical = p
        if p:
            for a in node.inputs:
                if get(a.id, -1.0) < p:  # (a literal's id is None: a harmless entry)
                    tail[a.id] = p
    return priority, critical


def _tally(graph: Graph, inputs: Sequence[Any] | None, critical: float,
           latency_given: bool = False) -> Estimate:
    """Requests, tokens and cost of a graph, with its critical path already known (from
    a ``latency=`` the caller gave, or the default latency model)."""
    t = _Tally(graph, inputs)
    t.sizes["chars"] = sizes = _Sizes(graph, _chars, inputs)
    sizes.sweep(graph.nodes, t)
    return t.totals(critical, latency_given)


def _check_inputs(graph: Graph, inputs: Sequence[Any] | None) -> None:
    if inputs is not None and len(inputs) != len(graph.inputs):
        raise ValueError(f"estimate: the graph has {len(graph.inputs)} inputs, "
                         f"got {len(inputs)} example values")


def estimate(graph: Graph, *, inputs: Sequence[Any] | None = None,
             latency: Latency = None) -> Estimate:
    """A static estimate of requests, tokens, cost and critical-path latency."""
    _check_inputs(graph, inputs)
    return _tally(graph, inputs, priorities(graph.nodes, latency)[1], latency is not None)


_FIELDS = tuple(f.name for f in fields(Estimate))


class LazyEstimate(Estimate):
    """The `Estimate` of a graph, worked out when a field other than the critical path
    is first read. `schedule` attaches one: it knows the critical path from its
    priorities already, and jit reads nothing else (``inspect`` and the run report
    do). Equal to, hashes, pickles and ``dataclasses.replace``s as the `Estimate` it
    stands for."""

    def __new__(cls, *args: Any, **fields: Any) -> Any:
        if fields:  # dataclasses.replace(): a plain Estimate with the changes
            return Estimate(**fields)
        return super().__new__(cls)

    def __init__(self, graph: Graph, inputs: Sequence[Any] | None, critical: float,
                 latency_given: bool = False) -> None:
        _check_inputs(graph, inputs)
        object.__setattr__(self, "_source", (graph, None if inputs is None else tuple(inputs),
                                             latency_given))
        object.__setattr__(self, "_critical", critical)
        object.__setattr__(self, "_value", None)

    def resolve(self) -> Estimate:
        """The plain `Estimate` (computed on the first call)."""
        value = self._value
        if value is None:  # (two threads may both compute it: equal values)
            graph, inputs, latency_given = self._source
            value = _tally(graph, inputs, self._critical, latency_given)
            object.__setattr__(self, "_value", value)
            object.__setattr__(self, "_source", None)
        return value

    @property
    def critical_path_seconds(self) -> float:  # type: ignore[override]
        return self._critical

    def __eq__(self, other: object) -> bool:
        return self.resolve() == other if isinstance(other, Estimate) else NotImplemented

    def __hash__(self) -> int:
        return hash(self.resolve())

    def __repr__(self) -> str:
        return repr(self.resolve())

    def __reduce__(self) -> tuple:
        value = self.resolve()
        return Estimate, tuple(getattr(value, name) for name in _FIELDS)


def _read(name: str) -> property:
    return property(lambda self: getattr(self.resolve(), name), doc=f"`Estimate.{name}`")


for _name in _FIELDS:
    if _name != "critical_path_seconds":
        setattr(LazyEstimate, _name, _read(_name))
del _name
