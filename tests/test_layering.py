"""Import direction: every module imports only from its own floor or below, and no modules import each other in a
circle. Imports inside functions count too. The floors, bottom to top (ARCHITECTURE in the README):

    errors, extras, lazy, paths, registry, safe_yaml -> layers, ops
    -> attention | backbones | necks | heads | losses | data
    -> models, complexity, perf -> config -> rundir -> tasks | viz | results -> training
    -> evaluate | export | predict | visualize | sweep -> cli | api -> __main__, commands
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import visattn

PACKAGE = Path(visattn.__file__).parent
FLOORS: list[tuple[str, ...]] = [
    ("errors", "extras", "lazy", "paths", "registry", "safe_yaml"),
    ("layers", "ops"),
    ("attention", "backbones", "necks", "heads", "losses", "data"),
    ("models", "complexity", "perf"),
    ("config",),
    ("rundir",),
    ("tasks", "viz", "results"),
    ("training",),
    ("evaluate", "export", "predict", "visualize", "sweep"),
    ("cli", "api"),
    ("__main__", "commands"),
]
FLOOR = {part: level for level, parts in enumerate(FLOORS) for part in parts}
MODEL_PARTS = ("attention", "backbones", "necks", "heads", "layers")  # never import the figure code
FORBIDDEN = "visattn.viz"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, *, module: str, is_package: bool = False) -> set[str]:
    """Every module an ``import``/``from ... import`` in ``source`` names, anywhere (also inside functions).

    ``module`` is the dotted name of the file, to resolve relative imports (``is_package``: the file is an
    ``__init__.py``); ``from a import b`` yields both ``a`` and ``a.b`` since ``b`` may be a submodule.
    """
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.rsplit(".", node.level - is_package)[0]  # a package's "." is itself
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def sources() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def existing(name: str, modules: dict[str, Path]) -> str | None:
    """The visattn module ``name`` refers to (``a.b.c`` may be attribute ``c`` of module ``a.b``), or None."""
    while name.startswith("visattn"):
        if name in modules:
            return name
        name = name.rsplit(".", 1)[0] if "." in name else ""
    return None


def graph() -> dict[str, set[str]]:
    """module -> the visattn modules it imports (the package ``visattn`` itself excluded: its face is lazy)."""
    modules = sources()
    edges: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for name in imported_modules(path.read_text(encoding="utf-8"), module=module,
                                     is_package=path.name == "__init__.py"):
            target = existing(name, modules)
            if target not in (None, "visattn", module) and not module.startswith(target + "."):
                targets.add(target)
        edges[module] = targets
    return edges


def floor_of(module: str) -> int:
    part = module.split(".")[1]
    if part not in FLOOR:
        raise AssertionError(f"{module} is on no floor: add visattn/{part} to FLOORS in {__file__}")
    return FLOOR[part]


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_every_module_is_on_a_floor():
    for module in sources():
        if module != "visattn":
            floor_of(module)


def test_no_module_imports_from_a_higher_floor():
    upward = sorted(f"{module} (floor {floor_of(module)}) imports {target} (floor {floor_of(target)})"
                    for module, targets in graph().items() if module != "visattn"
                    for target in targets if floor_of(target) > floor_of(module))
    assert not upward, "imports that run back up:\n" + "\n".join(upward)


def test_no_import_circle():
    found = circles(graph())
    assert not found, "modules that import each other in a circle:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_package_face_is_lazy():
    """``import visattn`` imports nothing but the lazy face (no torch): see test_cli for ``visattn --help``."""
    assert graph()["visattn"] == {"visattn.lazy"}


@pytest.mark.parametrize(("edges", "expected"), [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": set()}, []),
])
def test_the_circle_finder(edges, expected):
    assert circles(edges) == expected


@pytest.mark.parametrize(("source", "module", "is_package", "expected"), [
    ("from . import base", "visattn.data", True, "visattn.data.base"),
    ("from .base import x", "visattn.data.folders", False, "visattn.data.base"),
    ("from ...errors import x", "visattn.data.detect", True, "visattn.errors"),
    ("def f():\n    import visattn.training\n", "visattn.rundir", False, "visattn.training"),
])
def test_the_scan_resolves_relative_and_local_imports(source, module, is_package, expected):
    assert expected in imported_modules(source, module=module, is_package=is_package)


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


@pytest.mark.parametrize("package", MODEL_PARTS)
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


def test_modules_import_the_module_that_defines_a_name_not_the_face():
    """``from visattn import build_model`` inside the package would hide which floor it comes from."""
    offenders = []
    for module, path in sources().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import) and any(alias.name == "visattn" for alias in node.names):
                offenders.append(f"{module}: import visattn")
            elif (isinstance(node, ast.ImportFrom) and node.module == "visattn" and not node.level
                  and any(alias.name != "__version__" for alias in node.names)):
                offenders.append(f"{module}: from visattn import {', '.join(a.name for a in node.names)}")
    assert not offenders, "\n".join(offenders)
