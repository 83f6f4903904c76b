"""Import direction: the model layers (blocks, backbones, necks, heads, layers) never import the figure code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import visattn

PACKAGE = Path(visattn.__file__).parent
LOWER = ("attention", "backbones", "necks", "heads", "layers")
FORBIDDEN = "visattn.viz"


def imported_modules(source: str, *, module: str) -> set[str]:
    """Every module an ``import``/``from ... import`` in ``source`` names, anywhere (also inside functions).

    ``module`` is the dotted name of the file, to resolve relative imports; ``from a import b`` yields
    both ``a`` and ``a.b`` since ``b`` may be a submodule.
    """
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.rsplit(".", node.level)[0]
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def imports_viz(source: str, *, module: str) -> bool:
    return any(name == FORBIDDEN or name.startswith(FORBIDDEN + ".")
               for name in imported_modules(source, module=module))


@pytest.mark.parametrize("source", [
    "from visattn.viz.capture import record",
    "import visattn.viz",
    "def f():\n    from visattn.viz import capture\n",
    "from ..viz import capture",
    "from visattn import viz",
])
def test_the_scan_finds_every_spelling_of_a_viz_import(source):
    assert imports_viz(source, module="visattn.attention.se")


def test_the_scan_leaves_other_imports_alone():
    assert not imports_viz("from visattn.layers.record import record\nimport visattn.vizard\n",
                           module="visattn.attention.se")


@pytest.mark.parametrize("package", LOWER)
def test_lower_layers_do_not_import_viz(package):
    files = sorted((PACKAGE / package).rglob("*.py"))
    assert files, f"no sources under visattn/{package}"
    offenders = []
    for path in files:
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if imports_viz(path.read_text(encoding="utf-8"), module=module):
            offenders.append(str(path.relative_to(PACKAGE.parent)))
    assert not offenders, f"these import {FORBIDDEN} (record through visattn.layers.record instead): {offenders}"


def test_viz_reexports_the_layers_primitive():
    """``from visattn.viz import record`` is the very function the blocks call, not a copy."""
    import visattn.layers.record as primitive
    import visattn.viz

    assert visattn.viz.record is primitive.record
    assert visattn.viz.attention_probs is primitive.attention_probs
