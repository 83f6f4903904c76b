"""Name -> constructor registries that reject duplicates and name the valid choices on a miss."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from visattn.errors import BadArgumentError, UnknownNameError

T = TypeVar("T", bound=Callable[..., Any])


def did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


class Registry(Generic[T]):
    """A mapping from names to constructors, filled with the ``register`` decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered (by {self._entries[name]!r})")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        if not isinstance(name, str):
            raise BadArgumentError(f"{self.kind} name must be a string, got {type(name).__name__}")
        try:
            return self._entries[name]
        except KeyError:
            names = self.names()
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{did_you_mean(name, names)} Valid {self.kind} names: {', '.join(names)}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the constructor registered as ``name``; unknown keywords raise with the valid ones."""
        ctor = self.get(name)
        check_kwargs(f"{self.kind} {name!r}", ctor, kwargs)
        return ctor(*args, **kwargs)


def keyword_names(ctor: Callable[..., Any]) -> list[str]:
    """Keyword arguments accepted by ``ctor`` (for classes: by ``__init__``)."""
    sig = inspect.signature(ctor)
    return [
        p.name
        for p in sig.parameters.values()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"
    ]


def check_kwargs(what: str, ctor: Callable[..., Any], kwargs: Mapping[str, Any]) -> None:
    allowed = keyword_names(ctor)
    unknown = [k for k in kwargs if k not in allowed]
    if unknown:
        hints = "".join(did_you_mean(k, allowed) for k in unknown)
        raise BadArgumentError(
            f"{what} got unknown argument(s) {', '.join(map(repr, unknown))}.{hints} "
            f"Allowed: {', '.join(allowed) or '(none)'}"
        )


ATTENTION: Registry[Callable[..., Any]] = Registry("attention block")
BACKBONES: Registry[Callable[..., Any]] = Registry("backbone")
NECKS: Registry[Callable[..., Any]] = Registry("neck")
DATASETS: Registry[Callable[..., Any]] = Registry("dataset")
