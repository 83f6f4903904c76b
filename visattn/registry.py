"""Name -> constructor registries that reject duplicates and name the valid choices on a miss."""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from visattn.errors import BadArgumentError, UnknownNameError

T = TypeVar("T", bound=Callable[..., Any])


def did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


class Registry(Generic[T]):
    """A mapping from names to constructors, filled with the ``register`` decorator.

    A package ``declare``s the names each of its files registers, so that the names can be listed (``names()``,
    ``in``; ``visattn train --help``) without importing those files and torch with them; the file is imported on
    the first ``get`` of one of its names. A test checks that every file registers exactly what is declared.

    A family of names ``<prefix>:<rest>`` (timm's zoo is ``timm:<name>``) is declared the same way with
    ``declare_family(module, prefix, text)``; importing the module calls ``register_family(prefix, resolve, text)``
    and ``resolve(rest)`` then returns the constructor of any such name that no entry has, or raises
    ``UnknownNameError`` saying why. A family's names are not enumerated in ``names()``; ``families()`` describes them.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._declared: dict[str, str] = {}  # name -> the module that registers it when imported
        self._families: dict[str, tuple[Callable[[str], T], str]] = {}
        self._declared_families: dict[str, tuple[str, str]] = {}  # prefix -> (module, text)

    def declare(self, module: str, *names: str) -> None:
        """Importing ``module`` registers ``names``."""
        for name in names:
            if name in self._declared or name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already declared or registered")
            self._declared[name] = module

    def declarations(self) -> dict[str, list[str]]:
        """module -> the names it is declared to register."""
        out: dict[str, list[str]] = {}
        for name, module in self._declared.items():
            out.setdefault(module, []).append(name)
        return out

    def declare_family(self, module: str, prefix: str, text: str) -> None:
        """Importing ``module`` registers the family ``<prefix>:<name>``, described in listings by ``text``."""
        if not prefix or ":" in prefix:
            raise ValueError(f"{self.kind} family prefix must be a non-empty name without ':', got {prefix!r}")
        if prefix in self._declared_families or prefix in self._families:
            raise ValueError(f"{self.kind} family {prefix!r} is already declared or registered")
        self._declared_families[prefix] = (module, text)

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            owner = self._declared.get(name, getattr(obj, "__module__", None))
            if name in self._entries or owner != getattr(obj, "__module__", None):
                by = self._entries[name] if name in self._entries else owner
                raise ValueError(f"{self.kind} {name!r} is already registered (by {by!r})")
            self._entries[name] = obj
            return obj

        return decorator

    def register_family(self, prefix: str, resolve: Callable[[str], T], text: str) -> None:
        """Names ``<prefix>:<rest>`` resolve through ``resolve(rest)``; ``text`` describes them in listings."""
        if not prefix or ":" in prefix:
            raise ValueError(f"{self.kind} family prefix must be a non-empty name without ':', got {prefix!r}")
        if prefix in self._families:
            raise ValueError(f"{self.kind} family {prefix!r} is already registered")
        declared = self._declared_families.get(prefix)
        if declared is not None and declared != (getattr(resolve, "__module__", None), text):
            raise ValueError(f"{self.kind} family {prefix!r} is declared as {declared}, registered by "
                             f"{getattr(resolve, '__module__', None)!r} as {text!r}")
        self._families[prefix] = (resolve, text)

    def families(self) -> list[str]:
        """How each prefix family's names are written, e.g. ``timm:<name> (any of timm.list_models())``."""
        texts = {prefix: text for prefix, (_, text) in self._declared_families.items()}
        texts.update({prefix: text for prefix, (_, text) in self._families.items()})
        return list(texts.values())

    def get(self, name: str) -> T:
        if not isinstance(name, str):
            raise BadArgumentError(f"{self.kind} name must be a string, got {type(name).__name__}")
        if name not in self._entries and name in self._declared:
            importlib.import_module(self._declared[name])  # registers it
            if name not in self._entries:  # a bug: the declaration and the file disagree
                raise RuntimeError(f"{self._declared[name]} is declared to register {self.kind} {name!r} but did not")
        if name in self._entries:
            return self._entries[name]
        prefix, colon, rest = name.partition(":")
        if colon and prefix not in self._families and prefix in self._declared_families:
            module = self._declared_families[prefix][0]
            importlib.import_module(module)  # registers the family
            if prefix not in self._families:
                raise RuntimeError(f"{module} is declared to register the {self.kind} family {prefix!r} but did not")
        if colon and prefix in self._families:
            return self._families[prefix][0](rest)
        names = self.names()
        families = f"; or {', '.join(self.families())}" if self.families() else ""
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}.{did_you_mean(name, names)} Valid {self.kind} names: {', '.join(names)}"
            f"{families}"
        )

    def names(self) -> list[str]:
        return sorted({*self._entries, *self._declared})

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._declared

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

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
DETECTION_DATASETS: Registry[Callable[..., Any]] = Registry("detection data set")
