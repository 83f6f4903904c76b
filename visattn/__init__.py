"""visattn: plug-in attention blocks for vision backbones."""

from visattn.attention import build_attention, list_attention
from visattn.backbones import list_backbones
from visattn.build import build_model, fill_slots, list_slots, load_pretrained

__version__ = "0.1.0"


def count(model, *, input_size=(1, 3, 224, 224), device=None):  # noqa: ANN001, ANN201
    """Params, MACs and FLOPs of ``model`` at ``input_size``; see :func:`visattn.complexity.count`."""
    from visattn.complexity import count as _count

    return _count(model, input_size=input_size, device=device)


def load(path, *, checkpoint="best"):  # noqa: ANN001, ANN201
    """A :class:`visattn.api.Predictor` of an export folder or a run directory: ``load(path)(images)`` gives labels
    and scores or boxes, ``load(path)(tensor)`` and ``.module`` the raw module; see :func:`visattn.api.load`."""
    from visattn.api import load as _load

    return _load(path, checkpoint=checkpoint)


def __getattr__(name):  # noqa: ANN001, ANN202
    """``visattn.train`` (the module, callable as the Python API: ``visattn.train(backbone="resnet18", ...)``),
    ``visattn.TrainConfig``, ``Run`` and ``Predictor``, imported on first use."""
    import importlib

    if name == "train":
        return importlib.import_module("visattn.train")
    if name == "TrainConfig":
        return importlib.import_module("visattn.config").TrainConfig
    if name in ("Run", "Predictor"):
        return getattr(importlib.import_module("visattn.api"), name)
    raise AttributeError(f"module 'visattn' has no attribute {name!r}")


__all__ = [
    "Predictor",
    "Run",
    "TrainConfig",
    "train",
    "build_attention",
    "build_model",
    "count",
    "fill_slots",
    "list_attention",
    "list_backbones",
    "list_slots",
    "load",
    "load_pretrained",
]
