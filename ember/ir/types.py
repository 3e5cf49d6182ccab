"""IR types. Every value gets its type the moment it is created."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Type", "Str", "ResponseT", "Json", "AnyT", "ListT", "Batched", "is_subtype"]


@dataclass(frozen=True, slots=True)
class Type:
    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class ListT(Type):
    elem: Type

    def __init__(self, elem: Type) -> None:
        object.__setattr__(self, "name", "List")
        object.__setattr__(self, "elem", elem)

    def __str__(self) -> str:
        return f"List[{self.elem}]"


@dataclass(frozen=True, slots=True)
class Batched(Type):
    """A value with a leading batch axis (vmap)."""

    elem: Type

    def __init__(self, elem: Type) -> None:
        object.__setattr__(self, "name", "Batched")
        object.__setattr__(self, "elem", elem)

    def __str__(self) -> str:
        return f"{self.elem}[*]"


Str = Type("Str")
ResponseT = Type("Response")
Json = Type("Json")
AnyT = Type("Any")


def is_subtype(actual: Type, expected: Type) -> bool:
    """`Any` accepts everything; a Response may stand where a Str is expected (it formats)."""
    if expected == AnyT or actual == expected or actual == AnyT:
        return True
    if expected == Str and actual == ResponseT:
        return True
    if isinstance(actual, (ListT, Batched)) and type(actual) is type(expected):
        return is_subtype(actual.elem, expected.elem)  # type: ignore[attr-defined]
    return False
