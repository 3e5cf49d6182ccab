"""What an `ember.cache` entry is made of: its key (the function's identity, what it
captured, its arguments, all hashed) and its value (JSON, never pickle).

See `ember._cache` for the store and the wrapper.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import sys
import types
from typing import Any, Callable

import xxhash

from ._response import Response

__all__ = ["Unsupported", "identity", "captured", "closure", "canonical", "encode",
           "decode", "Unreadable"]

TAG = "__ember__"


class Unsupported(TypeError):
    """A value `cache` cannot key or store as JSON."""


def _code_print(code: types.CodeType, h: Any) -> None:
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code_print(const, h)
        else:
            h.update(repr(const).encode())


def identity(fn: Callable) -> str:
    """``module:qualname@fingerprint`` of a function (its code included)."""
    inner = getattr(fn, "fn", None)  # a jit wrapper
    if callable(inner):
        fn = inner
    fn = inspect_unwrap(fn)
    name = f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(type(fn)))}"
    code = getattr(fn, "__code__", None)
    if code is None:
        return name
    h = xxhash.xxh3_64()
    _code_print(code, h)
    return f"{name}@{h.hexdigest()}"


def inspect_unwrap(fn: Callable) -> Callable:
    while hasattr(fn, "__wrapped__"):
        fn = fn.__wrapped__
    return fn


def captured(fn: Callable, at: tuple = ()) -> list[tuple[tuple, Any]]:
    """What a function captured, read at call time, as (path, key form) parts: closure
    cells, defaults, a partial's arguments, a bound method's object and a callable
    object's attributes, down through plain objects and small string-keyed dicts (a
    part each, so state the function changes can be told apart from state it reads).
    ``[cache(lambda x: models(m, x)) for m in names]`` are different functions, and so
    are ``cache(agent_a.ask)`` and ``cache(agent_b.ask)`` when the agents differ."""
    fn = inspect_unwrap(getattr(fn, "fn", fn))
    if isinstance(fn, functools.partial):
        return [(at + ("func",), identity(fn.func)), *captured(fn.func, at + ("func",)),
                *[(at + ("arg", i), _leaf(v)) for i, v in enumerate(fn.args)],
                *[(at + ("kw", k), _leaf(v)) for k, v in sorted(fn.keywords.items())]]
    if isinstance(fn, types.MethodType):  # a bound method: its object is part of it
        return [*captured(fn.__func__, at + ("func",)), *_parts(fn.__self__, at + ("self",))]
    if not isinstance(fn, (types.FunctionType, types.BuiltinFunctionType)):
        call = getattr(type(fn), "__call__", None)  # a callable object
        return [(at + ("call",), identity(call) if call is not None else None),
                *_parts(fn, at + ("self",))]
    parts: list[tuple[tuple, Any]] = []
    for i, v in enumerate(getattr(fn, "__defaults__", None) or ()):
        parts += _parts(v, at + ("default", i))
    for k, v in sorted((getattr(fn, "__kwdefaults__", None) or {}).items()):
        parts += _parts(v, at + ("default", k))
    names = getattr(getattr(fn, "__code__", None), "co_freevars", ())
    for name, cell in zip(names, getattr(fn, "__closure__", None) or ()):
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            value = None
        parts += _parts(value, at + ("cell", name))
    return parts


_DEPTH = 4  # objects and small dicts are split into parts this deep
_SPLIT = 64  # a dict of more string keys is one part


def _parts(value: Any, at: tuple, depth: int = 0) -> list[tuple[tuple, Any]]:
    """One captured value's parts: a plain object's attributes and a small string-keyed
    dict's items apart (an agent's changing counter, even inside a nested object, can be
    left out of its key while its model name stays in), anything else whole."""
    if depth < _DEPTH:
        if type(value) is dict and len(value) <= _SPLIT and all(type(k) is str for k in value):
            return [(at, ["dict"]), *[p for k, v in sorted(value.items())
                                      for p in _parts(v, at + (k,), depth + 1)]]
        state = _plain_state(value)
        if state is not None:
            return [(at, ["object", type(value).__qualname__]),
                    *[p for k, v in sorted(state.items())
                      for p in _parts(v, at + (k,), depth + 1)]]
    return [(at, _leaf(value))]


def _plain_state(value: Any) -> dict | None:
    """The attributes of a plain object (not a function, class, module, or a value with
    a content form), else None."""
    if isinstance(value, (type, types.ModuleType, types.FunctionType, types.MethodType,
                          functools.partial, enum.Enum, dict, list, tuple, set, frozenset)
                  ) or _content(value) is not None:
        return None  # (a container subclass, OrderedDict or a namedtuple: by content)
    try:
        state = object.__getattribute__(value, "__dict__")
    except Exception:  # no __dict__: its __slots__, if it has some (else a builtin)
        state = {}
        for cls in type(value).__mro__:
            names = cls.__dict__.get("__slots__", ())
            for name in (names,) if isinstance(names, str) else names:
                try:
                    state.setdefault(name, object.__getattribute__(value, name))
                except Exception:  # (an unset slot)
                    pass
        return state or None
    return state if type(state) is dict else None


def closure(fn: Callable) -> list[Any]:
    """`captured`, as a plain list (a nested function's part of a key)."""
    return [[list(path), form] for path, form in captured(fn)]


def _leaf(value: Any) -> Any:
    """A captured value's key form: scalars as themselves, anything else an xxhash of
    its JSON (containers by content, objects by `_default`): quick in C even for large
    captured data."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    try:
        blob = json.dumps(value, sort_keys=True, default=_default, check_circular=True)
    except (TypeError, ValueError, RecursionError):  # non-string keys, a cycle, ...
        blob = json.dumps(_loose(value), sort_keys=True, default=repr)
    return ["h", type(value).__name__, xxhash.xxh3_64_hexdigest(blob.encode())]


def _default(value: Any) -> Any:
    """The JSON form of what json cannot write: sets sorted, functions by identity,
    enums, dataclasses and pydantic models by content, classes and modules by name,
    other objects by type and their plain attributes, anything else by type."""
    try:
        if isinstance(value, (set, frozenset)):
            return ["set", sorted(json.dumps(v, sort_keys=True, default=_default)
                                  for v in value)]
        if hasattr(value, "__code__") or isinstance(value, (functools.partial,
                                                            types.MethodType)):
            return ["fn", identity(value), closure(value)]
        if isinstance(value, (type, types.ModuleType)):
            return [type(value).__name__, getattr(value, "__module__", ""),
                    getattr(value, "__qualname__", getattr(value, "__name__", ""))]
        content = _content(value)
        if content is not None:
            return ["value", content]
        state = _plain_state(value)
        if state is not None:
            return ["object", type(value).__qualname__,
                    {k: v for k, v in state.items() if type(v) in _PLAIN or v is None}]
    except Exception:  # a property or __getattr__ that raises: by type
        pass
    return ["object", type(value).__qualname__]


def _loose(value: Any, depth: int = 0) -> Any:
    """`_leaf`'s slow path, for what json refuses (non-string dict keys, cycles): the
    same forms, built in Python, containers down to a depth, then by type."""
    kind = type(value)
    if value is None or kind in (bool, int, float, str):
        return value
    if depth >= 6:
        return ["deep", kind.__qualname__]
    deeper = depth + 1
    if kind in (list, tuple):
        return [kind.__name__, [_loose(v, deeper) for v in value]]
    if kind in (set, frozenset):
        return [kind.__name__, sorted([_loose(v, deeper) for v in value], key=_sort_key)]
    if kind is dict:
        items = [[_loose(k, deeper), _loose(v, deeper)] for k, v in value.items()]
        return ["dict", sorted(items, key=_sort_key)]
    return _default(value)


_PLAIN = (bool, int, float, str, tuple, list, dict, set, frozenset)


def _content(value: Any) -> Any:
    """The canonical form of an enum, dataclass or pydantic model, else None."""
    try:
        if not (isinstance(value, enum.Enum)
                or (dataclasses.is_dataclass(value) and not isinstance(value, type))
                or (hasattr(type(value), "model_fields") and hasattr(value, "model_dump"))):
            return None
        return canonical(value)
    except Exception:  # (Unsupported, or a field or __getattr__ that raises)
        return None


def _sort_key(item: Any) -> str:
    return json.dumps(item, sort_keys=True, default=repr)


def canonical(value: Any) -> Any:
    """A JSON form of an argument, distinct for values that may give distinct results."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)) and type(value) in (int, float):
        return ["float", repr(value)] if isinstance(value, float) else value
    if isinstance(value, Response):
        return ["Response", value.text, value.model]
    if isinstance(value, (list, tuple)):
        return [type(value).__name__, [canonical(v) for v in value]]
    if isinstance(value, dict):
        items = [[canonical(k), canonical(v)] for k, v in value.items()]
        return ["dict", sorted(items, key=lambda kv: json.dumps(kv[0], sort_keys=True))]
    if isinstance(value, enum.Enum):
        return ["enum", type(value).__qualname__, canonical(value.value)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return ["dataclass", type(value).__qualname__, canonical(dataclasses.asdict(value))]
    if hasattr(value, "model_dump") and hasattr(type(value), "model_fields"):  # pydantic
        return ["pydantic", type(value).__qualname__, canonical(value.model_dump(mode="json"))]
    raise Unsupported(type(value).__name__)


def encode(value: Any) -> Any:
    """A JSON-able form of a result that `decode` restores exactly."""
    if value is None or isinstance(value, (bool, str, int, float)):
        if type(value) not in (bool, str, int, float, type(None)):
            raise Unsupported(type(value).__name__)
        return value
    if isinstance(value, Response):
        return {TAG: "Response", "data": value.to_dict()}
    if type(value) is list:
        return [encode(v) for v in value]
    if type(value) is tuple:
        return {TAG: "tuple", "items": [encode(v) for v in value]}
    if type(value) is dict:
        if all(type(k) is str for k in value) and TAG not in value:
            return {k: encode(v) for k, v in value.items()}
        return {TAG: "dict", "items": [[encode(k), encode(v)] for k, v in value.items()]}
    cls = type(value)
    if hasattr(cls, "model_validate") and hasattr(value, "model_dump"):  # pydantic
        data = value.model_dump(mode="json")
        path = f"{cls.__module__}:{cls.__qualname__}"
        if _model_class(path) is cls and cls.model_validate(data) == value:  # round-trips
            return {TAG: "pydantic", "class": path, "data": data}
    raise Unsupported(cls.__name__)


class Unreadable(Exception):
    """A stored value this process cannot restore (its pydantic class is not imported)."""


def _model_class(path: str) -> Any:
    """The pydantic class at ``module:qualname`` if that module is imported already
    (never imports one: a cache file must not choose code to run), else None."""
    module, _, qualname = path.partition(":")
    obj = sys.modules.get(module)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, type) and hasattr(obj, "model_validate") else None


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


def decode(value: Any) -> Any:
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, dict):
        tag = value.get(TAG)
        if tag == "Response":
            r = Response.from_dict(value["data"])
            r._latency = 0.0  # a cache hit takes no time
            return r
        if tag == "tuple":
            return tuple(decode(v) for v in value["items"])
        if tag == "dict":
            return {_hashable(decode(k)): decode(v) for k, v in value["items"]}
        if tag == "pydantic":
            cls = _model_class(value["class"])
            if cls is None:
                raise Unreadable(value["class"])
            return cls.model_validate(value["data"])
        return {k: decode(v) for k, v in value.items()}
    return value
