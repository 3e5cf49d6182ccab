"""The closed set of ops and their rule tables.

Each op is a name plus: a type rule (node -> output type), an ``impl`` on concrete
values (``None`` for model calls, which the backend sends), and purity. Adding an op
touches this file only (plus a batching rule in passes/vmap.py if it batches).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .types import AnyT, Json, ListT, ResponseT, Str, Type, is_subtype

__all__ = ["OpDef", "OPS", "STR_METHODS", "RESPONSE_ATTRS", "REPR_SPEC", "format_value"]


@dataclass(frozen=True, slots=True)
class OpDef:
    name: str
    type_rule: Callable[[Any], Type]
    impl: Callable[..., Any] | None  # impl(node, *input_values) -> value
    pure: bool = True  # False: effectful, never removed or merged
    calls_model: bool = False


def _err(msg: str):
    from .graph import GraphError

    return GraphError(msg)


def _in_type(node: Any, i: int) -> Type:
    from .graph import Var

    a = node.inputs[i]
    if isinstance(a, Var):
        return a.type
    v = a.value
    return Str if isinstance(v, str) else AnyT


def format_value(value: Any, spec: str = "") -> str:
    return format(value, spec)


# ---- format: f-string assembly --------------------------------------------------
def _format_type(node: Any) -> Type:
    segments = node.param("segments")
    specs = node.param("specs")
    if len(segments) != len(node.inputs) + 1 or len(specs) != len(node.inputs):
        raise _err("format: needs one more segment than inputs, and one spec per input")
    return Str


REPR_SPEC = "!r"  # a format spec that never occurs in Python's: the value's repr()


def _format_impl(node: Any, *values: Any) -> str:
    segments = specs = None
    for k, v in node.params:  # node.param() twice, in one scan: every traced f-string
        if k == "segments":
            segments = v
        elif k == "specs":
            specs = v
    parts = [segments[0]]
    for value, spec, seg in zip(values, specs, segments[1:], strict=True):
        parts.append(repr(value) if spec == REPR_SPEC else format(value, spec))
        parts.append(seg)
    return "".join(parts)


# ---- llm: one model call ----------------------------------------------------------
def _llm_type(node: Any) -> Type:
    if len(node.inputs) != 2:
        raise _err("llm: inputs are (prompt, system)")
    if not (is_subtype(_in_type(node, 0), Str) or _in_type(node, 0) in (Json, AnyT)):
        raise _err(f"llm: prompt must be Str or messages, got {_in_type(node, 0)}")
    n = node.param("n", 1)
    return ResponseT if n == 1 else ListT(ResponseT)


def _llm_batch_type(node: Any) -> Type:
    if len(node.inputs) % 2:
        raise _err("llm_batch: inputs are (prompt, system) pairs")
    return ListT(ResponseT)


# ---- attr / method / getitem ------------------------------------------------------
RESPONSE_ATTRS = {"text": Str, "model": Str, "usage": AnyT, "cost": AnyT, "latency": AnyT,
                  "finish_reason": AnyT}
# str methods that return str and are traced as nodes; any other use of a traced
# string needs its value (a graph break)
STR_METHODS = frozenset({
    "strip", "lstrip", "rstrip", "lower", "upper", "title", "capitalize", "casefold",
    "replace", "removeprefix", "removesuffix", "zfill", "center", "ljust", "rjust",
    "expandtabs", "swapcase",
})


def _attr_type(node: Any) -> Type:
    name = node.param("name")
    # a field of a pydantic model (``.json(Model).x``), unless of a Response (a var, or
    # a literal once the answer is known)
    if _in_type(node, 0) != ResponseT and not hasattr(
            getattr(node.inputs[0], "value", None), "_thunk"):
        return Str if node.param("type") == "str" else AnyT
    if name not in RESPONSE_ATTRS:
        raise _err(f"attr: unknown Response attribute {name!r}")
    return RESPONSE_ATTRS[name]


def _attr_impl(node: Any, obj: Any) -> Any:
    return getattr(obj, node.param("name"))


def _method_type(node: Any) -> Type:
    name = node.param("name")
    if name == "json" or name == "get":  # (get: of a JSON value, ``data.get("key")``)
        return Json
    if name in STR_METHODS or name == "slice":
        return Str
    raise _err(f"method: {name!r} is not a traced method")


def _method_impl(node: Any, obj: Any) -> Any:
    name = node.param("name")
    args = node.param("args", ())  # (the call's constant arguments, kept in the params)
    if name == "json":
        return obj.json(*args)
    text = obj.text if hasattr(obj, "_thunk") else obj
    if name == "slice":  # text[start:stop:step] (a slice object is not hashable)
        return text[slice(*args)]
    return getattr(text, name)(*args)


def _getitem_type(node: Any) -> Type:
    t = _in_type(node, 0)
    if isinstance(t, ListT):
        return t.elem
    return Json if t == Json else AnyT


def _getitem_impl(node: Any, obj: Any) -> Any:
    return obj[node.param("key")]


# ---- call: an ember.op function ------------------------------------------------------
def _call_type(node: Any) -> Type:
    return AnyT


def _call_impl(node: Any, *args: Any) -> Any:
    kw_names = node.param("kwargs", ())
    fn = node.param("fn")
    if kw_names:
        pos, kws = args[: len(args) - len(kw_names)], args[len(args) - len(kw_names):]
        return fn(*pos, **dict(zip(kw_names, kws, strict=True)))
    return fn(*args)


# ---- pack: containers ---------------------------------------------------------------
def _pack_type(node: Any) -> Type:
    kind = node.param("kind")
    if kind in ("dict", "messages") and len(node.param("keys")) != len(node.inputs):
        raise _err("pack: one key per input")
    if kind == "list":
        types = {_in_type(node, i) for i in range(len(node.inputs))}
        return ListT(types.pop() if len(types) == 1 else AnyT)
    return AnyT


def _pack_impl(node: Any, *values: Any) -> Any:
    kind = node.param("kind")
    if kind == "list":
        return list(values)
    if kind == "tuple":
        return tuple(values)
    if kind == "messages":
        return tuple((role, v.text if hasattr(v, "_thunk") else v)
                     for role, v in zip(node.param("keys"), values, strict=True))
    return dict(zip(node.param("keys"), values, strict=True))


OPS: dict[str, OpDef] = {
    d.name: d
    for d in (
        OpDef("format", _format_type, _format_impl),
        OpDef("llm", _llm_type, None, calls_model=True),
        OpDef("llm_batch", _llm_batch_type, None, calls_model=True),
        OpDef("attr", _attr_type, _attr_impl),
        OpDef("method", _method_type, _method_impl),
        OpDef("getitem", _getitem_type, _getitem_impl),
        OpDef("call", _call_type, _call_impl),
        OpDef("pack", _pack_type, _pack_impl),
    )
}


def is_effectful(node: Any) -> bool:
    return not OPS[node.op].pure or bool(node.param("effectful", False))
