"""The memo: finished model answers of one jitted call, by request.

Deterministic requests are served by key; sampled ones by key and occurrence, in
the order the program made them, so the i-th identical sampled call gets the i-th
sample and no answer is used twice. A deterministic request answered more than once
(the graph sent it twice, or the check run made it again after it failed or under
`ember.retry`, as eager Python would) keeps every answer: its i-th repeat has a slot
of its own (`get_again`).
"""

from __future__ import annotations

from typing import Any

from .._request import Request

__all__ = ["Memo", "MISSING"]

MISSING = object()
_AGAIN = "again:"  # the slots of repeats, apart from the keys' own


class Memo:
    __slots__ = ("det", "sampled", "again", "hits", "used", "effects", "runs", "deadlines")

    def __init__(self) -> None:
        self.det: dict[str, Any] = {}
        self.sampled: dict[str, list[Any]] = {}
        self.again: dict[tuple[str, int], Any] = {}  # (key, i): its i-th answer after det
        self.hits = 0
        self.used: set[tuple[str, int]] = set()
        # [fn, argument values, result, taken by the check run, the graph run that ran
        # it, the latest graph run that reused it]
        self.effects: list[list[Any]] = []
        self.runs = 0  # graph runs of this call (a plan's rounds)
        self.deadlines: dict[Any, float] | None = None  # its time limits' clocks

    def __len__(self) -> int:
        return len(self.det) + sum(len(v) for v in self.sampled.values()) + len(self.again)

    def put(self, request: Request, result: Any, deterministic: bool,
            again: int | None = None) -> tuple[str, int]:
        """Store a Response or an exception; returns its slot (key, occurrence). With
        ``again``: the answer to that repeat of a failed deterministic request."""
        key = request.key
        if again is not None:
            self.again[key, again] = result
            return _AGAIN + key, again
        if deterministic:
            held = self.det.get(key, MISSING)
            if held is MISSING or held is result:
                self.det[key] = result
                return key, 0
            # sent again (calls the passes kept apart: another retry scope, n > 1): a
            # repeat the check run may take (see `get_again`)
            i = 0
            while (key, i) in self.again:
                i += 1
            self.again[key, i] = result
            return _AGAIN + key, i
        samples = self.sampled.setdefault(key, [])
        samples.append(result)
        return key, len(samples) - 1

    def all_used(self, slots: list[tuple[str, int]]) -> bool:
        """Has the check run asked for every answer in ``slots``?"""
        return all(slot in self.used for slot in slots)

    def share(self, other: Memo) -> None:
        """Serve ``other``'s deterministic answers too (vmap's hoisted calls)."""
        self.det.update(other.det)

    def get(self, request: Request, deterministic: bool, occurrence: int) -> Any:
        key = request.key
        if deterministic:
            value = self.det.get(key, MISSING)
            occurrence = 0
        else:
            samples = self.sampled.get(key, ())
            value = samples[occurrence] if occurrence < len(samples) else MISSING
        if value is not MISSING:
            self.hits += 1
            self.used.add((key, occurrence))
        return value

    def get_again(self, request: Request, i: int) -> Any:
        """The answer to the i-th repeat of a failed deterministic request, or MISSING."""
        value = self.again.get((request.key, i), MISSING)
        if value is not MISSING:
            self.hits += 1
            self.used.add((_AGAIN + request.key, i))
        return value

    def peek(self, request: Request, deterministic: bool, occurrence: int) -> Any:
        """Like `get`, without counting the answer as used."""
        if deterministic:
            return self.det.get(request.key, MISSING)
        samples = self.sampled.get(request.key, ())
        return samples[occurrence] if occurrence < len(samples) else MISSING

    def put_effect(self, fn: Any, values: list[Any], result: Any, run: int = 0,
                   taker: Any = False) -> None:
        """An effectful `ember.op` that ran (in graph run ``run``, or in the check run
        ``taker``, which has it then), so no run of this call runs it again."""
        self.effects.append([fn, values, result, taker, run, run])

    def ran_effect(self, fn: Any, values: list[Any], run: int) -> Any:
        """The result of ``fn`` on equal arguments run by an earlier graph run of this
        call and not yet reused by graph run ``run`` (a later round's graph holds the
        effects before its break again: they ran already), else MISSING."""
        for entry in self.effects:
            if entry[4] < run and entry[5] != run and entry[0] is fn and _equal(entry[1], values):
                entry[5] = run
                return entry[2]
        return MISSING

    def take_effect(self, fn: Any, values: list[Any], taker: Any = True) -> Any:
        """The result of the first run of ``fn`` on equal arguments not yet taken by
        ``taker`` (a check run: one that starts over takes them again, in order)."""
        for entry in self.effects:
            if entry[3] is not taker and entry[0] is fn and _equal(entry[1], values):
                entry[3] = taker
                return entry[2]
        return MISSING

    def unused(self) -> int:
        """Answers fetched but never asked for by the check run (a stale plan)."""
        total = sum(1 for k in self.det if (k, 0) not in self.used)
        total += sum(1 for k, v in self.sampled.items() for i in range(len(v))
                     if (k, i) not in self.used)
        total += sum(1 for k, i in self.again if (_AGAIN + k, i) not in self.used)
        return total


def _equal(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))


def _same(x: Any, y: Any, depth: int = 0) -> bool:
    """Equal, or of one class with equal attributes (a class without ``__eq__``, made
    afresh by the check run's pure ops, compared unequal to the graph's)."""
    try:
        if x is y or bool(x == y):
            return True
    except Exception:  # an argument whose == raises or is not a truth value
        pass
    if depth > 3 or type(x) is not type(y):
        return False
    if isinstance(x, (list, tuple)):
        return len(x) == len(y) and all(_same(a, b, depth + 1) for a, b in zip(x, y))
    if isinstance(x, dict):
        return x.keys() == y.keys() and all(_same(x[k], y[k], depth + 1) for k in x)
    sx, sy = getattr(x, "__dict__", None), getattr(y, "__dict__", None)
    return type(sx) is dict and type(sy) is dict and _same(sx, sy, depth + 1)
