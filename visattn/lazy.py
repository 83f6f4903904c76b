"""Lazy package faces (PEP 562): a package names its public attributes and the module each lives in, and the
module is imported on first access. So ``import visattn`` (or ``visattn --help``) imports no torch."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_face(package: str, table: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: attribute ``name`` is ``table[name]``'s attribute of that name.

    Usage in a package's ``__init__.py``: ``__getattr__, __dir__ = lazy_face(__name__, {"build_model":
    "visattn.models.build"})``. An unknown name raises ``AttributeError``, so ``from package import submodule`` still
    imports the submodule.
    """

    def __getattr__(name: str) -> Any:
        if name in table:
            return getattr(importlib.import_module(table[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*table, *importlib.import_module(package).__dict__})

    return __getattr__, __dir__
