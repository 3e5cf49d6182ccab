"""Batching fusion.

(a) **n-fusion.** k sampled ``llm`` calls (n=1, not deterministic) with the same model,
    params, options, prompt and system become one ``llm`` node with ``n=k`` plus k
    ``getitem`` nodes that define the original vars (getitem i is the i-th call in
    graph order, so results map back to the calls in the order the program made
    them). Only where the provider supports ``n`` (OpenAI-compatible chat, ``sim``);
    the prompt is then billed once. Elsewhere (Anthropic) the k calls stay apart.

(b) **batch fusion.** ``llm`` calls (n=1) to one model with the same params and
    options but different prompts become one ``llm_batch`` node plus getitems; a
    provider with a batch interface runs it as one request, others dispatch the
    members together. Grouping must never delay a member: a batch starts when its
    *last* member's inputs are ready. Two members at the same model-call depth are
    independent (an ancestor call would put one a level deeper), but they are not
    necessarily ready together: in independent chains built in a loop, step 2 of a
    fast chain would wait for step 1 of the slowest chain, turning free-running
    chains into lock-step waves. So the default mode ``batch="ready"`` groups calls
    whose inputs wait on exactly the same set of upstream model calls (same
    "frontier": then they become ready at the same moment, up to local compute).
    ``batch="level"`` groups by depth alone (more fusion, may delay), and
    ``batch=False`` turns batch fusion off. Groups are capped at ``max_batch``.

Both rewrites keep each member's out var, so users and outputs need no rewriting.
The per-member source locations go to the fused node's ``meta["locs"]``.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from typing import Any, Iterable

from .. import providers
from ..ir.graph import NO_META, Graph, Node, Var
from ..ir.types import ListT, ResponseT
from .dce import CALL_OPS, carry_meta, plural

__all__ = ["fuse", "FuseStats", "Caps", "CapsCache", "provider_name", "split_model",
           "call_levels", "toposort"]

_LIT = object()
_DETERMINISTIC = ("deterministic", True)  # in an llm node's params
_FRONTIER_CAP = 64  # larger frontiers become opaque tokens (keeps the pass linear)


@dataclass(frozen=True)
class Caps:
    supports_n: bool = False
    supports_batch: bool = False


_CAPS = {(n, b): Caps(n, b) for n in (False, True) for b in (False, True)}  # shared


def provider_name(model: str) -> str:
    """The provider of a canonical model id: up to the first "/" (the whole id if none)."""
    return model.split("/", 1)[0]


def split_model(model: str) -> tuple[str, str]:
    provider, _, name = model.partition("/")
    return provider, name


class CapsCache:
    """Provider capabilities, looked up once per pass run. A provider that cannot be
    loaded (unknown name, SDK missing) is assumed to support nothing: no fusion."""

    def __init__(self) -> None:
        self._caps: dict[str, Caps] = {}

    def __call__(self, model: str) -> Caps:
        caps = self._caps.get(model)  # (a model id seen before: no split)
        if caps is not None:
            return caps
        known = _KNOWN_CAPS.get(model)  # from an earlier run, if its provider is the same
        if known is not None and providers._instances.get(known[1]) is known[2]:
            caps = self._caps[model] = known[0]
            return caps
        name = provider_name(model)
        caps = self._caps.get(name)
        if caps is None:
            try:
                p = providers.get(name)
                caps = _CAPS[bool(p.supports_n), bool(p.supports_batch)]
            except Exception:
                caps = _CAPS[False, False]
            else:
                _remember(_KNOWN_CAPS, model, (caps, name, p))
            self._caps[name] = caps
        self._caps[model] = caps
        return caps


# model id -> (caps, provider name, the provider instance they were read from), for
# the process: valid while that instance is the registered one (register() and reset()
# make new ones). Providers that failed to load are not listed.
_KNOWN_CAPS: dict[str, tuple[Caps, str, Any]] = {}


@dataclass(frozen=True)
class FuseStats:
    sampled_groups: int = 0  # llm nodes with n=k made
    sampled_calls: int = 0  # calls folded into them
    batches: int = 0  # llm_batch nodes made
    batched_calls: int = 0  # calls folded into them
    unfused_no_n: int = 0  # sampled calls left apart: their provider lacks `n`

    def counts(self, calls: int, completions: int) -> tuple[int, int]:
        """(model-call nodes, completions) after the pass: fusion keeps every answer."""
        return (calls - self.sampled_calls + self.sampled_groups - self.batched_calls
                + self.batches, completions)

    @property
    def summary(self) -> str:
        parts = []
        if self.sampled_groups:
            parts.append(f"{plural(self.sampled_calls, 'sampled call')} -> "
                         f"{plural(self.sampled_groups, 'n-request')}")
        if self.batches:
            parts.append(f"{plural(self.batched_calls, 'call')} -> {self.batches} llm_batch"
                         + ("es" if self.batches > 1 else ""))
        if self.unfused_no_n:
            parts.append(f"{plural(self.unfused_no_n, 'sampled call')} kept apart (no n)")
        return "fuse: " + ("; ".join(parts) if parts else "nothing fused")

    def __str__(self) -> str:
        return self.summary


# id(params) -> (params, kind, deterministic, model) of an llm node: the tracer shares
# a models() line's params tuple among its calls and across traces, so these are
# worked out once per process, not per pass run. ``kind`` is a small id of (model,
# params, options), None when n > 1: n=1 calls of one kind may share a request.
# Bounded; an entry holds its tuple, so no listed id is reused, and a kind id is never
# given twice (after a clear, a kind gets a new one: less fusion, never a wrong one).
_FACTS: dict[int, tuple[tuple, int | None, bool, str]] = {}
_KINDS: dict[tuple, int] = {}
_kind_ids = itertools.count()
_MAX_FACTS = 4096


def _facts(params: tuple) -> tuple[tuple, int | None, bool, str]:
    facts = _FACTS.get(id(params))
    if facts is not None:
        return facts
    p = dict(params)
    model = p.get("model")
    kind = None
    if p.get("n", 1) == 1:
        key = (model, p.get("params", ()), p.get("options"))
        kind = _KINDS.get(key)
        if kind is None:
            kind = _remember(_KINDS, key, next(_kind_ids))
    return _remember(_FACTS, id(params), (params, kind, bool(p.get("deterministic", False)),
                                           model))


def _remember(table: dict, key: Any, value: Any) -> Any:
    """``table.setdefault(key, value)`` in one of fuse's process-wide tables, emptied
    when full (setdefault: two threads remembering one key agree on its value)."""
    if len(table) >= _MAX_FACTS:
        table.clear()
    return table.setdefault(key, value)


def call_levels(nodes: Iterable[Node]) -> dict[int, int]:
    """var id -> model-call depth: model calls on the longest path from the inputs."""
    level: dict[int, int] = {}
    get = level.get
    calls = CALL_OPS
    for node in nodes:
        d = 0
        for a in node.inputs:
            if isinstance(a, Var):
                x = get(a.id, 0)
                if x > d:
                    d = x
        if node.op in calls:
            d += 1
        level[node.out.id] = d
    return level


class _Opaque:
    """A frontier too large to track (over `_FRONTIER_CAP` calls): equal to no other."""

    __slots__ = ()


def _join(fronts: list[Any]) -> Any:
    """Union of (distinct) frontiers. A frontier is one call's token (a var id, or an n-group's
    key: a call waits on itself), a frozenset of two or more tokens, or an `_Opaque`
    one, which absorbs the rest. Tokens need no set of their own: most frontiers are a
    single call's, and a set per call was the pass's biggest allocation."""
    tokens: set[Any] = set()
    for f in fronts:
        kind = f.__class__
        if kind is frozenset:
            tokens.update(f)
        elif kind is _Opaque:
            return _Opaque()
        else:
            tokens.add(f)
    if len(tokens) == 1:  # equal tokens of different objects (an n-group's keys)
        return fronts[0]
    return frozenset(tokens) if len(tokens) <= _FRONTIER_CAP else _Opaque()


def _chunks(members: list[int], size: int) -> list[list[int]]:
    """The groups of at least two calls in ``members``, at most ``size`` each."""
    if len(members) <= size:
        return [members] if len(members) > 1 else []
    chunks = [members[i:i + size] for i in range(0, len(members), size)]
    return [c for c in chunks if len(c) > 1]


def _rewrite(nodes: list[Node], n_groups: list[list[int]], b_groups: list[list[int]],
             at: dict[int, int] | None = None) -> tuple[list[Node], set[int]]:
    """Replace each group of positions (n-groups, then batches) by its fused node and
    getitems, placed where its first member was. A batch node may then use a var
    defined after it (a later member's prompt): with ``at`` (var id -> position of
    each local op; "ready" batching, see `_pulls`) those producers are moved up in
    front of it here. Also returns the new positions of the batch nodes placed without
    that, for `toposort`."""
    first: dict[int, tuple[str, list[int]]] = {}
    gone: set[int] = set()
    for kind, groups in (("n", n_groups), ("batch", b_groups)):
        for g in groups:
            first[g[0]] = (kind, g)
            gone.update(g[1:])
    pulls: dict[int, list[int]] = {}  # a batch's first position -> producers to move up
    if at is not None:
        taken: set[int] = set()
        for g in sorted(b_groups):  # in graph order
            moved = _pulls(nodes, g, at, taken)
            if moved:
                pulls[g[0]] = moved
        gone |= taken
    out: list[Node] = []
    batches: set[int] = set()
    prev = 0
    for i in sorted(gone.union(first)):  # the untouched runs between are copied whole
        out += nodes[prev:i]
        prev = i + 1
        group = first.get(i)
        if group is not None:
            if group[0] == "batch":
                moved = pulls.get(i)
                if moved is not None:
                    out += [nodes[k] for k in moved]
                elif at is None:
                    batches.add(len(out))
            out += _fused(group[0], [nodes[j] for j in group[1]])
    out += nodes[prev:]
    return out, batches


def _pulls(nodes: list[Node], members: list[int], at: dict[int, int], taken: set[int]) -> list[int]:
    """The positions after a batch's first member of what its later members need,
    producers first, skipping those in ``taken`` (then adding them to it). With
    "ready" batching these are local ops only: members wait on the same model calls,
    so every call a member needs comes before the first member (an n-group member
    after it is defined, by its getitem, where its group starts, earlier still)."""
    start = members[0]
    order: list[int] = []
    for m in members[1:]:
        stack = [(m, iter(nodes[m].inputs))]
        while stack:  # depth first, each producer placed after its own producers
            k, ins = stack[-1]
            for a in ins:
                j = at.get(a.id, -1)  # (a literal's id is None: no entry)
                if j > start and j not in taken:
                    taken.add(j)
                    stack.append((j, iter(nodes[j].inputs)))
                    break
            else:
                stack.pop()
                if k != m:
                    order.append(k)
    return order


_KEYS = tuple((("key", i),) for i in range(128))  # getitem params, shared
_RESPONSES = ListT(ResponseT)
_new = object.__new__


# (id(member params), n) -> (member params, the n-node's params): one tuple per models()
# line and n for the process (later passes key per-params work by its id)
_N_PARAMS: dict[tuple[int, int], tuple[tuple, tuple]] = {}


def _fused(kind: str, members: list[Node]) -> list[Node]:
    head = members[0]
    out = Var(_RESPONSES)
    meta = {"locs": tuple([m.loc for m in members])}
    # params from the members' (hashable) ones, sorted by name as Node keeps them
    if kind == "n":
        hit = _N_PARAMS.get((id(head.params), len(members)))
        if hit is not None:
            params = hit[1]
        else:
            p = dict(head.params)
            p["n"] = len(members)
            params = tuple(sorted(p.items()))
            _remember(_N_PARAMS, (id(head.params), len(members)), (head.params, params))
        fused = [Node.trusted("llm", head.inputs, params, out, head.loc, meta)]
    else:
        p = dict(head.params)
        flags = tuple([_DETERMINISTIC in m.params for m in members])
        params = (("deterministic", flags), ("model", p.get("model")),
                  ("options", p.get("options")), ("params", p.get("params", ())))
        inputs: list[Any] = []
        for m in members:
            inputs += m.inputs
        fused = [Node.trusted("llm_batch", tuple(inputs), params, out, head.loc, meta)]
    ins = (out,)
    for i, m in enumerate(members):  # Node.trusted, inlined: one getitem per member
        get = _new(Node)
        get.op = "getitem"
        get.inputs = ins
        get.params = _KEYS[i] if i < 128 else (("key", i),)
        get.out = m.out
        get.loc = m.loc
        get.meta = NO_META
        fused.append(get)
    return fused


def toposort(nodes: list[Node], starts: Iterable[int] | None = None) -> list[Node]:
    """Order nodes so every var is defined before use, moving as little as possible
    (depth-first: each node is preceded by its not-yet-placed producers). ``starts``:
    the positions of the only nodes that may use a var defined after them (default:
    any node); the runs between them are copied whole. Linear."""
    end = len(nodes)
    order = list(range(end)) if starts is None else sorted(starts)
    # producers that may have to move: those after the first start
    base = order[0] + 1 if order else end
    where = {nodes[k].out.id: k for k in range(base, end)}
    early: set[int] = set()  # positions placed ahead of their turn
    pulled: list[int] = []  # the same, as a heap: the copied runs skip them
    out: list[Node] = []
    order.append(end)  # (the last run)
    prev = 0
    for i in order:
        while pulled and pulled[0] < i:  # copy nodes[prev:i], minus those placed early
            j = heapq.heappop(pulled)
            out += nodes[prev:j]
            prev = max(prev, j + 1)
        out += nodes[prev:i]
        prev = i + 1
        if i == end or i in early:
            continue
        # every position before i is placed; a producer after i goes first (and its own)
        stack = [(i, iter(nodes[i].inputs))]
        while stack:
            k, ins = stack[-1]
            for a in ins:
                j = where.get(a.id, -1) if a.__class__ is Var else -1
                if j > i and j not in early:
                    early.add(j)
                    heapq.heappush(pulled, j)
                    stack.append((j, iter(nodes[j].inputs)))
                    break
            else:
                stack.pop()
                out.append(nodes[k])
    return out


def fuse(graph: Graph, *, batch: str | bool | None = "ready", max_n: int = 128,
         max_batch: int = 64) -> tuple[Graph, FuseStats]:
    """n-fusion of identical sampled calls, then batch fusion (see the module doc)."""
    mode = None if batch in (False, None, "off") else "ready" if batch is True else batch
    if mode not in (None, "ready", "level"):
        raise ValueError(f"fuse: batch must be 'ready', 'level' or False, got {batch!r}")
    caps = CapsCache()
    nodes = graph.nodes
    ready = mode == "ready"
    calls = CALL_OPS

    # One forward sweep. (a) groups identical sampled calls (same model, params,
    # options, prompt and system) for n-fusion; (b) notes when each n=1 call becomes
    # ready: the set of upstream model calls its inputs wait on (its frontier). An
    # n-group is one request, so its members share one frontier token.
    model_of: dict[int, str] = {}  # kind -> its model
    # id(params) -> (params, kind or None when n > 1, deterministic, supports n), this
    # run's (see _facts)
    seen: dict[int, tuple[tuple, int | None, bool, bool]] = {}
    same: dict[tuple, list[int]] = {}  # sample key -> positions
    single: dict[int, int] = {}  # position -> kind id of each n=1 llm node
    when: dict[int, Any] = {}  # position -> frontier of each n=1 llm node
    # var id -> the model calls it waits on (its frontier, see _join); no entry: none
    front: dict[int, Any] = {}
    get = front.get
    at: dict[int, int] = {}  # var id -> position of each local op ("ready": see _pulls)
    for i, node in enumerate(nodes):
        op = node.op
        if ready:
            f: Any = None
            many = None
            for a in node.inputs:
                g = get(a.id)  # (a literal's id is None: no entry)
                if g is not None and g is not f:
                    if f is None:
                        f = g
                    else:
                        many = [f, g] if many is None else many + [g]
            if many is not None:
                f = _join(many)
            if op not in calls:
                if f is not None:
                    front[node.out.id] = f
                at[node.out.id] = i
                continue
        elif op != "llm":
            continue
        token: Any = node.out.id
        if op == "llm":
            info = seen.get(id(node.params))
            if info is None:
                params, kind, deterministic, model = _facts(node.params)
                if kind is not None:
                    model_of[kind] = model
                info = seen[id(params)] = (
                    params, kind, deterministic, kind is not None and caps(model).supports_n)
            _, kind, deterministic, has_n = info
            if kind is not None:
                single[i] = kind
                if ready:
                    when[i] = f
                if not deterministic:
                    a, b = node.inputs[0], node.inputs[1]  # prompt, system
                    key = (kind,
                           a.id if a.__class__ is Var else (_LIT, a.value.__class__, a.value),
                           b.id if b.__class__ is Var else (_LIT, b.value.__class__, b.value))
                    try:
                        members = same.setdefault(key, [])
                    except TypeError:  # an unhashable literal prompt
                        members = None
                    if members is not None:
                        if has_n:  # the chunk of n-group this call will be in
                            token = (key, len(members) // max_n)
                        members.append(i)
        if ready:
            front[node.out.id] = token
    n_groups: list[list[int]] = []
    no_n = 0
    for key, members in same.items():
        if len(members) < 2:
            continue
        if not caps(model_of[key[0]]).supports_n:
            no_n += len(members)
            continue
        n_groups += _chunks(members, max_n)

    # (b) calls to one model that become ready together -> one llm_batch node (an
    # n-fused call is not batched again)
    b_groups: list[list[int]] = []
    if mode is not None:
        fused = {j for g in n_groups for j in g} if n_groups else ()
        if mode == "level":
            level = call_levels(nodes)
            when = {i: level[nodes[i].out.id] - 1 for i in single}
        groups: dict[tuple, list[int]] = {}
        for i, kind in single.items():
            if i in fused:
                continue
            key = (kind, when[i])
            members = groups.get(key)
            if members is None:
                groups[key] = [i]
            else:
                members.append(i)
        for members in groups.values():
            if len(members) > 1:
                b_groups += _chunks(members, max_batch)
    if n_groups or b_groups:
        nodes, batches = _rewrite(nodes, n_groups, b_groups, at if ready else None)
        if batches:
            nodes = toposort(nodes, batches)

    stats = FuseStats(len(n_groups), sum(map(len, n_groups)), len(b_groups),
                      sum(map(len, b_groups)), no_n)
    if not (n_groups or b_groups):
        return Graph(list(graph.inputs), list(nodes), list(graph.outputs), dict(graph.meta)), stats
    return Graph(list(graph.inputs), nodes, list(graph.outputs), carry_meta(graph)), stats
