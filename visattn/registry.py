"""Name -> constructor registries that reject duplicates and name the valid choices on a miss."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T", bound=Callable[..., Any])


def did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


class Registry(Generic[T]):
    """A mapping from names to constructors, filled with the ``register`` decorator.

    A family registered with ``register_family(prefix, resolve, text)`` answers every name ``<prefix>:<rest>``
    that no entry has: ``resolve(rest)`` returns its constructor or raises ``KeyError`` saying why (timm's zoo is
    ``timm:<name>``; its names are not enumerated in ``names()``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._families: dict[str, tuple[Callable[[str], T], str]] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered (by {self._entries[name]!r})")
            self._entries[name] = obj
            return obj

        return decorator

    def register_family(self, prefix: str, resolve: Callable[[str], T], text: str) -> None:
        """Names ``<prefix>:<rest>`` resolve through ``resolve(rest)``; ``text`` describes them in listings."""
        if not prefix or ":" in prefix:
            raise ValueError(f"{self.kind} family prefix must be a non-empty name without ':', got {prefix!r}")
        if prefix in self._families:
            raise ValueError(f"{self.kind} family {prefix!r} is already registered")
        self._families[prefix] = (resolve, text)

    def families(self) -> list[str]:
        """How each prefix family's names are written, e.g. ``timm:<name> (any of timm.list_models())``."""
        return [text for _, text in self._families.values()]

    def get(self, name: str) -> T:
        if not isinstance(name, str):
            raise TypeError(f"{self.kind} name must be a string, got {type(name).__name__}")
        if name in self._entries:
            return self._entries[name]
        prefix, colon, rest = name.partition(":")
        if colon and prefix in self._families:
            return self._families[prefix][0](rest)
        names = self.names()
        families = f"; or {', '.join(self.families())}" if self._families else ""
        raise KeyError(
            f"unknown {self.kind} {name!r}.{did_you_mean(name, names)} Valid {self.kind} names: {', '.join(names)}"
            f"{families}"
        )

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
        raise TypeError(
            f"{what} got unknown argument(s) {', '.join(map(repr, unknown))}.{hints} "
            f"Allowed: {', '.join(allowed) or '(none)'}"
        )


ATTENTION: Registry[Callable[..., Any]] = Registry("attention block")
BACKBONES: Registry[Callable[..., Any]] = Registry("backbone")
NECKS: Registry[Callable[..., Any]] = Registry("neck")
DATASETS: Registry[Callable[..., Any]] = Registry("dataset")
