"""Registries: what each package declares (listed without importing its files) is exactly what its files register."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

import visattn.attention  # noqa: F401  (the packages declare their names on import)
import visattn.backbones  # noqa: F401
import visattn.data
import visattn.data.detect
import visattn.necks  # noqa: F401
from visattn.errors import UnknownNameError
from visattn.registry import ATTENTION, BACKBONES, DATASETS, DETECTION_DATASETS, NECKS, Registry

REGISTRIES = {"attention": ATTENTION, "backbones": BACKBONES, "necks": NECKS, "data": DATASETS,
              "data.detect": DETECTION_DATASETS}


@pytest.mark.parametrize("package", REGISTRIES)
def test_declared_names_are_what_the_files_register(package):
    registry = REGISTRIES[package]
    declared = registry.declarations()
    assert declared, f"visattn.{package} declares nothing"
    for module, names in declared.items():
        importlib.import_module(module)
        for name in names:
            assert registry.get(name).__module__ == module, f"{name!r} is declared for {module}"
    # every file of the package that registers something is declared, with all its names
    files = [f"visattn.{package}.{m.name}" for m in pkgutil.iter_modules(importlib.import_module(
        f"visattn.{package}").__path__) if not m.ispkg]
    for module in files:
        importlib.import_module(module)
    registered: dict[str, set[str]] = {}
    for name in registry.names():
        registered.setdefault(registry.get(name).__module__, set()).add(name)
    for module, names in registered.items():
        if module.startswith("visattn."):
            assert set(declared.get(module, ())) == names, f"{module} registers {sorted(names)}"


def test_a_declared_name_is_listed_before_its_file_is_imported():
    registry = Registry("thing")
    registry.declare("visattn.attention.se", "se")  # registers into ATTENTION, not here: never imported below
    assert registry.names() == ["se"] and "se" in registry and len(registry) == 1
    with pytest.raises(RuntimeError, match="declared to register thing 'se' but did not"):
        registry.get("se")


def test_a_declared_name_cannot_be_taken_by_another_module():
    registry = Registry("thing")
    registry.declare("some.module", "a")
    with pytest.raises(ValueError, match="already registered"):
        registry.register("a")(int)
    with pytest.raises(ValueError, match="already declared"):
        registry.declare("other.module", "a")


def test_unknown_name_is_a_key_error_with_a_plain_message():
    with pytest.raises(UnknownNameError) as info:
        BACKBONES.get("resnet5")
    assert isinstance(info.value, KeyError)
    assert str(info.value).startswith("unknown backbone 'resnet5'.")  # not quoted as KeyError's repr would be


def test_listing_the_choices_imports_no_torch():
    code = ("import sys, visattn, visattn.data, visattn.data.detect\n"
            "names = [visattn.list_attention(), visattn.list_backbones(), visattn.data.list_datasets(),\n"
            "         visattn.data.detect.list_detection_datasets()]\n"
            "assert all(names), names\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
