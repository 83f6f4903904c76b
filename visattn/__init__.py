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
    """Rebuild a model from an export folder or a run directory; see :func:`visattn.export.load`."""
    from visattn.export import load as _load

    return _load(path, checkpoint=checkpoint)


__all__ = [
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
