"""JSON schema dicts for `Response.json(schema)`: the subset structured output uses.

Checked: ``type``, ``enum``, ``const``, ``required``, ``properties``,
``additionalProperties``, ``items`` / ``prefixItems``, ``allOf`` / ``anyOf`` /
``oneOf``, local ``$ref`` (``#/$defs/...``, as pydantic writes them), and the bounds
``minimum`` / ``maximum`` / ``exclusiveMinimum`` / ``exclusiveMaximum``,
``minLength`` / ``maxLength`` / ``pattern``, ``minItems`` / ``maxItems``. Other
keywords (``format``, ``uniqueItems``, ...) are not checked. (``jsonschema`` is not
a dependency of Ember.)
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["Schema", "schema_of", "schema_error"]


class Schema:
    """A schema dict as a hashable constant (a traced ``.json(schema)`` keeps it in its
    node's params), equal to another with the same JSON."""

    __slots__ = ("schema", "_key")

    def __init__(self, schema: dict) -> None:
        self.schema = schema
        self._key = json.dumps(schema, sort_keys=True, default=str)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schema) and other._key == self._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        return f"<schema {self.schema.get('title') or _shorten(self._key, 40)}>"


def schema_of(schema: dict) -> dict:
    """The JSON schema itself, out of OpenAI's ``response_format`` wrapper if given one."""
    inner = schema.get("json_schema")
    if schema.get("type") == "json_schema" and isinstance(inner, dict):
        return inner.get("schema", {})
    return schema


def schema_error(value: Any, schema: dict) -> str | None:
    """Where ``value`` first fails ``schema`` ("$.items[2].label: ..."), or None."""
    try:
        return _check(value, schema, schema, "$")
    except RecursionError:  # ($refs that only refer to each other: nothing to check)
        return None


_TYPES: dict[str, Any] = {"object": dict, "array": list, "string": str,
                          "null": type(None), "boolean": bool}


def _is(value: Any, name: str) -> bool:
    if name in _TYPES:
        return isinstance(value, _TYPES[name])
    if isinstance(value, bool):
        return False
    if name == "integer":  # (2.0 is an integer in JSON schema)
        return isinstance(value, int) or isinstance(value, float) and value.is_integer()
    return name == "number" and isinstance(value, (int, float))


def _kind(value: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _is(value, name) and not (name == "integer" and isinstance(value, float)):
            return name
    return type(value).__name__


def _same(a: Any, b: Any) -> bool:
    """JSON equality: 1 == 1.0, but True != 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _key_path(path: str, key: str) -> str:
    return f"{path}.{key}" if key.isidentifier() else f"{path}[{json.dumps(key)}]"


def _resolve(root: dict, ref: str) -> Any:
    if not ref.startswith("#"):
        return None  # (a remote schema: not fetched)
    node: Any = root
    for part in filter(None, ref[1:].split("/")):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _check(value: Any, schema: Any, root: dict, path: str) -> str | None:
    if schema is False:
        return f"{path}: no value is allowed here"
    if not isinstance(schema, dict):
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str):
        target = _resolve(root, ref)
        if target is not None and target is not schema:
            error = _check(value, target, root, path)
            if error:
                return error
    types = schema.get("type")
    if types is not None:
        names = types if isinstance(types, list) else [types]
        if not any(_is(value, t) for t in names):
            return f"{path}: expected {' or '.join(map(str, names))}, got {_kind(value)}"
    if "enum" in schema and not any(_same(value, e) for e in schema["enum"]):
        return (f"{path}: {_shorten(json.dumps(value, default=str))} is not one of "
                f"{_shorten(json.dumps(schema['enum'], default=str), 100)}")
    if "const" in schema and not _same(value, schema["const"]):
        return f"{path}: expected {_shorten(json.dumps(schema['const'], default=str))}"
    for sub in schema.get("allOf", ()):
        error = _check(value, sub, root, path)
        if error:
            return error
    if "anyOf" in schema:
        errors = [_check(value, sub, root, path) for sub in schema["anyOf"]]
        if all(errors):
            return errors[0] if len(errors) == 1 else f"{path}: matches none of anyOf ({errors[0]})"
    if "oneOf" in schema:
        errors = [_check(value, sub, root, path) for sub in schema["oneOf"]]
        matched = errors.count(None)
        if matched != 1:
            return f"{path}: matches {matched} of oneOf, not exactly one" + (
                f" ({errors[0]})" if not matched and errors else "")
    if isinstance(value, dict):
        return _check_object(value, schema, root, path)
    if isinstance(value, list):
        return _check_array(value, schema, root, path)
    if isinstance(value, str):
        return _check_string(value, schema, path)
    if _is(value, "number"):
        return _check_number(value, schema, path)
    return None


def _check_object(value: dict, schema: dict, root: dict, path: str) -> str | None:
    for key in schema.get("required", ()):
        if key not in value:
            return f"{path}: missing required property {key!r}"
    props = schema.get("properties") or {}
    for key, sub in props.items():
        if key in value:
            error = _check(value[key], sub, root, _key_path(path, key))
            if error:
                return error
    extra = schema.get("additionalProperties", True)
    if extra is not True:
        for key in value:
            if key not in props:
                if extra is False:
                    return f"{path}: unexpected property {key!r}"
                error = _check(value[key], extra, root, _key_path(path, key))
                if error:
                    return error
    return None


def _check_array(value: list, schema: dict, root: dict, path: str) -> str | None:
    prefix = schema.get("prefixItems") or ()
    items = schema.get("items")
    if isinstance(items, list):  # (the older tuple form of prefixItems)
        prefix, items = items, schema.get("additionalItems")
    for i, item in enumerate(value):
        sub = prefix[i] if i < len(prefix) else items
        if sub is not None:
            error = _check(item, sub, root, f"{path}[{i}]")
            if error:
                return error
    if len(value) < schema.get("minItems", 0):
        return f"{path}: {len(value)} items, fewer than minItems {schema['minItems']}"
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        return f"{path}: {len(value)} items, more than maxItems {schema['maxItems']}"
    return None


def _check_string(value: str, schema: dict, path: str) -> str | None:
    if len(value) < schema.get("minLength", 0):
        return f"{path}: shorter than minLength {schema['minLength']}"
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        return f"{path}: longer than maxLength {schema['maxLength']}"
    pattern = schema.get("pattern")
    if isinstance(pattern, str) and re.search(pattern, value) is None:
        return f"{path}: {_shorten(json.dumps(value))} does not match pattern {pattern!r}"
    return None


def _check_number(value: float, schema: dict, path: str) -> str | None:
    low, high = schema.get("minimum"), schema.get("maximum")
    if _is(low, "number") and value < low:
        return f"{path}: {value} is below the minimum {low}"
    if _is(high, "number") and value > high:
        return f"{path}: {value} is above the maximum {high}"
    low, high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if _is(low, "number") and value <= low:
        return f"{path}: {value} is not above the exclusive minimum {low}"
    if _is(high, "number") and value >= high:
        return f"{path}: {value} is not below the exclusive maximum {high}"
    return None
