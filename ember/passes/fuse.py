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

from dataclasses import dataclass
from typing import Any, Container, Iterable

from .. import providers
from ..ir.graph import Graph, Node, Var
from ..ir.types import ListT, ResponseT
from .dce import CALL_OPS, Interner, carry_meta, plural

__all__ = ["fuse", "FuseStats", "Caps", "CapsCache", "provider_name", "split_model",
           "call_levels", "toposort"]

_LIT = object()
_EMPTY: frozenset = frozenset()
_FRONTIER_CAP = 64  # larger frontiers become opaque tokens (keeps the pass linear)


@dataclass(frozen=True)
class Caps:
    supports_n: bool = False
    supports_batch: bool = False


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
        name = provider_name(model)
        caps = self._caps.get(name)
        if caps is None:
            try:
                p = providers.get(name)
                caps = Caps(bool(p.supports_n), bool(p.supports_batch))
            except Exception:
                caps = Caps()
            self._caps[name] = caps
        return caps


@dataclass(frozen=True)
class FuseStats:
    sampled_groups: int = 0  # llm nodes with n=k made
    sampled_calls: int = 0  # calls folded into them
    batches: int = 0  # llm_batch nodes made
    batched_calls: int = 0  # calls folded into them
    unfused_no_n: int = 0  # sampled calls left apart: their provider lacks `n`

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


def _join(fronts: list[Any]) -> Any:
    """Union of frontiers; a frontier over the cap becomes a fresh opaque token."""
    live = [f for f in fronts if f]
    if not live:
        return _EMPTY
    first = live[0]
    if all(f is first for f in live):
        return first
    if any(not isinstance(f, frozenset) for f in live):
        return object()
    u = first.union(*live[1:])
    return u if len(u) <= _FRONTIER_CAP else object()


def _ready_keys(nodes: list[Node], mode: str, single: dict[int, Any], rep: dict[int, int],
                skip: set[int]) -> dict[int, Any]:
    """For each n=1 llm node (positions in ``single``) outside ``skip``: when its inputs
    become ready. ``rep`` maps each n-fused call to its group's first call."""
    keys: dict[int, Any] = {}
    if mode == "level":
        level = call_levels(nodes)
        for i, node in enumerate(nodes):
            if i in single and i not in skip:
                keys[i] = level[node.out.id] - 1
        return keys
    calls = CALL_OPS
    front: dict[int, Any] = {}  # var id -> the model calls it waits on (frontier)
    own_of: dict[int, frozenset] = {}
    get = front.get
    for i, node in enumerate(nodes):
        f: Any = _EMPTY
        many = None
        for a in node.inputs:
            if isinstance(a, Var):
                g = get(a.id, _EMPTY)
                if g and g is not f:
                    if f:
                        many = [f, g] if many is None else many + [g]
                    else:
                        f = g
        if many is not None:
            f = _join(many)
        if node.op in calls:
            if i in single and i not in skip:
                keys[i] = f
            r = rep.get(node.out.id, node.out.id)
            own = own_of.get(r)
            if own is None:
                own = own_of[r] = frozenset((r,))
            front[node.out.id] = own
        else:
            front[node.out.id] = f
    return keys


def _atom_key(a: Any) -> Any:
    return a.id if isinstance(a, Var) else (_LIT, a.value.__class__, a.value)


def _chunks(members: list[int], size: int) -> list[list[int]]:
    return [members[i:i + size] for i in range(0, len(members), size)]


def _rewrite(nodes: list[Node], groups: list[tuple[str, list[int]]]) -> tuple[list[Node], set[int]]:
    """Replace each group of positions by its fused node and getitems, placed where
    its first member was. Also returns the new positions of the batch nodes: the only
    nodes that may now use a var defined after them (a later member's prompt)."""
    first: dict[int, tuple[str, list[int]]] = {}
    gone: set[int] = set()
    for kind, g in groups:
        first[g[0]] = (kind, g)
        gone.update(g[1:])
    out: list[Node] = []
    batches: set[int] = set()
    for i, node in enumerate(nodes):
        if i in gone:
            continue
        group = first.get(i)
        if group is None:
            out.append(node)
        else:
            if group[0] == "batch":
                batches.add(len(out))
            out.extend(_fused(group[0], [nodes[j] for j in group[1]]))
    return out, batches


def _fused(kind: str, members: list[Node]) -> list[Node]:
    head = members[0]
    out = Var(ListT(ResponseT))
    meta = {"locs": tuple(m.loc for m in members)}
    # params from the members' (hashable) ones, sorted by name as Node keeps them
    if kind == "n":
        p = dict(head.params)
        p["n"] = len(members)
        node = Node.trusted("llm", head.inputs, tuple(sorted(p.items())), out, head.loc, meta)
    else:
        p = dict(head.params)
        flags = tuple(m.param("deterministic", False) is True for m in members)
        params = (("deterministic", flags), ("model", p.get("model")),
                  ("options", p.get("options")), ("params", p.get("params", ())))
        node = Node.trusted("llm_batch", tuple(a for m in members for a in m.inputs), params,
                            out, head.loc, meta)
    return [node] + [Node.trusted("getitem", (out,), (("key", i),), m.out, m.loc)
                     for i, m in enumerate(members)]


def toposort(nodes: list[Node], starts: Container[int] | None = None) -> list[Node]:
    """Order nodes so every var is defined before use, moving as little as possible
    (depth-first: each node is preceded by its not-yet-placed producers). ``starts``:
    the positions of the only nodes that may use a var defined after them (default:
    any node). Linear."""
    where = {n.out.id: i for i, n in enumerate(nodes)}
    early: set[int] = set()  # positions placed ahead of their turn
    out: list[Node] = []
    for i, node in enumerate(nodes):
        if i in early:
            continue
        if starts is not None and i not in starts:
            out.append(node)
            continue
        # every position before i is placed; a producer after i goes first (and its own)
        stack = [(i, iter(node.inputs))]
        while stack:
            k, ins = stack[-1]
            for a in ins:
                j = where.get(a.id, -1) if isinstance(a, Var) else -1
                if j > i and j not in early:
                    early.add(j)
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

    # (a) identical sampled calls -> one llm node with n=k
    kinds: dict[tuple, int] = {}  # (model, params, options) -> a small id, hashed once
    options = Interner()
    models: list[str] = []
    # id(params) -> (params, kind id or None when n > 1, deterministic): the tracer
    # shares one params tuple among the calls of one models() line
    seen: dict[int, tuple[tuple, int | None, bool]] = {}
    same: dict[tuple, list[int]] = {}
    single: dict[int, int] = {}  # position -> kind id of each n=1 llm node
    for i, node in enumerate(nodes):
        if node.op != "llm":
            continue
        info = seen.get(id(node.params))
        if info is None:
            p = dict(node.params)
            kind = None
            if p.get("n", 1) == 1:
                kind = kinds.setdefault(
                    (p.get("model"), p.get("params", ()), options(p.get("options"))), len(kinds))
                if kind == len(models):
                    models.append(p.get("model"))
            info = seen[id(node.params)] = (node.params, kind,
                                            bool(p.get("deterministic", False)))
        _, kind, deterministic = info
        if kind is None:
            continue
        single[i] = kind
        if deterministic:
            continue
        try:
            key = (kind, _atom_key(node.inputs[0]), _atom_key(node.inputs[1]))
            members = same.get(key)
        except TypeError:  # an unhashable literal prompt
            continue
        if members is None:
            same[key] = [i]
        else:
            members.append(i)
    n_groups: list[list[int]] = []
    no_n = 0
    for key, members in same.items():
        if len(members) < 2:
            continue
        if not caps(models[key[0]]).supports_n:
            no_n += len(members)
            continue
        n_groups.extend(g for g in _chunks(members, max_n) if len(g) > 1)

    # (b) calls to one model that become ready together -> one llm_batch node. Computed
    # on the original positions, as if (a) were done: an n-group is one request.
    b_groups: list[list[int]] = []
    if mode is not None:
        rep = {nodes[j].out.id: nodes[g[0]].out.id for g in n_groups for j in g}
        skip = {j for g in n_groups for j in g}
        groups: dict[tuple, list[int]] = {}
        for i, when in _ready_keys(nodes, mode, single, rep, skip).items():
            key = (single[i], when)
            members = groups.get(key)
            if members is None:
                groups[key] = [i]
            else:
                members.append(i)
        for members in groups.values():
            b_groups.extend(g for g in _chunks(members, max_batch) if len(g) > 1)
    if n_groups or b_groups:
        nodes, batches = _rewrite(nodes, [("n", g) for g in n_groups] +
                                  [("batch", g) for g in b_groups])
        if batches:
            nodes = toposort(nodes, batches)

    stats = FuseStats(len(n_groups), sum(map(len, n_groups)), len(b_groups),
                      sum(map(len, b_groups)), no_n)
    if not (n_groups or b_groups):
        return Graph(list(graph.inputs), list(nodes), list(graph.outputs), dict(graph.meta)), stats
    return Graph(list(graph.inputs), nodes, list(graph.outputs), carry_meta(graph)), stats
