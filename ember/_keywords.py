"""Friendlier errors for misspelt keyword options: ``retry(attempts=3)`` says which
option was meant (``max_attempts``) instead of only "unexpected keyword argument"."""

from __future__ import annotations

import difflib
import functools
import inspect
from typing import Any, Callable, TypeVar

__all__ = ["hint_keywords"]

F = TypeVar("F", bound=Callable[..., Any])


def hint_keywords(aliases: dict[str, str] | None = None) -> Callable[[F], F]:
    """Check a function's keyword options by name before calling it. An unknown one
    raises TypeError naming the option meant: ``aliases`` maps names other libraries
    use (``tries``) to ours (``max_attempts``); otherwise the closest spelling."""
    aliases = aliases or {}

    def decorate(fn: F) -> F:
        params = inspect.signature(fn).parameters  # (for functions without **kwargs)
        known = [name for name, p in params.items()
                 if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
        known_set = frozenset(known)

        @functools.wraps(fn)
        def checked(*args: Any, **kwargs: Any) -> Any:
            for name in kwargs:
                if name not in known_set:
                    raise TypeError(_message(fn.__name__, name, known, aliases))
            return fn(*args, **kwargs)

        return checked  # type: ignore[return-value]

    return decorate


def _message(fn: str, name: str, known: list[str], aliases: dict[str, str]) -> str:
    meant = aliases.get(name) or next(iter(difflib.get_close_matches(name, known, 1, 0.6)), None)
    options = ", ".join(k for k in known if k != "fn")
    hint = f" (did you mean {meant}?)" if meant else ""
    return f"{fn}() has no option {name!r}{hint}. Its options: {options}."
