"""Optional dependencies: every import of one goes through :func:`require`, so a missing package stops the command
with one paragraph naming the ``pip install 'visattn[extra]'`` that provides it, never a raw ``ModuleNotFoundError``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from visattn.errors import VisattnError

# top-level module -> (what pip installs, the visattn extra that brings it; None: a core dependency)
EXTRAS: dict[str, tuple[str, str | None]] = {
    "onnx": ("onnx", "export"),
    "onnxruntime": ("onnxruntime", "export"),
    "onnxscript": ("onnxscript", "export"),
    "matplotlib": ("matplotlib", "viz"),
    "scipy": ("scipy", "sweep"),
    "ray": ("ray[default]", "sweep"),
    "pycocotools": ("pycocotools", "detect"),
    "tensorboard": ("tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow"),
    "wandb": ("wandb", "wandb"),
    "safetensors": ("safetensors", None),
}


class MissingExtraError(VisattnError, ImportError):
    """An optional package a command needs is not installed; the message names the extra to install."""


def missing_text(module: str, purpose: str, err: BaseException | None = None) -> str:
    """One paragraph: what needs ``module``, that it is missing, and the pip command that installs it."""
    top = module.split(".", 1)[0]
    package, extra = EXTRAS.get(top, (top, None))
    why = f" ({' '.join(str(err).split())})" if err is not None else ""
    if extra is None:
        install = f"pip install '{package}' (a dependency of visattn itself: reinstalling visattn brings it back)"
    else:
        install = f"pip install 'visattn[{extra}]' (or pip install '{package}')"
    return f"{purpose} needs the Python package {top!r}, which is not installed{why}. Install it with: {install}"


def require(module: str, *, purpose: str) -> ModuleType:
    """``importlib.import_module(module)``, or :class:`MissingExtraError` naming the extra when it cannot be
    imported. ``purpose`` says what needs it, e.g. ``"visattn export --format onnx"``."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(missing_text(module, purpose, err)) from err


def available(module: str) -> bool:
    """Whether ``module`` imports (for optional extras that only add something, e.g. a faster backend)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
